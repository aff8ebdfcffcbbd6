"""``agrifm assess``: accuracy and area with 95 % confidence intervals from a labelled
stratified sample of a class map (Olofsson et al. 2014)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

from agrifm.assess.estimators import stratified_estimates
from agrifm.assess.maps import open_class_map
from agrifm.assess.reference import read_reference
from agrifm.assess.report import assessment_dict, write_assessment
from agrifm.errors import AgrifmError

__all__ = ["assess_map", "main"]


def assess_map(map_path: str | Path, reference: str | Path, out_dir: str | Path, *, classes: str | Path | None = None,
               label_column: str = "label", overwrite: bool = False, echo: bool = True,
               title: str | None = None) -> dict[str, Any]:
    """Assess ``map_path`` with the labelled sample ``reference``; write ``out_dir/assessment.*``."""
    out = Path(out_dir)
    existing = [p for p in (out / f"assessment.{s}" for s in ("json", "md", "png")) if p.exists()]
    if existing and not overwrite:
        raise AgrifmError(f"{existing[0]} exists; pass --overwrite to replace it")
    cmap = open_class_map(map_path, classes)
    ref = read_reference(reference, cmap, label_column)
    counts = cmap.class_counts()
    keys = [cmap.name(v) for v in counts]
    extra_keys = sorted(set(ref.labels) - set(keys))
    all_keys = keys + extra_keys
    index = {k: i for i, k in enumerate(all_keys)}
    n = np.zeros((len(all_keys), len(all_keys)), np.int64)
    np.add.at(n, ([index[cmap.name(v)] for v in ref.map_values], [index[k] for k in ref.labels]), 1)
    pixels = list(counts.values()) + [0] * len(extra_keys)
    est = stratified_estimates(n, pixels, all_keys)
    warnings = list(ref.notes)
    unknown = [k for k in extra_keys if k not in cmap.names.values() and not k.lstrip("-").isdigit()]
    if extra_keys:
        warnings.append(f"reference classes the map never shows (kept as reference columns, no stratum): {extra_keys}"
                        + (f"; {unknown} match no map class name (typo?)" if unknown else ""))
    warnings += est.warnings
    thin = [k for k, c in zip(keys, n.sum(axis=1)) if c < 50]
    if thin:
        warnings.append(f"map classes {thin} have fewer than 50 reference points: too few for published figures "
                        "(Olofsson et al. 2014 suggest 50-100 per class; with few points the intervals are rough)")
    extra = {"warnings": warnings, "skipped": {"outside": ref.outside, "nodata": ref.nodata, "duplicates": ref.duplicates},
             "n_read": ref.n_read, "total_area_ha": float(sum(pixels)) * cmap.pixel_area_ha,
             "map": str(cmap.path), "reference": str(reference), "estimator": "Olofsson et al. 2014, eqs. 1-11"}
    result = assessment_dict(est, pixels, cmap.pixel_area_ha, extra)
    out.mkdir(parents=True, exist_ok=True)
    paths = write_assessment(result, out, title=title or f"Accuracy and area of {cmap.path.name}")
    if echo:
        for w in warnings:
            print(f"warning: {w}", file=sys.stderr)
        oa = result["overall_accuracy"]
        ci = "n/a" if oa["ci95"] is None else f"{oa['ci95']:.3f}"
        print(f"{result['n']} points ({ref.n_read} read): overall accuracy {oa['estimate']:.3f} ± {ci}")
        for k, a in result["area"].items():
            hw = "n/a" if a["ci95_ha"] is None else f"{a['ci95_ha']:,.0f}"
            print(f"  {k}: mapped {a['mapped_ha']:,.0f} ha, estimated {a['estimate_ha']:,.0f} ± {hw} ha")
        print(f"wrote {paths['json']}, {paths['md'].name}, {paths['png'].name}")
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="agrifm assess", description=__doc__.splitlines()[0])
    ap.add_argument("--map", required=True, help="class map GeoTIFF the sample was drawn from (strata = its classes)")
    ap.add_argument("--reference", required=True, help="labelled points: .csv (x,y in the map CRS or longitude,latitude), .gpkg, .geojson")
    ap.add_argument("--out", required=True, help="output folder for assessment.json/.md/.png")
    ap.add_argument("--classes", default=None, help="class names JSON (list or {value: name}); default: the map's CLASS_NAMES tag")
    ap.add_argument("--label-column", default="label", help="column holding the reference class (default: label)")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing assessment")
    a = ap.parse_args(argv)
    assess_map(a.map, a.reference, a.out, classes=a.classes, label_column=a.label_column, overwrite=a.overwrite)
    return 0
