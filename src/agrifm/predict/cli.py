"""``agrifm predict``: map a scene with a fine-tuned checkpoint to a Cloud-Optimized GeoTIFF.

    agrifm predict --checkpoint model.safetensors --source S2=scene/ --out map.tif \\
        [--probabilities] [--window 256 --overlap 32] [--until-date 2021-06-30] \\
        [--band-map S2:B8A=B08] [--device cuda]

Under ``torchrun`` (``RANK``/``WORLD_SIZE`` set) every rank maps its share of the blocks
into ``--block-dir``, and the last one to finish writes the map; ``--assemble`` builds the
map from a complete block folder alone.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import warnings
from collections.abc import Sequence
from agrifm.errors import InputError, require_positive

__all__ = ["main", "build_parser", "parse_sources", "parse_band_maps"]


def parse_sources(items: Sequence[str]) -> dict[str, str | list[str]]:
    """``['S2=path', ...]`` -> ``{'S2': 'path'}``; a name given twice is an error.

    PATH may be a glob pattern (``'S2=cube/S2_2021-*.tif'``) to pick some files of a folder,
    e.g. the months of one season.
    """
    import glob

    out: dict[str, str | list[str]] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise InputError(f"--source expects NAME=PATH, got {item!r}")
        if name in out:
            raise InputError(f"--source {name} given twice ({out[name]!r} and {path!r})")
        if any(ch in path for ch in "*?["):
            files = sorted(glob.glob(path))
            if not files:
                raise InputError(f"--source {name}: no file matches {path!r}")
            out[name] = files
        else:
            out[name] = path
    return out


def parse_band_maps(items: Sequence[str]) -> dict[str, dict[str, str]]:
    """``['S2:B8A=B08,B01=B02']`` -> ``{'S2': {'B8A': 'B08', 'B01': 'B02'}}`` (model band = stored band)."""
    out: dict[str, dict[str, str]] = {}
    for item in items:
        name, sep, pairs = item.partition(":")
        if not sep or not name or not pairs:
            raise InputError(f"--band-map expects NAME:BAND=STORED[,BAND=STORED], got {item!r}")
        for pair in pairs.split(","):
            band, eq, stored = pair.partition("=")
            if not eq or not band or not stored:
                raise InputError(f"--band-map {item!r}: {pair!r} is not BAND=STORED")
            out.setdefault(name, {})[band] = stored
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="agrifm predict", description=__doc__.replace("``", ""),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="agrifm model (.safetensors written by agrifm fit, demo or convert); "
                                        "required unless --assemble")
    p.add_argument("--source", action="append", default=[], metavar="NAME=PATH",
                   help="a source stack (folder, file, or glob pattern of GeoTIFFs); repeat for each source")
    p.add_argument("--out", required=True, help="output class map (.tif; its folder is created); sidecars are named after it "
                                                "(MAP.tif.aux.xml class names, MAP.png quicklook)")
    p.add_argument("--probabilities", action="store_true",
                   help="also write MAP_probs.tif (K bands, value/254) and MAP_confidence.tif (percent)")
    p.add_argument("--window", type=int, default=256, help="model window in output pixels (default 256)")
    p.add_argument("--overlap", type=int, default=32, help="blending overlap in pixels (default 32)")
    p.add_argument("--batch-size", type=int, default=4, help="windows per model call (default 4)")
    p.add_argument("--until-date", metavar="YYYY-MM-DD", help="use only frames up to this date (early season)")
    p.add_argument("--band-map", action="append", default=[], metavar="NAME:BAND=STORED",
                   help="read STORED for a band the source lacks, e.g. S2:B8A=B08")
    p.add_argument("--resolution", type=float, help="output pixel size (default: finest source)")
    p.add_argument("--crs", help="output CRS, e.g. EPSG:32631 (default: finest source)")
    p.add_argument("--bounds", type=float, nargs=4, metavar=("LEFT", "BOTTOM", "RIGHT", "TOP"),
                   help="output bounds in the output CRS (default: finest source)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--block-dir", help="folder for finished blocks (resume, several ranks)")
    p.add_argument("--block-size", type=int, default=2048, help="block side in pixels (memory bound; default 2048)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--no-quicklook", action="store_true", help="skip the MAP.png quicklook")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--assemble", action="store_true",
                   help="only build the outputs from a complete --block-dir (no checkpoint needed)")
    return p


def _run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from agrifm.predict.assemble import assemble
    from agrifm.predict.checks import resolve_device
    from agrifm.predict.run import predict_scene
    from agrifm.predict.tiling import Rect

    if args.assemble:
        if not args.block_dir:
            raise InputError("--assemble needs --block-dir")
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)  # a missing output folder is made
        paths = assemble(args.block_dir, args.out, overwrite=args.overwrite, quicklook=not args.no_quicklook)
        print("\n".join(f"{k}: {v}" for k, v in paths.items()))
        return 0
    if not args.checkpoint or not args.source:
        raise InputError("--checkpoint and at least one --source NAME=PATH are required")
    require_positive(window=args.window, batch_size=args.batch_size, block_size=args.block_size)  # before loading
    device = resolve_device(args.device)
    device = None if device is None else str(device)
    checkpoint = importlib.import_module("agrifm.checkpoint")  # the model code loads only here

    sources = parse_sources(args.source)
    band_map = parse_band_maps(args.band_map)
    predictor = checkpoint.load_predictor(args.checkpoint, device=device)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)  # a missing output folder is made
    provenance = {"checkpoint": str(args.checkpoint), "checkpoint_sha256": checkpoint.file_sha256(args.checkpoint)}
    result = predict_scene(
        predictor, sources, args.out, window=args.window, overlap=args.overlap, batch_size=args.batch_size,
        probabilities=args.probabilities, until=args.until_date, resolution=args.resolution, crs=args.crs,
        bounds=args.bounds, band_map=band_map, overwrite=args.overwrite, device=device,
        provenance=provenance, block_dir=args.block_dir, block_size=args.block_size,
        quicklook=not args.no_quicklook, progress=not args.no_progress,
    )
    rate = result.area_km2 / result.seconds if result.seconds else float("nan")
    print(f"{result.blocks_run} blocks run, {result.blocks_skipped} already done, {result.windows} windows, "
          f"{result.area_km2:.2f} km2 in {result.seconds:.1f} s ({rate:.2f} km2/s)")
    if result.outputs:
        total = result.grid.area_km2(Rect(0, 0, result.grid.height, result.grid.width))
        if result.mapped_km2 == result.mapped_km2 and total == total and total > 0:
            share = 100 * result.mapped_km2 / total
            print(f"mapped {result.mapped_km2:.2f} of {total:.2f} km2 ({share:.1f} %"
                  + ("; the rest is nodata: no valid observation in every source)" if share < 99.95 else ")"))
        print("\n".join(f"{k}: {v}" for k, v in result.outputs.items()))
    else:
        print(f"blocks saved in {result.block_dir}; the rank that completes them writes {args.out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from agrifm.predict.sources import UnitsWarning

    warnings.simplefilter("always", UnitsWarning)
    return _run(args)  # errors: the dispatcher prints them (agrifm.cli.report_error)


if __name__ == "__main__":
    raise SystemExit(main())
