"""``agrifm demo``: fine-tune on real MODIS crop samples and map a real scene.

1. Reads the Mato Grosso MOD13Q1 sample series (9 crop / land-use classes, 23 dates) on the
   bands the Sinop cube has (NDVI, EVI).
2. Holds out 20 % of the samples grouped by location (no place on both sides).
3. Trains the AgriFM point-classification model (small config, CPU-friendly, progress bars).
   The samples were smoothed by their providers; the cube is raw. We apply the *same*
   Whittaker smoother to both (stored in the checkpoint, so ``agrifm predict`` does it too)
   and add small Gaussian noise in training.
4. Maps the Sinop cube pixel by pixel to a Cloud-Optimized GeoTIFF + quicklook and checks the
   18 labelled Sinop points against the map; designs a stratified sample on the map and runs the
   Olofsson et al. (2014) assessment with the 18 points (``OUT/assessment/``, an example only:
   far too few points for real use).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["main", "run_demo", "find_data", "DATA_HELP"]

SAMPLES = "mato_grosso_modis/samples/mato_grosso_train.csv"
POINTS = "mato_grosso_modis/samples/sinop_points.csv"
CUBE = "mato_grosso_modis/sinop_cube"

DATA_HELP = """\
The demo needs the real MODIS data set 'mato_grosso_modis' (5.7 MB):
  samples/mato_grosso_train.csv  1,327 MOD13Q1 pixel time series, 9 classes (long CSV: sample_id, longitude,
                                 latitude, start_date, end_date, label, date, MIR, BLUE, NIR, RED, EVI, NDVI)
  samples/sinop_points.csv       18 labelled points in the cube (id, longitude, latitude, ..., label, row, col)
  sinop_cube/MOD13Q1_h12v10_<NDVI|EVI>_<YYYY-MM-DD>.tif   23 dates x 2 bands, int16 x 1e-4, 144 x 254 px
They were converted from public repositories (GPL-2):
  samples: github.com/e-sensing/inSitu @ 772e0dda670d, data/br_mt_1_8K_9classes_6bands.rda
  points:  github.com/e-sensing/sits @ 811fa6ce5c46, inst/extdata/samples/samples_sinop_crop.csv
  cube:    github.com/e-sensing/sits @ 811fa6ce5c46, inst/extdata/raster/mod13q1/TERRA_MODIS_h12v10_<NDVI|EVI>_<date>.jp2
