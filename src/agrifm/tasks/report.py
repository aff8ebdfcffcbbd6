"""Write an evaluation report (JSON + Markdown + figures) from a metrics summary.

The input is the dict of :func:`agrifm.tasks.metrics.summarize` /
:func:`~agrifm.tasks.metrics.metrics_from_confusion`; nothing is recomputed here except the
row-normalised confusion matrix for display. Figures are drawn on Agg canvases without pyplot,
so no global backend state is touched (safe headless and inside a GUI session). Every file is
written to a temporary file in the destination folder and renamed, so a crashed run never
leaves a half-written report.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agrifm.io import atomic_output, write_text_atomic

__all__ = ["write_report"]

_HEADLINE = (
    ("oa", "Overall accuracy (OA)"),
    ("mf1", "Mean F1 (mF1)"),
    ("miou", "Mean IoU (mIoU)"),
    ("kappa", "Cohen's kappa"),
)
_REQUIRED = (
    "oa", "mf1", "miou", "kappa", "confusion_matrix", "per_class_f1", "per_class_precision", "per_class_recall"
)
_ANNOTATE_MAX_K = 15  # above this, count labels no longer fit in the cells


def _jsonable(obj: Any) -> Any:
    """Plain JSON types; NaN/inf become ``null`` (strict JSON has no NaN)."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} value {obj!r} to metrics.json")


def _fmt(v: Any, digits: int = 4) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def _validate(metrics: Mapping[str, Any], class_names: Sequence[str]) -> np.ndarray:
    missing = [k for k in _REQUIRED if k not in metrics]
    if missing:
        raise KeyError(f"metrics dict lacks {missing}; build it with agrifm.tasks.metrics.summarize()")
    cm = np.asarray(metrics["confusion_matrix"], dtype=np.float64)
    if cm.shape != (len(class_names), len(class_names)):
        raise ValueError(f"confusion matrix has shape {cm.shape} but {len(class_names)} class names were given")
    unknown = set(class_names) - set(metrics["per_class_f1"])
    if unknown:
        raise KeyError(f"class names {sorted(unknown)} are not in metrics['per_class_f1']")
    return cm


def _markdown(metrics: Mapping[str, Any], title: str, class_names: Sequence[str], extra: Mapping[str, Any]) -> str:
    support = metrics.get("support", {})
    lines = [f"# {title}", ""]
    if extra:
        lines += [f"- **{k}**: {v}" for k, v in extra.items()] + [""]
    lines += [f"Samples (pixels) evaluated: {metrics.get('n', 'n/a')}", "", "| metric | value |", "|---|---:|"]
    lines += [f"| {label} | {_fmt(metrics[key])} |" for key, label in _HEADLINE]
    lines += ["", "## Per class", "", "| class | support | precision | recall | F1 |", "|---|---:|---:|---:|---:|"]
    for c in class_names:
        p, r, f = (metrics[f"per_class_{m}"].get(c) for m in ("precision", "recall", "f1"))
        lines.append(f"| {c} | {support.get(c, '')} | {_fmt(p)} | {_fmt(r)} | {_fmt(f)} |")
    lines += [
        "",
        "n/a: class absent from both reference and predictions; excluded from mF1/mIoU.",
        "",
        "![Confusion matrix](confusion_matrix.png)",
        "",
        "![Per-class F1](per_class_f1.png)",
        "",
    ]
    return "\n".join(lines)


