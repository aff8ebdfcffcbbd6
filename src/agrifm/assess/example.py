"""The demo's accuracy-assessment example: design a sample on the demo map, then assess the map
with the 18 labelled Sinop points.

The 18 points show the mechanics only. They were not drawn from this map by stratified random
sampling (the estimators assume they were), and 18 points for up to 9 classes are far too few:
several strata get 0 or 1 point, so most intervals are undefined (null). A real assessment
labels the drawn sample (``sample_design.gpkg``: 50-100 points per class).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agrifm.assess.cli import assess_map
from agrifm.assess.design import allocation_path, design_sample

__all__ = ["demo_example"]


def demo_example(map_path: str | Path, points_path: str | Path, out_dir: str | Path, *, n: int = 200,
                 min_per_class: int = 10, seed: int = 0, overwrite: bool = True, echo: bool = True) -> dict[str, Any]:
    """``sample-design`` on ``map_path`` (``out_dir/sample_design.gpkg``, to be labelled) and ``assess``
    with ``points_path`` (``out_dir/assessment.*``); returns a summary for the demo's metrics."""
    out = Path(out_dir)
    design = out / "sample_design.gpkg"
    if echo:
        print(f"      accuracy assessment example (Olofsson et al. 2014) -> {out}")
    table = design_sample(map_path, n, design, min_per_class=min_per_class, seed=seed, overwrite=overwrite, echo=False)
    result = assess_map(map_path, points_path, out, overwrite=overwrite, echo=False,
                        title="Demo map vs the 18 Sinop points (too few for real use)")
    oa = result["overall_accuracy"]
    summary = {
        "note": "mechanics only: 18 points, not a stratified random sample of this map; label "
                "sample_design.gpkg for a real assessment",
        "sample_design": str(design), "allocation": str(allocation_path(design)),
        "sample_allocation": {str(r["map_class"]): int(r["n"]) for r in table},
        "assessment": str(out / "assessment.json"), "n": result["n"], "overall_accuracy": oa,
        "area_ha": {k: {"mapped": v["mapped_ha"], "estimated": v["estimate_ha"], "ci95": v["ci95_ha"]}
                    for k, v in result["area"].items()},
        "warnings": result["warnings"],
    }
    if echo:
        ci = "n/a" if oa["ci95"] is None else f"{oa['ci95']:.3f}"
        print(f"      designed {sum(r['n'] for r in table)} points to label ({design.name}); with the 18 Sinop "
              f"points: OA {oa['estimate']:.3f} ± {ci} ({len(result['warnings'])} warnings; too few points for real use)")
    return summary
