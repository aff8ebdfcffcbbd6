"""Assessment outputs: ``assessment.json`` (the issue's keys, ``null`` where undefined),
``assessment.md`` (readable tables) and ``assessment.png`` (mapped vs estimated area, 95 % CI)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agrifm.assess.estimators import Z95, Estimates
from agrifm.io import atomic_output, write_text_atomic
from agrifm.tasks.report import _jsonable, _new_figure

__all__ = ["assessment_dict", "write_assessment"]

REFERENCE = ("Olofsson, P., Foody, G.M., Herold, M., Stehman, S.V., Woodcock, C.E., Wulder, M.A. (2014). "
             "Good practices for estimating area and assessing accuracy of land change. "
             "Remote Sensing of Environment 148:42-57, doi:10.1016/j.rse.2014.02.015")


def _num(v: float) -> float | None:
    return float(v) if math.isfinite(v) else None


def _est(estimate: float, se: float) -> dict[str, float | None]:
    return {"estimate": _num(estimate), "ci95": _num(Z95 * se) if math.isfinite(estimate) else None}


def assessment_dict(est: Estimates, pixels: Sequence[int], pixel_area_ha: float,
                    extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``assessment.json`` payload: overall/user's/producer's accuracy, areas in ha, matrices.

    ``pixels``: mapped pixel count per class (0 for reference-only classes). ``extra`` keys
    (warnings, skipped points, inputs) are added after the required ones.
    """
    total_ha = float(np.sum(pixels)) * pixel_area_ha
    c = est.classes
    out: dict[str, Any] = {
        "overall_accuracy": _est(est.overall, est.overall_se),
        "users_accuracy": {k: _est(est.users[i], est.users_se[i]) for i, k in enumerate(c)},
        "producers_accuracy": {k: _est(est.producers[i], est.producers_se[i]) for i, k in enumerate(c)},
        "area": {k: {"mapped_ha": float(pixels[i]) * pixel_area_ha, "estimate_ha": float(est.area_prop[i]) * total_ha,
                     "ci95_ha": _num(Z95 * est.area_prop_se[i] * total_ha)} for i, k in enumerate(c)},
        "error_matrix_counts": est.counts.astype(np.int64).tolist(),
        "error_matrix_proportions": est.proportions.tolist(),
        "classes": list(c),
        "n": int(est.counts.sum()),
        "pixel_area_ha": float(pixel_area_ha),
    }
    out.update(extra or {})
    return _jsonable(out)


def _f(v: float | None, fmt: str) -> str:
    return "n/a" if v is None else format(v, fmt)


def _pm(d: Mapping[str, Any], fmt: str = ".3f") -> str:
    return "n/a" if d["estimate"] is None else f"{d['estimate']:{fmt}} ± {_f(d['ci95'], fmt)}"


def _markdown(a: Mapping[str, Any], title: str) -> str:
    c = a["classes"]
    lines = [f"# {title}", "",
             f"Stratified estimators of Olofsson et al. (2014) from **{a['n']} reference points**; strata = map classes, "
             f"pixel {a['pixel_area_ha']:.4g} ha. `±` is the half-width of the 95 % confidence interval (1.96 SE); "
             "n/a: undefined (see warnings).", "",
             f"**Overall accuracy: {_pm(a['overall_accuracy'])}**", "",
             "| class | mapped (ha) | estimated (ha) | ± 95 % (ha) | user's accuracy | producer's accuracy | points |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    counts = np.asarray(a["error_matrix_counts"])
    for i, k in enumerate(c):
        ar = a["area"][k]
        lines.append(f"| {k} | {ar['mapped_ha']:,.1f} | {ar['estimate_ha']:,.1f} | {_f(ar['ci95_ha'], ',.1f')} | "
                     f"{_pm(a['users_accuracy'][k])} | {_pm(a['producers_accuracy'][k])} | {int(counts[i].sum())} |")
    header = "| map \\ reference | " + " | ".join(c) + " | total |"
    rule = "|---|" + "---:|" * (len(c) + 1)
    lines += ["", "## Error matrix, sample counts (rows: map, columns: reference)", "", header, rule]
    lines += [f"| {k} | " + " | ".join(str(int(v)) for v in counts[i]) + f" | {int(counts[i].sum())} |"
              for i, k in enumerate(c)]
    props = np.asarray(a["error_matrix_proportions"])
    lines += ["", "## Error matrix, estimated proportions of area", "", header, rule]
    lines += [f"| {k} | " + " | ".join(f"{v:.4f}" for v in props[i]) + f" | {props[i].sum():.4f} |"
              for i, k in enumerate(c)]
    lines.append("| total (area proportion) | " + " | ".join(f"{v:.4f}" for v in props.sum(0)) + f" | {props.sum():.4f} |")
    if a.get("warnings"):
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in a["warnings"]]
    lines += ["", "![Mapped vs estimated area](assessment.png)", "", f"Reference: {REFERENCE}.", ""]
    return "\n".join(lines)


def _plot(a: Mapping[str, Any], title: str) -> Any:
    c = a["classes"]
    mapped = np.array([a["area"][k]["mapped_ha"] for k in c])
    est = np.array([a["area"][k]["estimate_ha"] for k in c])
    ci = np.array([np.nan if a["area"][k]["ci95_ha"] is None else a["area"][k]["ci95_ha"] for k in c])
    k = len(c)
    fig = _new_figure(max(6.0, 0.9 * k + 2.5), 4.8)
    ax = fig.add_subplot()
    x = np.arange(k)
    ax.bar(x - 0.2, mapped, 0.4, color="0.65", label="mapped (pixel count)")
    ax.bar(x + 0.2, est, 0.4, color="tab:blue", label="estimated (stratified)")
    ok = np.isfinite(ci)
    ax.errorbar(x[ok] + 0.2, est[ok], yerr=ci[ok], fmt="none", ecolor="black", capsize=4, linewidth=1.2,
                label="95 % confidence interval")
    for xi, e, h in zip(x, est, ci):
        if not np.isfinite(h):
            ax.text(xi + 0.2, e, "CI n/a", ha="center", va="bottom", fontsize=8, color="tab:red")
    ax.set_xticks(x, c, rotation=30 if k > 4 else 0, ha="right" if k > 4 else "center")
    ax.set_ylabel("area (ha)")
    ax.yaxis.set_major_formatter("{x:,.0f}")
    ax.set_ylim(bottom=0)
    ax.set_title(f"{title}\nOA {_pm(a['overall_accuracy'])}, n = {a['n']} points")
    ax.legend(fontsize=8, framealpha=0.9)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    return fig


def write_assessment(a: Mapping[str, Any], out_dir: str | Path, *, title: str = "Map accuracy and area") -> dict[str, Path]:
    """Write ``assessment.json``, ``.md`` and ``.png`` atomically into ``out_dir``; returns the paths."""
    out = Path(out_dir)
    paths = {s: out / f"assessment.{s}" for s in ("json", "md", "png")}
    write_text_atomic(paths["json"], json.dumps(a, indent=2, allow_nan=False, ensure_ascii=False) + "\n")
    write_text_atomic(paths["md"], _markdown(a, title))
    with atomic_output(paths["png"]) as tmp:
        _plot(a, title).savefig(tmp, format="png", dpi=150)
    return paths