def _new_figure(width: float, height: float) -> Any:
    """A pyplot-free figure on an Agg canvas (no global state, nothing to close)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _plot_confusion(cm: np.ndarray, class_names: Sequence[str], title: str) -> Any:
    import matplotlib

    k = len(class_names)
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.full_like(cm, np.nan), where=rows > 0)  # empty rows stay blank
    size = max(5.0, 0.65 * k + 2.5)
    fig = _new_figure(size + 1.2, size)
    ax = fig.add_subplot()
    cmap = matplotlib.colormaps["Blues"].with_extremes(bad="0.92")
    im = ax.imshow(np.ma.masked_invalid(norm), cmap=cmap, vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03, label="fraction of reference class (row)")
    ticks = np.arange(k)
    ax.set_xticks(ticks, class_names, rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(ticks, [f"{c} ({int(n)})" for c, n in zip(class_names, rows[:, 0], strict=True)])
    ax.set_xlabel("Predicted class")
    ax.set_ylabel("Reference class (support)")
    ax.set_title(f"{title}\nconfusion matrix, row-normalised; numbers are counts")
    ax.set_xticks(ticks - 0.5, minor=True)
    ax.set_yticks(ticks - 0.5, minor=True)
    ax.grid(which="minor", color="white", linewidth=1.0)
    ax.tick_params(which="minor", length=0)
    if k <= _ANNOTATE_MAX_K:
        fontsize = 10 if k <= 10 else 8
        for i in range(k):
            for j in range(k):
                if cm[i, j] == 0:
                    continue
                dark = not np.isnan(norm[i, j]) and norm[i, j] > 0.55
                colour = "white" if dark else "black"
                ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center", fontsize=fontsize, color=colour)
    return fig


def _plot_f1(metrics: Mapping[str, Any], class_names: Sequence[str], title: str) -> Any:
    f1 = np.array([np.nan if (v := metrics["per_class_f1"][c]) is None else v for c in class_names], dtype=np.float64)
    k = len(class_names)
    fig = _new_figure(7.5, max(2.5, 0.42 * k + 1.4))
    ax = fig.add_subplot()
    y = np.arange(k)
    ax.barh(y, np.nan_to_num(f1), color="tab:blue", height=0.7)
    for yi, v in zip(y, f1, strict=True):
        ax.text((0 if np.isnan(v) else v) + 0.01, yi, "n/a" if np.isnan(v) else f"{v:.2f}", va="center", fontsize=9)
    mf1 = metrics.get("mf1")
    if mf1 is not None and not math.isnan(mf1):
        ax.axvline(mf1, color="tab:red", linestyle="--", linewidth=1.2, label=f"mF1 = {mf1:.3f}")
        ax.legend(loc="lower right", fontsize=9, framealpha=0.9)
    ax.set_yticks(y, class_names)
    ax.invert_yaxis()  # first class on top, same order as the confusion matrix
    ax.set_xlim(0, 1.08)
    ax.set_xlabel("F1 score")
    ax.set_title(f"{title}\nper-class F1")
    ax.grid(axis="x", alpha=0.3)
    ax.set_axisbelow(True)
    return fig


def write_report(
    metrics: Mapping[str, Any],
    out_dir: str | os.PathLike[str],
    *,
    title: str,
    class_names: Sequence[str],
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Path]:
    """Write ``metrics.json``, ``report.md``, ``confusion_matrix.png`` and ``per_class_f1.png``.

    ``metrics`` is a :func:`agrifm.tasks.metrics.summarize` dict; ``class_names`` fixes the
    display order (and must match the confusion matrix); ``extra`` (run settings, data split,
    checkpoint, ...) is stored under ``"extra"`` in the JSON and listed at the top of the
    Markdown. NaN values are written as JSON ``null`` / "n/a". Returns the written paths.
    """
    class_names = [str(c) for c in class_names]
    cm = _validate(metrics, class_names)
    extra = dict(extra or {})
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / name for name in ("metrics.json", "report.md", "confusion_matrix.png", "per_class_f1.png")}

    payload = _jsonable({"title": title, **metrics, "extra": extra})
    text = json.dumps(payload, indent=2, allow_nan=False, ensure_ascii=False) + "\n"
    write_text_atomic(paths["metrics.json"], text)
    md = _markdown(metrics, title, class_names, extra)
    write_text_atomic(paths["report.md"], md)

    for name, fig in (
        ("confusion_matrix.png", _plot_confusion(cm, class_names, title)),
        ("per_class_f1.png", _plot_f1(metrics, class_names, title)),
    ):
        with atomic_output(paths[name]) as tmp:
            fig.savefig(tmp, format="png", dpi=150)
    return paths
