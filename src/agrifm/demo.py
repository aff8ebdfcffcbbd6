"""``agrifm demo``: fine-tune on real MODIS crop samples and map a real scene.

Uses the data set shipped in the repository's ``data/mato_grosso_modis`` (or ``--data DIR``).

1. Reads the Mato Grosso MOD13Q1 sample series (9 crop / land-use classes, 23 dates) on the
   bands the Sinop cube has (NDVI, EVI).
2. Holds out 20 % of the samples grouped by location (no place on both sides).
3. Trains the AgriFM point-classification model (small config, CPU-friendly; progress bars on
   a terminal, a line per epoch in a log). The samples were smoothed by their providers; the
   cube is raw. We apply the *same* Whittaker smoother to both (stored in the checkpoint, so
   ``agrifm predict`` does it too) and add small Gaussian noise in training.
4. Maps the Sinop cube pixel by pixel to a Cloud-Optimized GeoTIFF (class names in its
   ``.aux.xml``, provenance in its tags) + quicklook, checks the 18 labelled Sinop points
   against the map, and draws the confusion matrix and training curves; designs a stratified sample on the map and runs the
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

from agrifm.errors import AgrifmError

__all__ = ["main", "run_demo", "find_data", "DATA_HELP", "OUTPUTS", "REPO_DATA"]

SAMPLES = "mato_grosso_modis/samples/mato_grosso_train.csv"
POINTS = "mato_grosso_modis/samples/sinop_points.csv"
CUBE = "mato_grosso_modis/sinop_cube"
# The repository's data folder (src/agrifm/demo.py -> repository root / data).
REPO_DATA = Path(__file__).resolve().parents[2] / "data"
# What a run leaves in --out; a folder holding any of them is a previous run.
OUTPUTS = ("model.safetensors", "metrics.json", "crop_map.tif", "crop_map.png", "confusion_matrix.png",
           "training_curves.png", "training_history.csv")

DATA_HELP = """\
The demo needs the data set 'mato_grosso_modis' (about 6 MB), which ships with the repository
in data/mato_grosso_modis/ (see its README.md: sources, commits, GPL-2 licence). Run the demo from
a clone of the repository (pip install -e .), or point --data at the folder holding
mato_grosso_modis/:
  samples/mato_grosso_train.csv  1,327 MOD13Q1 pixel time series, 9 classes
  samples/sinop_points.csv       18 labelled points in the cube
  sinop_cube/MOD13Q1_h12v10_<NDVI|EVI>_<YYYY-MM-DD>.tif   23 dates x 2 bands
Sources (GPL-2): github.com/e-sensing/inSitu @ 772e0dda670d (samples),
github.com/e-sensing/sits @ 811fa6ce5c46 (points and cube)."""

# Colours a map reader expects: crops warm, natural vegetation green, pasture yellow-green.
CLASS_COLORS = {
    "Cerrado": (166, 132, 60), "Fallow_Cotton": (240, 200, 220), "Forest": (20, 100, 40), "Pasture": (190, 220, 90),
    "Soy_Corn": (255, 160, 0), "Soy_Cotton": (230, 80, 160), "Soy_Fallow": (250, 230, 120), "Soy_Millet": (200, 90, 30),
    "Soy_Sunflower": (255, 225, 0),
}


def find_data(explicit: str | None) -> Path | None:
    """``--data``, else the repository's ``data/`` folder (where the demo data ships)."""
    candidates = [Path(explicit)] if explicit else [REPO_DATA]
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
        rows.append({"id": int(p["id"]), "row": int(p["row"]), "col": int(p["col"]), "label": p["label"],
                     "predicted": pred, "agree": pred == p["label"]})
    n_ok = sum(r["agree"] for r in rows)
    return {"agreement": n_ok / len(rows), "n": len(rows), "n_agree": n_ok, "points": rows}


def check_out(out: Path, overwrite: bool) -> None:
    """Refuse an ``--out`` folder that holds a previous run unless ``overwrite``."""
    if out.exists() and not out.is_dir():
        raise AgrifmError(f"--out {out} is a file, not a folder")
    found = [n for n in OUTPUTS if (out / n).exists()]
    if found and not overwrite:
        raise AgrifmError(f"--out {out} holds a previous run ({', '.join(found)}); "
                          f"pass --overwrite to replace it, or choose another folder")


