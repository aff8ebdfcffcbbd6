"""Figures beside a run's ``metrics.json``: training curves and the confusion matrix.

:class:`History` is a Lightning callback that records the epoch-level losses and validation
metrics (and can write them to a CSV, which also works inside a spawned training process);
:func:`plot_training_curves` draws them (loss on the left, validation metrics on the right);
:func:`save_confusion_matrix` draws a confusion matrix the way ``agrifm test`` reports do.
Figures use Agg canvases without pyplot and are written atomically.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agrifm.io import atomic_output

__all__ = ["History", "curves_from_csv", "plot_training_curves", "read_history", "save_confusion_matrix", "save_figure",
           "training_curves_from_run"]

_METRICS = ("oa", "mf1", "boundary_f1")  # drawn on the validation panel (miou, kappa stay in the CSV)


def save_figure(fig: Any, path: str | os.PathLike[str], dpi: int = 150) -> Path:
    """Write a matplotlib figure as PNG atomically."""
    with atomic_output(path, suffix=".tmp.png") as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, facecolor="white")
    return Path(path)


def save_confusion_matrix(cm: np.ndarray, class_names: Sequence[str], path: str | os.PathLike[str],
                          title: str) -> Path:
    """Row-normalised confusion matrix with counts (reference rows, predicted columns) as PNG."""
    from agrifm.tasks.report import _plot_confusion

    return save_figure(_plot_confusion(np.asarray(cm, dtype=np.float64), [str(c) for c in class_names], title), path)


def _history_callback() -> type:
    from lightning.pytorch.callbacks import Callback

    class _History(Callback):
        """Epoch-level losses and metrics per epoch (``val_*`` on validated epochs); written to
        ``path`` (CSV) at fit end."""

        def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
            self.path = None if path is None else Path(path)
            self.rows: list[dict[str, float]] = []
            self._validated = False

        def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
            self._validated = not trainer.sanity_checking

        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            from agrifm.progress import epoch_metrics

            validated, self._validated = self._validated, False
            if getattr(trainer, "global_rank", 0) == 0:
                self.rows.append({"epoch": trainer.current_epoch + 1, "step": trainer.global_step,
                                  **epoch_metrics(trainer, validated)})

        def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
            if self.path is not None and self.rows and getattr(trainer, "global_rank", 0) == 0:
                write_history(self.rows, self.path)

    return _History


def History(path: str | os.PathLike[str] | None = None) -> Any:  # noqa: N802 (a class to its users)
    """A Lightning callback recording per-epoch losses and validation metrics (``.rows``)."""
    return _history_callback()(path)


def write_history(rows: Sequence[Mapping[str, float]], path: str | os.PathLike[str]) -> Path:
    """Rows of per-epoch values as CSV (the union of the columns; blanks where absent)."""
    cols = list(dict.fromkeys(k for r in rows for k in r))
    with atomic_output(path, suffix=".tmp.csv") as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=cols)
            w.writeheader()
            w.writerows(rows)
    return Path(path)


def read_history(path: str | os.PathLike[str]) -> list[dict[str, float]]:
    """The rows :func:`write_history` wrote (empty cells dropped; ``epoch``/``step`` as int)."""
    with open(path, newline="", encoding="utf-8") as fh:
        return [{k: int(float(v)) if k in ("epoch", "step") else float(v) for k, v in r.items() if v not in ("", None)}
                for r in csv.DictReader(fh)]


def plot_training_curves(rows: Sequence[Mapping[str, float]], path: str | os.PathLike[str], *,
                         title: str, x: str = "epoch") -> Path:
    """Loss curves (left) and validation metrics (right) per ``x`` (``epoch`` or ``step``) as PNG."""
    from agrifm.tasks.report import _new_figure

    if not rows:
        raise ValueError(f"{path}: no training history to plot")
    keys = list(dict.fromkeys(k for r in rows for k in r if k not in ("epoch", "step")))
    losses = [k for k in keys if "loss" in k]
    metrics = [k for k in keys if k not in losses and k.startswith("val_") and k[4:].split()[0] in _METRICS]
    fig = _new_figure(10.0 if metrics else 5.5, 3.8)
    axes = fig.subplots(1, 2 if metrics else 1, squeeze=False)[0]

    def series(key: str) -> tuple[list[float], list[float]]:
        pts = [(r[x], r[key]) for r in rows if key in r and x in r and math.isfinite(r[key])]
        return [p[0] for p in pts], [p[1] for p in pts]

    for key in losses:
        xs, ys = series(key)
        axes[0].plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, label=key)
    axes[0].set_title("loss")
    for key in metrics:
        xs, ys = series(key)
        axes[1].plot(xs, ys, marker="o", markersize=3, label=f"{key} (last {ys[-1]:.3f})" if ys else key)
    if metrics:
        axes[1].set_title("validation (evaluated weights)")
        axes[1].set_ylim(0.0, 1.0)
    from matplotlib.ticker import MaxNLocator

    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel(x)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


def curves_from_csv(csv_path: str | os.PathLike[str], png: str | os.PathLike[str], *, title: str,
                    x: str = "epoch") -> Path:
    """Curves from a metrics CSV: Lightning's ``CSVLogger`` or ``agrifm pretrain``'s ``metrics.csv``.

    ``x="epoch"``: rows merged per epoch (``*_epoch`` values; Lightning's 0-based epochs shown
    from 1); ``x="step"``: rows merged per step (``*_step`` values and the validations).
    """
    rows = read_history(csv_path)
    drop, strip = ("_step", "_epoch") if x == "epoch" else ("_epoch", "_step")
    merged: dict[int, dict[str, float]] = {}
    for r in rows:
        if x not in r:
            continue
        at = r[x] + 1 if x == "epoch" else r[x]
        row = merged.setdefault(at, {x: at})
        row.update({k.removesuffix(strip): v for k, v in r.items() if k not in ("epoch", "step") and not k.endswith(drop)})
    return plot_training_curves([merged[k] for k in sorted(merged)], png, title=title, x=x)


def training_curves_from_run(run_dir: str | os.PathLike[str], png: str | os.PathLike[str], *,
                             title: str) -> Path | None:
    """Training curves from the newest ``logs/version_*/metrics.csv`` of an ``agrifm fit`` run
    that holds training losses (per epoch, or per step for runs of fewer than 3 epochs);
    ``None`` when there is none (e.g. a run never fitted)."""
    logs = sorted(Path(run_dir).glob("logs/version_*/metrics.csv"), key=lambda p: p.stat().st_mtime, reverse=True)
    for log in logs:
        rows = read_history(log)
        if any(k.startswith("train_loss") for r in rows for k in r):
            epochs = {r["epoch"] for r in rows if "epoch" in r}
            return curves_from_csv(log, png, title=title, x="epoch" if len(epochs) >= 3 else "step")
    return None
