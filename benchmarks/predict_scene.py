"""Scene-inference throughput (km2/s) and peak memory versus scene size.

Writes synthetic Sentinel-2 stacks (tiled, DEFLATE GeoTIFFs, one file per date, 10 bands,
uint16 reflectance x 1e4, written strip by strip so generation stays lazy too) of 1k, 2k and
4k px a side, then maps each in a fresh subprocess with a tiny conv predictor and reports
the child's peak resident memory (``ru_maxrss``). Memory is bounded by the window batch and
one output block, so the peak should stay flat as the scene grows.

    .venv/bin/python benchmarks/predict_scene.py [--sizes 1024 2048 4096] [--device cuda]
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BANDS = ("B02", "B03", "B04", "B08", "B05", "B06", "B07", "B8A", "B11", "B12")
STRIP = 512


def write_scene(folder: Path, size: int, frames: int) -> Path:
    """``frames`` dated 10-band GeoTIFFs of ``size`` x ``size`` px (skipped when already there)."""
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    folder.mkdir(parents=True, exist_ok=True)
    if len(list(folder.glob("S2_*.tif"))) == frames:
        return folder
    rng = np.random.default_rng(size)
    fields = rng.integers(0, 6, size=(size // 64 + 1, size // 64 + 1))  # 640 m "parcels"
    profile = dict(driver="GTiff", width=size, height=size, count=len(BANDS), dtype="uint16", nodata=65535,
                   crs="EPSG:32631", transform=from_origin(600000, 5700000, 10, 10), tiled=True,
                   blockxsize=512, blockysize=512, compress="deflate", predictor=2)
    for t in range(frames):
        date = _dt.date(2021, 3 + 2 * t, 1)
        with rasterio.open(folder / f"S2_{date}.tif", "w", **profile) as ds:
            ds.descriptions = BANDS
            for r0 in range(0, size, STRIP):
                h = min(STRIP, size - r0)
                rows = np.arange(r0, r0 + h)[:, None] // 64
                crop = fields[rows, np.arange(size)[None] // 64]  # (h, size) class of each pixel
                base = 800 + 400 * crop + 300 * np.sin(t + crop)
                noise = rng.normal(0, 60, size=(len(BANDS), h, size))
                data = base[None] * (1 + 0.1 * np.arange(len(BANDS)))[:, None, None] + noise
                ds.write(np.clip(data, 0, 20000).astype(np.uint16), window=Window(0, r0, size, h))
    return folder


class TinyConv:
    """A small dense predictor: 3x3 conv over all frames and bands, then 1x1 to K classes."""

    kind = "dense"
    frames = None

    def __init__(self, in_channels: int, num_classes: int = 6, device: str = "cpu") -> None:
        import torch

        from agrifm.sensors import get_source

        torch.manual_seed(0)
        self.sources = {"S2": get_source("S2")}
        self.class_names = [f"class {i}" for i in range(num_classes)]
        self.class_colors = [tuple(int(v) for v in np.random.default_rng(i).integers(0, 255, 3))
                             for i in range(num_classes)]
        self.device = torch.device(device)
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(in_channels, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(32, num_classes, 1),
        ).to(self.device).eval()

    def __call__(self, inputs):
        import torch

        with torch.inference_mode():
            return self.net(inputs["S2"].flatten(1, 2)).softmax(1)


def child(args: argparse.Namespace) -> None:
    """Map one scene in this (fresh) process and print a JSON line with timing and peak memory."""
    import torch

    from agrifm.predict.engine import predict_scene

    predictor = TinyConv(args.frames * len(BANDS), device=args.device)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = Path(args.workdir) / f"map_{args.child}.tif"
    t0 = time.perf_counter()
    res = predict_scene(predictor, {"S2": args.scene}, out, window=args.window, overlap=args.overlap,
                        batch_size=args.batch_size, block_size=args.block_size, overwrite=True, progress=False,
                        device=args.device)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    device = args.device if args.device == "cpu" else f"{args.device} ({torch.cuda.get_device_name()})"
    print(json.dumps({"size": args.child, "seconds": seconds, "km2": res.area_km2, "windows": res.windows,
                      "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "base_mb": base_rss,
                      "device": device, "torch": torch.__version__}))


def _python(*args: str) -> str:
    """Run this script in a fresh interpreter; its last stdout line. (Children inherit the
    parent's peak RSS on Linux, so the parent stays small and does no heavy work itself.)"""
    done = subprocess.run([sys.executable, __file__, *args], check=True, capture_output=True, text=True)
    return (done.stdout.strip().splitlines() or [""])[-1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096])
    p.add_argument("--frames", type=int, default=4)
    p.add_argument("--window", type=int, default=256)
    p.add_argument("--overlap", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--block-size", type=int, default=1024)
    p.add_argument("--device", default="cpu")
    p.add_argument("--workdir", help="where the synthetic scenes go (default: a temporary folder)")
    p.add_argument("--child", type=int, help=argparse.SUPPRESS)
    p.add_argument("--scene", help=argparse.SUPPRESS)
    p.add_argument("--write", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.write is not None:
        write_scene(Path(args.scene), args.write, args.frames)
        return 0
    if args.child is not None:
        child(args)
        return 0

    common = ["--frames", str(args.frames)]
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        rows = []
        for size in args.sizes:
            scene = str(Path(tmp) / f"s2_{size}")
            _python("--write", str(size), "--scene", scene, *common)
            r = json.loads(_python(
                "--child", str(size), "--scene", scene, "--workdir", tmp, *common, "--window", str(args.window),
                "--overlap", str(args.overlap), "--batch-size", str(args.batch_size),
                "--block-size", str(args.block_size), "--device", args.device))
            rows.append(r)
            print(f"  {size} px: {r['seconds']:.1f} s", file=sys.stderr)

    print(f"# agrifm predict_scene benchmark, {_dt.datetime.now():%Y-%m-%d %H:%M}")
    print(f"# device {rows[0]['device']}, {os.cpu_count()} CPUs, torch {rows[0]['torch']}, "
          f"Python {platform.python_version()}; {args.frames} frames x {len(BANDS)} bands, "
          f"window {args.window}/{args.overlap}, batch {args.batch_size}, block {args.block_size}, tiny conv")
    print(f"{'size px':>8} {'km2':>8} {'windows':>8} {'seconds':>8} {'km2/s':>8} {'peak MB':>8} {'run MB':>8}")
    for r in rows:
        print(f"{r['size']:>8} {r['km2']:>8.1f} {r['windows']:>8} {r['seconds']:>8.1f} "
              f"{r['km2'] / r['seconds']:>8.2f} {r['peak_mb']:>8.0f} {r['peak_mb'] - r['base_mb']:>8.0f}")
    print("# peak MB: the child's max RSS; run MB: above the RSS after imports and model set-up")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
