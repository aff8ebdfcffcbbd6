"""A real dense Sentinel-2 result: cropland on the WorldCereal Belgium cubes.

Per seed: fine-tune a small dense AgriFM (``configs/belgium_cropland.yaml`` through the
``agrifm fit`` CLI) on the 100x100 cube (12 monthly composites 2020-11..2021-10, 9 bands: B8A
is read from B08; 2020-12 and 2021-01 are entirely nodata and are gap-filled in time) with its
WorldCereal cropland pseudo-labels (raw 0 = cropland, 1 = other, remapped to the classes
``[other, cropland]``); export ``model.safetensors``; map the 50x48 inference cube over the
same 12 months with ``agrifm.predict.engine.predict_scene``; and score the map against the
WorldCereal 2021 temporary-crops product (100 = cropland, 0 = not) over the pixels OUTSIDE the
footprint the two cubes share (22 rows x 24 cols = 528 px, so 1,872 of 2,400 px), and inside it
for contrast. Both the pseudo-labels and the reference are WorldCereal products, not field truth.

    .venv/bin/python benchmarks/belgium_cropland.py [--data DIR] [--out DIR] \\
        [--decoder fusion|efficient] [--seeds 3] [--steps 150] [--json OUT]

Prints a table (mean ± std over seeds) with the device and date; ``--json`` writes it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "worldcereal_belgium"
CONFIG = ROOT / "configs" / "belgium_cropland.yaml"
CLASS_NAMES = ["other", "cropland"]  # class ids of the map: 0 = other, 1 = cropland
CROPLAND = 1
NODATA = 255
REGIONS = ("outside", "inside", "all")
METRICS = ("oa", "f1_cropland", "f1_other", "mf1", "kappa", "cropland_frac_pred", "cropland_frac_ref")


# --------------------------------------------------------------------------- data layout


def cube_paths(data: Path) -> dict[str, Any]:
    """The files of the Belgium set, checked to exist (training cube, its labels, inference cube)."""
    data = Path(data)
    train = data / "test_cube_100x100"
    paths = {
        "train_cube": train,
        "train_files": sorted(train.glob("S2_*.tif")),
        "pseudo_labels": train / "pseudo_labels" / "cropland_classification.tif",
        "infer_cube": data / "inference_area_50x48",
        "reference": data / "inference_area_50x48" / "labels" / "WORLDCEREAL_TEMPORARYCROPS_2021.tif",
    }
    for key in ("train_cube", "pseudo_labels", "infer_cube", "reference"):
        if not paths[key].exists():
            raise FileNotFoundError(f"{paths[key]} does not exist (--data points at worldcereal_belgium/?)")
    if not paths["train_files"]:
        raise FileNotFoundError(f"no S2_*.tif in {train}")
    return paths


def same_months(train_files: Sequence[Path], infer_cube: Path) -> list[Path]:
    """The inference cube's monthly files for the training cube's months (S2_<YYYY-MM>.tif)."""
    names = [f.name for f in train_files]
    files = [infer_cube / n for n in names]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"the inference cube lacks the training months {missing}")
    return files


def last_day(files: Sequence[Path]) -> str:
    """Last day of the last month of ``S2_<YYYY-MM>.tif`` files (the engine's ``until``)."""
    y, m = (int(v) for v in Path(files[-1]).stem.split("_")[-1].split("-")[:2])
    nxt = np.datetime64(f"{y + m // 12:04d}-{m % 12 + 1:02d}-01")
    return str(nxt - np.timedelta64(1, "D"))


# --------------------------------------------------------------------------- agreement


def read_reference(path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    """WorldCereal product as class ids: 100 -> 1 (cropland), 0 -> 0, anything else -> -1."""
    import rasterio

    with rasterio.open(path) as src:
        raw = src.read(1)
        grid = {"crs": src.crs, "transform": src.transform, "width": src.width, "height": src.height}
    ref = np.full(raw.shape, -1, np.int64)
    ref[raw == 100] = CROPLAND
    ref[raw == 0] = 1 - CROPLAND
    return ref, grid


def outside_mask(grid: Mapping[str, Any], other_bounds: Sequence[float]) -> np.ndarray:
    """(H, W) True where a pixel centre of ``grid`` lies outside ``other_bounds`` (l, b, r, t), same CRS."""
    t = grid["transform"]
    cols = np.arange(grid["width"]) + 0.5
    rows = np.arange(grid["height"]) + 0.5
    x = t.c + cols * t.a
    y = t.f + rows * t.e
    l, b, r, top = other_bounds
    inside = ((y > b) & (y < top))[:, None] & ((x > l) & (x < r))[None, :]
    return ~inside


def agreement(pred: np.ndarray, ref: np.ndarray, mask: np.ndarray | None = None) -> dict[str, float]:
    """OA, per-class F1, mean F1, Cohen's kappa of two binary maps (1 = cropland) where both are
    valid (pred in {0, 1}, ref >= 0) and ``mask``; ``n`` = pixels compared. Figures and their
    undefined cases are those of :func:`agrifm.tasks.metrics.metrics_from_confusion`."""
    ok = (ref >= 0) & ((pred == 0) | (pred == 1))
    if mask is not None:
        ok &= mask
    p, r = pred[ok].astype(np.int64), ref[ok].astype(np.int64)
    n = int(ok.sum())
    if n == 0:
        return {"n": 0, **{k: math.nan for k in METRICS}}
    from agrifm.tasks.metrics import metrics_from_confusion

    m = metrics_from_confusion(np.bincount(2 * r + p, minlength=4).reshape(2, 2), CLASS_NAMES)  # rows ref
    f1 = m["per_class_f1"]
    return {"n": n, "oa": m["oa"], "f1_cropland": f1["cropland"], "f1_other": f1["other"], "mf1": m["mf1"],
            "kappa": m["kappa"], "cropland_frac_pred": float((p == CROPLAND).mean()),
            "cropland_frac_ref": float((r == CROPLAND).mean())}


def score_map(map_path: Path, reference: Path, train_cube_file: Path) -> dict[str, Any]:
    """Agreement of a class map with the reference product, per region; the map must lie on
    the reference's grid (CRS, transform, size)."""
    import rasterio

    ref, grid = read_reference(reference)
    with rasterio.open(map_path) as src:
        if src.crs != grid["crs"] or (src.height, src.width) != (grid["height"], grid["width"]) or \
                not src.transform.almost_equals(grid["transform"], precision=1e-6):
            raise ValueError(f"map {map_path} ({src.crs}, {src.height}x{src.width}, {tuple(src.transform)[:6]}) "
                             f"is not on the grid of {reference}")
        pred = src.read(1)
    with rasterio.open(train_cube_file) as src:
        bounds = tuple(src.bounds)
    outside = outside_mask(grid, bounds)
    return {"outside": agreement(pred, ref, outside), "inside": agreement(pred, ref, ~outside),
            "all": agreement(pred, ref), "outside_px": int(outside.sum()), "inside_px": int((~outside).sum()),
            "map_values": sorted(int(v) for v in np.unique(pred))}


def baselines(paths: Mapping[str, Any]) -> dict[str, Any]:
    """Reference points: 'all cropland' (the majority class) outside the overlap, and the training
    pseudo-labels themselves against the product inside it (both WorldCereal outputs)."""
    import rasterio
    from rasterio.windows import Window

    ref, grid = read_reference(paths["reference"])
    with rasterio.open(paths["train_files"][0]) as src:
        bounds = tuple(src.bounds)
    outside = outside_mask(grid, bounds)
    out = {"all_cropland_outside": agreement(np.full(ref.shape, CROPLAND, np.uint8), ref, outside)}
    # pseudo-labels on the inference grid (same CRS, resolution and pixel corners)
    with rasterio.open(paths["pseudo_labels"]) as src:
        t, s = grid["transform"], src.transform
        col, row = round((t.c - s.c) / s.a), round((t.f - s.f) / s.e)
        raw = src.read(1, window=Window(col, row, grid["width"], grid["height"]), boundless=True, fill_value=65535)
    pseudo = np.full(raw.shape, NODATA, np.uint8)
    pseudo[raw == 0], pseudo[raw == 1] = CROPLAND, 1 - CROPLAND  # raw 0 = cropland
    out["pseudo_labels_inside"] = agreement(pseudo, ref, ~outside)
    return out


# --------------------------------------------------------------------------- one seed


def model_spec(decoder: str, tiny: bool = False) -> dict[str, Any]:
    """The model of a run: the 'small' preset (or a tiny one for tests) with ``decoder``."""
    spec: dict[str, Any] = {"preset": "small", "decoder": decoder}
    if tiny:
        spec.update(embed_dim=8, depths=[1, 1, 1, 1], decoder_dim=16)
    check_decoder(spec)
    return spec


def check_decoder(spec: Mapping[str, Any]) -> None:
    """Build the model on the meta device, so an unknown decoder fails before any training."""
    import torch

    from agrifm.models.agrifm import AgriFM
    from agrifm.tasks.base import resolve_model_config

    try:
        cfg = resolve_model_config(dict(spec), sources={"S2": 10}, num_classes=len(CLASS_NAMES))
        with torch.device("meta"):
            AgriFM(cfg)
    except (ImportError, ValueError, KeyError, NotImplementedError) as e:
        raise SystemExit(f"decoder {spec.get('decoder')!r} is not available in this agrifm ({type(e).__name__}: "
                         f"{e}); ModelConfig(decoder='efficient') comes with agrifm.models.efficient") from None


def fit(paths: Mapping[str, Any], run: Path, *, seed: int, steps: int, spec: Mapping[str, Any],
        val_every: int = 5, extra: Sequence[str] = ()) -> dict[str, Any]:
    """``agrifm fit --config configs/belgium_cropland.yaml`` with this run's overrides."""
    from agrifm.tasks.cli import AgriFMCLI

    args = ["fit", "--config", str(CONFIG), "--seed_everything", str(seed),
            "--trainer.default_root_dir", str(run), "--trainer.max_steps", str(steps),
            "--trainer.check_val_every_n_epoch", str(val_every), "--trainer.num_sanity_val_steps", "0",
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
            "--trainer.log_every_n_steps", "3",
            "--model.init_args.model", json.dumps(dict(spec)),
            "--data.init_args.stacks", json.dumps({"S2": str(paths["train_cube"])}),
            "--data.init_args.labels", str(paths["pseudo_labels"]), *extra]
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        warnings.filterwarnings("ignore", message=".*(LeafSpec|log_every_n_steps|does not have many workers).*")
        cli = AgriFMCLI(args=args)
    best = cli.trainer.checkpoint_callback.best_model_score if cli.trainer.checkpoint_callback else None
    model = run / "model.safetensors"
    if not model.is_file():
        raise RuntimeError(f"fit did not export {model}")
    return {"model": model, "fit_s": time.perf_counter() - t0, "steps": int(cli.trainer.global_step),
            "val_mf1_best": None if best is None else float(best)}


def predict(model: Path, paths: Mapping[str, Any], out: Path, *, window: int = 32, overlap: int = 8) -> dict[str, Any]:
    """Map the inference cube over the training months with the exported model."""
    from agrifm.checkpoint import load_predictor
    from agrifm.predict.engine import predict_scene

    files = same_months(paths["train_files"], paths["infer_cube"])
    predictor = load_predictor(model, device="cpu")
    t0 = time.perf_counter()
    result = predict_scene(predictor, {"S2": [str(f) for f in files]}, out, window=window, overlap=overlap,
                           batch_size=4, until=last_day(files), band_map={"S2": {"B8A": "B08"}},
                           overwrite=True, device="cpu", quicklook=False, progress=False,
                           provenance={"checkpoint": str(model)})
    return {"map": result.outputs["map"], "predict_s": time.perf_counter() - t0, "months": len(files)}


def run_seed(paths: Mapping[str, Any], out: Path, *, seed: int, steps: int, spec: Mapping[str, Any],
             val_every: int = 5, window: int = 32, overlap: int = 8) -> dict[str, Any]:
    run = Path(out) / f"seed{seed}"
    f = fit(paths, run, seed=seed, steps=steps, spec=spec, val_every=val_every)
    p = predict(f["model"], paths, run / "cropland_map.tif", window=window, overlap=overlap)
    scores = score_map(p["map"], paths["reference"], paths["train_files"][0])
    return {"seed": seed, **{k: v for k, v in f.items() if k != "model"}, "predict_s": p["predict_s"],
            "model": str(f["model"]), "map": str(p["map"]), **scores}


def flops(model: Path, frames: int = 12, size: int = 32) -> dict[str, float]:
    """Parameters and forward GFLOP per ``frames`` x ``size`` x ``size`` sample (``agrifm info``)."""
    from agrifm.checkpoint import read_metadata
    from agrifm.commands.info import describe

    rows = describe(read_metadata(model).model, frames, size)
    dec = sum(g for part, _, g in rows if part == "decoder")
    total = rows[-1]
    return {"params": int(total[1]), "gflop": float(total[2]), "decoder_gflop": float(dec),
            "frames": frames, "size": size}


# --------------------------------------------------------------------------- report


def summarize(runs: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, list[float]]]:
    """{region: {metric: [mean, std]}} over seeds (std with ddof=0 for one seed)."""
    out: dict[str, dict[str, list[float]]] = {}
    for region in REGIONS:
        out[region] = {}
        for m in METRICS:
            v = np.array([r[region][m] for r in runs], np.float64)
            v = v[np.isfinite(v)]
            out[region][m] = [float(v.mean()), float(v.std(ddof=1 if len(v) > 1 else 0))] if len(v) else [math.nan] * 2
    v = np.array([r["val_mf1_best"] for r in runs if r["val_mf1_best"] is not None], np.float64)
    out["val"] = {"mf1": [float(v.mean()), float(v.std(ddof=1 if len(v) > 1 else 0))] if len(v) else [math.nan] * 2}
    return out


def device_name() -> str:
    import torch

    from agrifm.runtime import cpu_description

    return f"cpu ({cpu_description()}, {torch.get_num_threads()} torch thread(s), {os.cpu_count()} cores visible)"


def format_table(result: Mapping[str, Any]) -> str:
    s, n = result["summary"], len(result["runs"])
    lines = [f"AgriFM Belgium cropland: decoder {result['decoder']}, {n} seed(s), {result['steps']} steps, "
             f"{result['device']}, {result['date']}",
             f"map vs WORLDCEREAL_TEMPORARYCROPS_2021 (a WorldCereal product, not field truth); "
             f"outside the shared footprint: {result['outside_px']} px, inside: {result['inside_px']} px",
             f"{'metric':<20}" + "".join(f"{r:>18}" for r in REGIONS)]
    for m in METRICS:
        lines.append(f"{m:<20}" + "".join(f"{s[r][m][0]:>11.3f} ± {s[r][m][1]:.3f}" for r in REGIONS))
    b = result["baselines"]
    lines += [f"val mF1 on the 100x100 pseudo-labels (best checkpoint): {s['val']['mf1'][0]:.3f} ± {s['val']['mf1'][1]:.3f}",
              f"baseline 'all cropland' outside: OA {b['all_cropland_outside']['oa']:.3f}, "
              f"mF1 {b['all_cropland_outside']['mf1']:.3f}, kappa {b['all_cropland_outside']['kappa']:.3f}",
              f"pseudo-labels vs product inside: OA {b['pseudo_labels_inside']['oa']:.3f}, "
              f"mF1 {b['pseudo_labels_inside']['mf1']:.3f}, kappa {b['pseudo_labels_inside']['kappa']:.3f}",
              f"model: {result['flops']['params']:,} params, {result['flops']['gflop']:.3f} GFLOP per "
              f"{result['flops']['frames']}x{result['flops']['size']}x{result['flops']['size']} sample "
              f"(decoder {result['flops']['decoder_gflop']:.3f}); fit {result['fit_s']:.0f} s, "
              f"predict {result['predict_s']:.1f} s per seed (mean)"]
    return "\n".join(lines)


def run_benchmark(data: Path, out: Path, *, decoder: str = "fusion", seeds: int = 3, steps: int = 150,
                  tiny: bool = False, val_every: int = 5, window: int = 32, overlap: int = 8) -> dict[str, Any]:
    spec = model_spec(decoder, tiny)
    paths = cube_paths(data)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs = []
    for seed in range(seeds):
        r = run_seed(paths, out, seed=seed, steps=steps, spec=spec, val_every=val_every, window=window,
                     overlap=overlap)
        print(f"seed {seed}: outside OA {r['outside']['oa']:.3f} mF1 {r['outside']['mf1']:.3f} "
              f"kappa {r['outside']['kappa']:.3f}; fit {r['fit_s']:.0f} s", flush=True)
        runs.append(r)
    return {"decoder": decoder, "model": spec, "steps": steps, "seeds": seeds, "window": window, "overlap": overlap,
            "device": device_name(), "date": time.strftime("%Y-%m-%d %H:%M %Z"),
            "command": " ".join([Path(sys.executable).name, *sys.argv]) if __name__ == "__main__" else None,
            "outside_px": runs[0]["outside_px"], "inside_px": runs[0]["inside_px"],
            "summary": summarize(runs), "baselines": baselines(paths), "flops": flops(Path(runs[0]["model"])),
            "fit_s": float(np.mean([r["fit_s"] for r in runs])),
            "predict_s": float(np.mean([r["predict_s"] for r in runs])), "runs": runs}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the worldcereal_belgium folder")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "belgium_cropland_bench", help="run folders, maps")
    ap.add_argument("--decoder", choices=("fusion", "efficient"), default="fusion",
                    help="fusion: the published decoder; efficient: ModelConfig(decoder='efficient')")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=150, help="training steps per seed")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the machine may be shared)")
    ap.add_argument("--tiny", action="store_true", help="a tiny model (smoke runs)")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    import logging

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    result = run_benchmark(args.data, args.out, decoder=args.decoder, seeds=args.seeds, steps=args.steps,
                           tiny=args.tiny)
    print(format_table(result))
    if args.json:
        from agrifm.io import write_text_atomic

        write_text_atomic(args.json, json.dumps(result, indent=1, default=str))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