Put them under DIR/mato_grosso_modis/ as above and run: agrifm demo --data DIR --out OUTDIR"""

# Colours a map reader expects: crops warm, natural vegetation green, pasture yellow-green.
CLASS_COLORS = {
    "Cerrado": (166, 132, 60), "Fallow_Cotton": (240, 200, 220), "Forest": (20, 100, 40), "Pasture": (190, 220, 90),
    "Soy_Corn": (255, 160, 0), "Soy_Cotton": (230, 80, 160), "Soy_Fallow": (250, 230, 120), "Soy_Millet": (200, 90, 30),
    "Soy_Sunflower": (255, 225, 0),
}


def find_data(explicit: str | None) -> Path | None:
    """``--data``, else ``../shared/data`` from the working directory or beside the checkout."""
    candidates = [Path(explicit)] if explicit else [Path.cwd() / ".." / "shared" / "data", Path(__file__).resolve().parents[3] / "shared" / "data"]
    for c in candidates:
        if (c / SAMPLES).is_file() and (c / CUBE).is_dir():
            return c.resolve()
    return None


def _points_agreement(map_path: Path, points_csv: Path, class_names: list[str]) -> dict[str, Any]:
    import pandas as pd
    import rasterio

    pts = pd.read_csv(points_csv)
    with rasterio.open(map_path) as src:
        arr = src.read(1)
    rows = []
    for _, p in pts.iterrows():
        v = int(arr[int(p["row"]), int(p["col"])])
        pred = class_names[v] if v < len(class_names) else None
        rows.append({"id": int(p["id"]), "label": p["label"], "predicted": pred, "agree": pred == p["label"]})
    n_ok = sum(r["agree"] for r in rows)
    return {"agreement": n_ok / len(rows), "n": len(rows), "n_agree": n_ok, "points": rows}


def run_demo(data: Path, out: Path, *, epochs: int = 40, seed: int = 0, smoothing: float = 2.0,
             holdout: float = 0.2, progress: bool = True, overwrite: bool = True) -> dict[str, Any]:
    from agrifm.data.stack import open_stack
    from agrifm.data.tables import grouped_split, read_table
    from agrifm.predict.engine import predict_scene
    from agrifm.checkpoint import load_predictor
    from agrifm.io import write_text_atomic
    from agrifm.sensors import get_source
    from agrifm.tasks.metrics import metrics_from_confusion
    from agrifm.tasks.pointfit import PointFitConfig, fit_point_classifier, predict_table, smooth_table, source_from_table

    t0 = time.time()
    out.mkdir(parents=True, exist_ok=True)
    cube = open_stack(data / CUBE)
    bands = list(cube.bands)
    from agrifm.predict.quicklook import short_crs_name

    crs = f"EPSG:{cube.crs.to_epsg()}" if cube.crs.to_epsg() else short_crs_name(cube.crs)
    print(f"[1/4] cube {data / CUBE}: {len(cube.dates)} dates x bands {bands}, {cube.height} x {cube.width} px ({crs})")
    table = read_table(data / SAMPLES, bands=bands)
    table = smooth_table(table, smoothing)
    train_idx, test_idx = grouped_split(table, holdout, seed=seed)
    print(f"[2/4] samples {data / SAMPLES}: {len(table)} series, {len(table.class_names)} classes; "
          f"grouped hold-out: {len(train_idx)} train / {len(test_idx)} test")
    source = source_from_table(table, train_idx, "MOD13Q1", base=get_source("MOD13Q1"))
    cfg = PointFitConfig(epochs=epochs, seed=seed, progress=progress)
    colors = [CLASS_COLORS.get(c, (128, 128, 128)) for c in table.class_names]
    what = f"an ensemble of {cfg.members} AgriFM point classifiers" if cfg.members > 1 else "the AgriFM point classifier"
    print(f"[3/4] training {what} ({epochs} epochs, Whittaker smoothing lambda={smoothing})")
    task = fit_point_classifier(table, train_idx, source, cfg, class_colors=colors)
    probs = predict_table(task, table, test_idx, source)
    k = len(table.class_names)
    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, (table.labels[test_idx], probs.argmax(1)), 1)
    held = metrics_from_confusion(cm, table.class_names)
    ckpt = out / "model.safetensors"
    task.export(str(ckpt), extra={"smoothing": {"method": "whittaker", "lambda": smoothing},
                                  "trained_on": str(data / SAMPLES), "holdout": {"oa": held["oa"], "mf1": held["mf1"]}})
    print(f"      held-out OA {held['oa']:.3f}  mF1 {held['mf1']:.3f}  kappa {held['kappa']:.3f} -> {ckpt}")
    print(f"[4/4] mapping {data / CUBE} pixel by pixel")
    predictor = load_predictor(ckpt, device="cpu")
    map_path = out / "crop_map.tif"
    predict_scene(predictor, {"MOD13Q1": data / CUBE}, map_path, window=256, overlap=0, overwrite=overwrite,
                  progress=progress, provenance={"command": "agrifm demo"})
    pts = _points_agreement(map_path, data / POINTS, table.class_names)
    from agrifm.assess import demo_example  # sample design + Olofsson assessment with the 18 points (too few for real use)

    assessment = demo_example(map_path, data / POINTS, out / "assessment", overwrite=overwrite, echo=progress)
    metrics = {
        "oa": held["oa"], "mf1": held["mf1"], "kappa": held["kappa"],
        "per_class_f1": {c: (None if f != f else f) for c, f in held["per_class_f1"].items()},
        "points_agreement": pts["agreement"], "points": pts["points"],
        "n_train": int(len(train_idx)), "n_test": int(len(test_idx)), "classes": table.class_names,
        "smoothing": {"method": "whittaker", "lambda": smoothing}, "epochs": epochs, "seed": seed, "members": cfg.members,
        "confusion_matrix": cm.tolist(), "assessment": assessment, "seconds": round(time.time() - t0, 1),
    }
    write_text_atomic(out / "metrics.json", json.dumps(metrics, indent=2))
    print(f"done in {metrics['seconds']:.0f}s: held-out OA {metrics['oa']:.3f}, mF1 {metrics['mf1']:.3f}, "
          f"Sinop points {pts['n_agree']}/{pts['n']} agree; outputs in {out}")
    return metrics


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="agrifm demo", description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=None, help="folder holding mato_grosso_modis/ (default: ../shared/data when present)")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--smoothing", type=float, default=2.0, help="Whittaker lambda applied to samples and scene (0: off)")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    args = ap.parse_args(argv)
    data = find_data(args.data)
    if data is None:
        where = args.data or "../shared/data"
        print(f"agrifm demo: no data found in {where}\n\n{DATA_HELP}", file=sys.stderr)
        return 2
    run_demo(data, Path(args.out), epochs=args.epochs, seed=args.seed, smoothing=args.smoothing, progress=not args.quiet)
    return 0