def _training_curves(history_dir: Path, out: Path, members: int) -> list[Path]:
    """Merge the members' per-epoch histories into training_history.csv + training_curves.png."""
    from agrifm.tasks.plots import plot_training_curves, read_history, write_history

    files = sorted(history_dir.glob("history_seed*.csv"))
    if not files:
        return []
    merged: dict[int, dict[str, float]] = {}
    for i, f in enumerate(files, start=1):
        for r in read_history(f):
            row = merged.setdefault(int(r["epoch"]), {"epoch": r["epoch"]})
            row.update({(k if len(files) == 1 else f"{k} (member {i})"): v for k, v in r.items()
                        if k not in ("epoch", "step")})
    rows = [merged[e] for e in sorted(merged)]
    what = f"ensemble of {members}" if members > 1 else "one model"
    return [write_history(rows, out / "training_history.csv"),
            plot_training_curves(rows, out / "training_curves.png",
                                 title=f"agrifm demo: training ({what}); validation = the grouped hold-out")]


def run_demo(data: Path, out: Path, *, epochs: int = 40, seed: int = 0, smoothing: float = 2.0,
             holdout: float = 0.2, progress: bool = True, overwrite: bool = False) -> dict[str, Any]:
    """Train, evaluate and map (see the module docstring); returns what ``metrics.json`` holds."""
    import tempfile

    from agrifm.checkpoint import file_sha256, load_predictor
    from agrifm.data.stack import open_stack
    from agrifm.data.tables import grouped_split, read_table
    from agrifm.io import write_text_atomic
    from agrifm.predict.run import predict_scene
    from agrifm.predict.quicklook import short_crs_name, write_quicklook
    from agrifm.sensors import get_source
    from agrifm.tasks.metrics import metrics_from_confusion
    from agrifm.tasks.plots import save_confusion_matrix
    from agrifm.tasks.pointfit import PointFitConfig, fit_point_classifier, predict_table, smooth_table, source_from_table

    t0 = time.time()
    check_out(out, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    cube = open_stack(data / CUBE)
    bands = list(cube.bands)
    crs = f"EPSG:{cube.crs.to_epsg()}" if cube.crs.to_epsg() else short_crs_name(cube.crs)
    print(f"[1/4] cube {data / CUBE}: {len(cube.dates)} dates x bands {bands}, {cube.height} x {cube.width} px ({crs})",
          flush=True)
    table = read_table(data / SAMPLES, bands=bands)
    table = smooth_table(table, smoothing)
    train_idx, test_idx = grouped_split(table, holdout, seed=seed)
    print(f"[2/4] samples {data / SAMPLES}: {len(table)} series, {len(table.class_names)} classes; "
          f"grouped hold-out: {len(train_idx)} train / {len(test_idx)} test", flush=True)
    source = source_from_table(table, train_idx, "MOD13Q1", base=get_source("MOD13Q1"))
    colors = [CLASS_COLORS.get(c, (128, 128, 128)) for c in table.class_names]
    with tempfile.TemporaryDirectory(dir=out, prefix=".history.") as hist:
        cfg = PointFitConfig(epochs=epochs, seed=seed, progress=progress, history_dir=hist)
        what = f"an ensemble of {cfg.members} AgriFM point classifiers" if cfg.members > 1 else "the AgriFM point classifier"
        print(f"[3/4] training {what} ({epochs} epochs, Whittaker smoothing lambda={smoothing})", flush=True)
        # The hold-out is scored every epochs/4 epochs for the curves only (nothing is selected on it).
        task = fit_point_classifier(table, train_idx, source, cfg, val_index=test_idx, class_colors=colors)
        figures = _training_curves(Path(hist), out, cfg.members)
    probs = predict_table(task, table, test_idx, source)
    k = len(table.class_names)
    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, (table.labels[test_idx], probs.argmax(1)), 1)
    held = metrics_from_confusion(cm, table.class_names)
    ckpt = out / "model.safetensors"
    task.export(str(ckpt), extra={"smoothing": {"method": "whittaker", "lambda": smoothing},
                                  "trained_on": str(data / SAMPLES), "holdout": {"oa": held["oa"], "mf1": held["mf1"]}})
    figures.append(save_confusion_matrix(cm, table.class_names, out / "confusion_matrix.png",
                                         f"agrifm demo: grouped hold-out ({len(test_idx)} series)"))
    print(f"      held-out OA {held['oa']:.3f}  mF1 {held['mf1']:.3f}  kappa {held['kappa']:.3f} -> {ckpt}", flush=True)
    print(f"[4/4] mapping {data / CUBE} pixel by pixel", flush=True)
    predictor = load_predictor(ckpt, device="cpu")
    map_path = out / "crop_map.tif"
    provenance = {"command": "agrifm demo", "checkpoint": str(ckpt), "checkpoint_sha256": file_sha256(ckpt),
                  "training_data": str(data / SAMPLES)}
    # Point models run per pixel: the window only sets how often progress is reported (12 windows).
    predict_scene(predictor, {"MOD13Q1": data / CUBE}, map_path, window=64, overlap=0, overwrite=overwrite,
                  progress=progress, provenance=provenance, quicklook=False)
    pts = _points_agreement(map_path, data / POINTS, table.class_names)
    write_quicklook(map_path, out / "crop_map.png", title="agrifm demo: crop map, Sinop (Mato Grosso)",
                    subtitle=f"MOD13Q1 NDVI + EVI, {cube.dates[0]}..{cube.dates[-1]} ({len(cube.dates)} dates); "
                             f"{pts['n_agree']} of {pts['n']} labelled points agree",
                    points=[(p["row"], p["col"], p["agree"]) for p in pts["points"]])
    from agrifm.assess import demo_example  # sample design + Olofsson assessment with the 18 points (too few for real use)

    assessment = demo_example(map_path, data / POINTS, out / "assessment", overwrite=overwrite, echo=progress)
    metrics = {
        "oa": held["oa"], "mf1": held["mf1"], "kappa": held["kappa"],
        "per_class_f1": {c: (None if f != f else f) for c, f in held["per_class_f1"].items()},
        "points_agreement": pts["agreement"], "points": pts["points"],
        "n_train": int(len(train_idx)), "n_test": int(len(test_idx)), "classes": table.class_names,
        "smoothing": {"method": "whittaker", "lambda": smoothing}, "epochs": epochs, "seed": seed, "members": cfg.members,
        "confusion_matrix": cm.tolist(), "figures": [p.name for p in figures] + ["crop_map.png"],
        "assessment": assessment,
        "seconds": round(time.time() - t0, 1),
    }
    write_text_atomic(out / "metrics.json", json.dumps(metrics, indent=2))
    print(f"done in {metrics['seconds']:.0f}s: held-out OA {metrics['oa']:.3f}, mF1 {metrics['mf1']:.3f}, "
          f"Sinop points {pts['n_agree']}/{pts['n']} agree; outputs in {out}", flush=True)
    return metrics


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="agrifm demo", description=__doc__.splitlines()[0].strip("`").replace("``", ""),
        epilog=f"Writes {', '.join(OUTPUTS)} and crop_map.tif.aux.xml into --out. "
               "A few minutes on 2 CPU cores.")
    ap.add_argument("--out", required=True, help="output folder (created if missing)")
    ap.add_argument("--data", default=None,
                    help="folder holding mato_grosso_modis/ (default: the repository's data/ folder)")
    ap.add_argument("--epochs", type=int, default=40, help="training epochs (default 40)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the hold-out split and the training (default 0)")
    ap.add_argument("--smoothing", type=float, default=2.0, help="Whittaker lambda applied to samples and scene (default 2.0; 0: off)")
    ap.add_argument("--overwrite", action="store_true", help="replace the outputs of a previous run in --out")
    ap.add_argument("--quiet", action="store_true", help="no progress bars or progress lines")
    args = ap.parse_args(argv)
    data = find_data(args.data)
    if data is None:
        where = args.data or REPO_DATA
        print(f"agrifm demo: error: no mato_grosso_modis/ data in {where}\n\n{DATA_HELP}", file=sys.stderr)
        return 2
    run_demo(data, Path(args.out), epochs=args.epochs, seed=args.seed, smoothing=args.smoothing,
             progress=not args.quiet, overwrite=args.overwrite)
    return 0
