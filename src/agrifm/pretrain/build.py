"""``agrifm pretrain-data``: imagery stacks + a land-cover raster -> pre-training shards.

Each source stack is tiled into chips (default 128 px, 32 px for MODIS; ``--stride`` below the
chip size gives overlapping chips, and a last chip is aligned to the right/bottom edge so the
whole scene is covered). For every chip the land cover under it is read (only that window, so
continental products are fine) and turned into class fractions on a cell grid (default cell =
chip / 8 px, an 8 x 8 grid). With ``--period year`` (default) each chip yields one sample per
calendar year, the year-long series the pre-training samples frames from. Frames in which no
pixel of the chip is valid (clouds, masks) are dropped, since they carry no signal.

``--val-fraction`` makes a *spatial* split: the plane is cut into square blocks of
``--split-block`` pixels of the first source (in its CRS); a seeded choice of blocks is
validation. A chip belongs to the split of the blocks it touches; a chip touching blocks of both
splits is dropped (counted), so no validation pixel is ever seen in training, whatever the
stride, and all sources share the same blocks.

Layout: ``OUT/<source>/`` without a split, ``OUT/train/<source>/`` and ``OUT/val/<source>/``
with one; each folder has its own ``index.json``. ``OUT/summary.json`` holds the printed summary.
"""

from __future__ import annotations

import argparse
import glob
import json
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agrifm.io import write_text_atomic
from agrifm.pretrain.fractions import NoOverlapError, check_overlap, class_fractions, read_landcover_window
from agrifm.pretrain.landcover import CLASSES, load_mapping, report_unmapped
from agrifm.pretrain.shards import ShardWriter
from agrifm.errors import InputError, require_positive, user_input

__all__ = ["build_pretrain_shards", "chip_offsets", "SpatialSplit", "main"]

_NAME_RE = re.compile(r"^[A-Za-z0-9_-]+$")
_READ_BYTES = 512 << 20  # chips read at once are bounded by this much float32 data


def chip_offsets(size: int, chip: int, stride: int) -> list[int]:
    """Chip starts along one axis: every ``stride`` px, plus one flush with the far edge."""
    if size < chip:
        raise InputError(f"the scene is {size} px along an axis, smaller than the chip size {chip}")
    if stride < 1:
        raise InputError(f"stride must be >= 1, got {stride}")
    starts = list(range(0, size - chip + 1, stride))
    if starts[-1] != size - chip:
        starts.append(size - chip)
    return starts


@dataclass
class SpatialSplit:
    """Seeded assignment of square map blocks to train/val (see the module docstring)."""

    crs: Any
    origin: tuple[float, float]  # (x, y) of the block grid's top-left corner
    block: tuple[float, float]  # block width, height in CRS units
    val_blocks: set[tuple[int, int]] = field(default_factory=set)

    @classmethod
    def make(
        cls, crs: Any, transform: Any, block_px: int, extents: Sequence[tuple[float, float, float, float]],
        val_fraction: float, seed: int,
    ) -> "SpatialSplit":
        if not 0 < val_fraction < 1:
            raise InputError(f"--val-fraction must be in (0, 1), got {val_fraction}")
        split = cls(crs, (transform.c, transform.f), (block_px * abs(transform.a), block_px * abs(transform.e)))
        blocks = sorted({b for e in extents for b in split.blocks(e)})
        if len(blocks) < 2:
            raise InputError(
                f"--split-block {block_px} px gives a single block over the imagery: nothing to split; use smaller blocks"
            )
        n_val = min(len(blocks) - 1, max(1, round(val_fraction * len(blocks))))
        order = np.random.default_rng(seed).permutation(len(blocks))[:n_val]
        split.val_blocks = {blocks[i] for i in order}
        return split

    def blocks(self, bounds: tuple[float, float, float, float]) -> set[tuple[int, int]]:
        """Blocks (row, col) touched by ``bounds`` (left, bottom, right, top) in the split CRS."""
        eps = 1e-6 * min(self.block)
        (x0, y0), (bw, bh) = self.origin, self.block
        c0, c1 = int(np.floor((bounds[0] - x0) / bw)), int(np.floor((bounds[2] - x0 - eps) / bw))
        r0, r1 = int(np.floor((y0 - bounds[3]) / bh)), int(np.floor((y0 - bounds[1] - eps) / bh))
        return {(r, c) for r in range(r0, r1 + 1) for c in range(c0, c1 + 1)}

    def assign(self, bounds: tuple[float, float, float, float], crs: Any) -> str | None:
        """'train', 'val', or None when the chip straddles both."""
        from rasterio.warp import transform_bounds

        if crs != self.crs:
            bounds = transform_bounds(crs, self.crs, *bounds, densify_pts=21)
        kinds = {b in self.val_blocks for b in self.blocks(bounds)}
        return None if len(kinds) > 1 else ("val" if kinds.pop() else "train")


@dataclass
class _Totals:
    """Running counts for the summary."""

    samples: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    frac_sum: dict[str, np.ndarray] = field(default_factory=dict)
    cells: Counter[str] = field(default_factory=Counter)

    def add_fractions(self, split: str, fractions: np.ndarray, valid: np.ndarray) -> None:
        self.frac_sum.setdefault(split, np.zeros(len(CLASSES)))
        self.frac_sum[split] += fractions[:, valid].sum(1)
        self.cells[split] += int(valid.sum())


def _group_frames(dates: np.ndarray, period: str) -> list[tuple[str, np.ndarray]]:
    """``(label, frame indices)`` per calendar year, or one group for ``period='all'``."""
    if period == "all":
        return [("all", np.arange(len(dates)))]
    years = dates.astype("datetime64[Y]").astype(int) + 1970
    return [(str(y), np.flatnonzero(years == y)) for y in np.unique(years)]


def build_pretrain_shards(
    sources: dict[str, str],
    landcover: str,
    out: str,
    *,
    masks: dict[str, str] | None = None,
    mask_kind: str = "cloud",
    classes: str | None = None,
    bands: dict[str, list[str]] | None = None,
    chip_size: dict[str, int] | None = None,
    cell_size: dict[str, int] | None = None,
    stride: dict[str, int] | None = None,
    val_fraction: float | None = None,
    split_block: int | None = None,
    samples_per_shard: int = 1000,
    period: str = "year",
    min_coverage: float = 0.5,
    min_frames: int = 1,
    keep_empty_frames: bool = False,
    x_dtype: str = "float16",
    seed: int = 0,
    strict: bool = False,
    overwrite: bool = False,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Build the shards (see the module docstring); returns the summary that is printed."""
    import rasterio
    from rasterio.windows import Window

    from agrifm.data.stack import open_stack
    from agrifm.progress import progress_bar

    masks, bands = masks or {}, bands or {}
    for name in [*sources, *masks, *bands]:
        if not _NAME_RE.match(name):
            raise InputError(f"source name {name!r}: use letters, digits, '_' or '-'")
    for name in [*masks, *bands]:
        if name not in sources:
            raise InputError(f"--mask/--bands given for {name!r}, which is not a --source ({list(sources)})")
    if period not in ("year", "all"):
        raise InputError(f"period must be 'year' or 'all', got {period!r}")
    mapping = load_mapping(classes if classes is not None else "glc_fcs30d")
    out_dir = Path(out)
    stacks = {
        n: open_stack(
            _expand(p), bands=bands.get(n), mask=_expand(masks[n]) if n in masks else None,
            mask_kind=mask_kind,  # type: ignore[arg-type]
        )
        for n, p in sources.items()
    }
    sizes: dict[str, tuple[int, int, int]] = {}
    for n, st in stacks.items():
        chip = (chip_size or {}).get(n, 32 if "modis" in n.lower() else 128)
        cell = (cell_size or {}).get(n, max(1, chip // 8))
        if chip % cell:
            raise InputError(f"source {n}: chip size {chip} is not a multiple of the cell size {cell}")
        sizes[n] = (chip, cell, (stride or {}).get(n, chip))

    if not Path(landcover).is_file():
        raise FileNotFoundError(f"land-cover raster {landcover} does not exist")
    lc_ds = rasterio.open(landcover)
    unmapped: Counter[int] = Counter()
    totals = _Totals()
    try:
        for n, st in stacks.items():
            check_overlap(
                tuple(lc_ds.bounds), lc_ds.crs, tuple(st.bounds), st.crs,
                lc_name=f"land cover {landcover}", img_name=f"source {n} ({sources[n]})",
            )
        split = None
        if val_fraction:
            first_name, first = next(iter(stacks.items()))
            split_block = split_block or 4 * sizes[first_name][0]
            extents = [_in_crs(tuple(s.bounds), s.crs, first.crs) for s in stacks.values()]
            split = SpatialSplit.make(first.crs, first.transform, split_block, extents, val_fraction, seed)
        splits = ["train", "val"] if split else [""]
        plan = {
            n: (chip_offsets(st.height, sizes[n][0], sizes[n][2]), chip_offsets(st.width, sizes[n][0], sizes[n][2]))
            for n, st in stacks.items()
        }
        total = sum(len(r) * len(c) for r, c in plan.values())
        bar = progress_bar(total, "pretrain-data", "chip", enabled=progress is not False)  # lines in a log
        for n, st in stacks.items():
            chip, cell, step = sizes[n]
            rows, cols = plan[n]
            params = {
                "source_path": str(sources[n]), "mask": masks.get(n), "mask_kind": mask_kind,
                "landcover": str(landcover), "classes": classes or "glc_fcs30d",
                "mapping": {str(k): (CLASSES[v] if v >= 0 else None) for k, v in sorted(mapping.items())},
                "stride": step, "period": period, "min_coverage": min_coverage, "min_frames": min_frames,
                "keep_empty_frames": keep_empty_frames, "val_fraction": val_fraction,
                "split_block": split_block, "seed": seed, "crs": st.crs.to_string(),
                "transform": list(st.transform)[:6], "scene_shape": [st.height, st.width],
            }
            writers = {
                s: ShardWriter(
                    out_dir / s / n if s else out_dir / n, n, samples_per_shard, source=n, bands=st.bands,
                    chip_size=chip, cell_size=cell, x_dtype=x_dtype, params={**params, "split": s or None},
                    overwrite=overwrite,
                )
                for s in splits
            }
            per_read = max(1, _READ_BYTES // (4 * len(st.dates) * len(st.bands) * chip * chip))
            try:
                for r in rows:
                    for i in range(0, len(cols), per_read):
                        batch = cols[i : i + per_read]
                        for c, arr in zip(batch, st.read_many([Window(c, r, chip, chip) for c in batch])):
                            bar.update(1)
                            _chip_samples(
                                n, r, c, arr, lc_ds, landcover, mapping, cell, split, writers, totals,
                                unmapped=unmapped, strict=strict, period=period, min_coverage=min_coverage,
                                min_frames=min_frames, keep_empty_frames=keep_empty_frames,
                            )
            except BaseException:
                for w in writers.values():
                    w.abort()
                raise
            for w in writers.values():
                w.close()
        bar.close()
    finally:
        lc_ds.close()
    report_unmapped(unmapped, f"land cover {landcover}")
    summary = {
        "out": str(out_dir),
        "samples": dict(totals.samples),
        "skipped": dict(totals.skipped),
        "unmapped_codes": {str(k): v for k, v in sorted(unmapped.items())},
        "class_fraction_means": {
            s or "all": dict(zip(CLASSES, np.round(totals.frac_sum[s] / max(totals.cells[s], 1), 4).tolist()))
            for s in totals.frac_sum
        },
    }
    write_text_atomic(out_dir / "summary.json", json.dumps(summary, indent=1), fsync=True)
    return summary


def _expand(path: str) -> str | list[str]:
    """A path, or the sorted files a glob pattern (``S2_*.tif``) matches."""
    if not any(ch in str(path) for ch in "*?["):
        return path
    files = sorted(glob.glob(str(path)))
    if not files:
        raise FileNotFoundError(f"no file matches {path!r}")
    return files


def _in_crs(bounds: tuple[float, float, float, float], src: Any, dst: Any) -> tuple[float, float, float, float]:
    from rasterio.warp import transform_bounds

    return bounds if src == dst else tuple(transform_bounds(src, dst, *bounds, densify_pts=21))  # type: ignore[return-value]


def _chip_samples(
    name: str, row: int, col: int, arr: Any, lc_ds: Any, lc_path: str, mapping: dict[int, int],
    cell: int, split: SpatialSplit | None, writers: dict[str, ShardWriter], totals: _Totals, *,
    unmapped: Counter[int], strict: bool, period: str, min_coverage: float, min_frames: int,
    keep_empty_frames: bool,
) -> None:
    """Fractions and per-period samples of one chip, written to its split's shards."""
    from rasterio.transform import Affine, array_bounds

    key = f"{name}_r{row:06d}_c{col:06d}"
    h, w = arr.data.shape[-2:]
    bounds = array_bounds(h, w, arr.transform)  # (left, bottom, right, top)
    target = "" if split is None else split.assign(bounds, arr.crs)
    if target is None:
        totals.skipped["split_border"] += 1
        return
    grid = (arr.transform @ Affine.scale(cell), arr.crs, (h // cell, w // cell))
    window = read_landcover_window(lc_ds, *grid[:2], (h, w))
    try:
        if window is None:
            raise NoOverlapError(key)
        fractions, frac_valid = class_fractions(
            window[0], window[1], lc_ds.crs, grid, mapping, nodata=lc_ds.nodata, min_coverage=min_coverage,
            strict=strict, unmapped=unmapped, lc_name=f"land cover {lc_path}", grid_name=f"chip {key}",
        )
    except NoOverlapError:
        frac_valid = None
    if frac_valid is None or not frac_valid.any():
        totals.skipped["no_landcover"] += 1
        return
    for label, idx in _group_frames(arr.dates, period):
        if not keep_empty_frames:
            dropped = idx[~arr.valid[idx].any(axis=(1, 2))]
            totals.skipped["empty_frames"] += len(dropped)
            idx = idx[arr.valid[idx].any(axis=(1, 2))]
        if len(idx) < max(min_frames, 1):
            totals.skipped["few_frames"] += 1
            continue
        meta = {
            "row": row, "col": col, "period": label, "split": target or None,
            "crs": arr.crs.to_string(), "transform": list(arr.transform)[:6],
        }
        writers[target].add(
            f"{key}_{label}", x=arr.data[idx], valid=arr.valid[idx], dates=arr.dates[idx],
            fractions=fractions, frac_valid=frac_valid, meta=meta,
        )
        totals.samples[f"{target or 'all'}/{name}"] += 1
        totals.add_fractions(target, fractions, frac_valid)


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


def _named(values: Sequence[str] | None, what: str, names: Sequence[str], cast: Callable[[str], Any] = str) -> dict[str, Any]:
    """Parse repeated ``NAME=VALUE`` options; a bare ``VALUE`` applies to every source."""
    out: dict[str, Any] = {}
    for v in values or []:
        name, sep, rest = v.partition("=")
        if sep and _NAME_RE.match(name):
            if name not in names:
                raise InputError(f"{what} {v!r} names {name!r}, not a --source ({', '.join(names)})")
            targets, value = [name], rest
        else:
            targets, value = list(names), v
        try:
            parsed = cast(value)
        except ValueError:
            raise InputError(f"{what} {v!r}: bad value {value!r}") from None
        out.update({t: parsed for t in targets})
    return out


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="agrifm pretrain-data",
        description="Tile imagery stacks into chips, attach land-cover class fractions, write tar shards.",
    )
    p.add_argument("--source", action="append", required=True, metavar="NAME=PATH", help="a stack (folder, file or quoted glob); repeatable")
    p.add_argument("--mask", action="append", metavar="[NAME=]PATH", help="per-date mask stack of a source")
    p.add_argument("--mask-kind", choices=["cloud", "valid"], default="cloud", help="mask meaning: 1 = cloud, or 1 = valid")
    p.add_argument("--landcover", required=True, metavar="RASTER", help="categorical land-cover raster")
    p.add_argument("--classes", default=None, metavar="MAPPING", help="preset (glc_fcs30d, worldcover, dynamic_world, eolearn_lulc) or JSON file; default glc_fcs30d")
    p.add_argument("--out", required=True, metavar="SHARDS", help="output folder")
    p.add_argument("--bands", action="append", metavar="[NAME=]B1,B2,...", help="bands to keep, in model order")
    p.add_argument("--chip-size", action="append", metavar="[NAME=]N", help="chip size in px (128; 32 for MODIS)")
    p.add_argument("--cell-size", action="append", metavar="[NAME=]M", help="source px per fraction cell (chip/8)")
    p.add_argument("--stride", action="append", metavar="[NAME=]S", help="chip step in px (= chip size); smaller overlaps")
    p.add_argument("--val-fraction", type=float, default=None, metavar="F", help="share of blocks for validation (spatial split)")
    p.add_argument("--split-block", type=int, default=None, metavar="PX", help="split block size in px of the first source (4 chips)")
    p.add_argument("--samples-per-shard", type=int, default=1000, metavar="K")
    p.add_argument("--period", choices=["year", "all"], default="year", help="one sample per chip and calendar year, or per chip")
    p.add_argument("--min-coverage", type=float, default=0.5, help="share of a cell the land cover must classify (0.5)")
    p.add_argument("--min-frames", type=int, default=1, help="drop samples with fewer usable frames")
    p.add_argument("--keep-empty-frames", action="store_true", help="keep frames without any valid pixel")
    p.add_argument("--dtype", choices=["float16", "float32", "int16"], default="float16", help="storage of x")
    p.add_argument("--seed", type=int, default=0, help="seed of the spatial split")
    p.add_argument("--strict", action="store_true", help="error on land-cover codes outside the mapping")
    p.add_argument("--overwrite", action="store_true", help="replace shards already in OUT")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``agrifm pretrain-data``."""
    a = _parser().parse_args(argv)
    sources: dict[str, str] = {}
    for v in a.source:
        name, sep, path = v.partition("=")
        if not sep:
            name, path = re.sub(r"[^A-Za-z0-9_-]", "_", Path(v).stem), v
        if name in sources:
            raise InputError(f"source {name!r} given twice")
        sources[name] = path
    names = list(sources)
    require_positive(samples_per_shard=a.samples_per_shard, split_block=a.split_block, min_frames=a.min_frames)
    for option, values in (("chip_size", a.chip_size), ("cell_size", a.cell_size), ("stride", a.stride)):
        require_positive(**{option: min(_named(values, f"--{option.replace('_', '-')}", names, int).values(), default=None)})
    with user_input():  # the dispatcher prints it (agrifm.cli.report_error)
        summary = _build_from_args(a, sources, names)
    _print_summary(summary)
    return 0


def _build_from_args(a: argparse.Namespace, sources: dict[str, str], names: list[str]) -> dict[str, Any]:
    return build_pretrain_shards(
        sources, a.landcover, a.out,
        masks=_named(a.mask, "--mask", names),
        mask_kind=a.mask_kind,
        classes=a.classes,
        bands=_named(a.bands, "--bands", names, lambda s: [b for b in s.split(",") if b]),
        chip_size=_named(a.chip_size, "--chip-size", names, int),
        cell_size=_named(a.cell_size, "--cell-size", names, int),
        stride=_named(a.stride, "--stride", names, int),
        val_fraction=a.val_fraction,
        split_block=a.split_block,
        samples_per_shard=a.samples_per_shard,
        period=a.period,
        min_coverage=a.min_coverage,
        min_frames=a.min_frames,
        keep_empty_frames=a.keep_empty_frames,
        x_dtype=a.dtype,
        seed=a.seed,
        strict=a.strict,
        overwrite=a.overwrite,
        progress=False if a.quiet else None,
    )


def _print_summary(summary: dict[str, Any]) -> None:
    print(f"shards written to {summary['out']}")
    for k, v in sorted(summary["samples"].items()):
        print(f"  samples {k}: {v}")
    for k, v in sorted(summary["skipped"].items()):
        print(f"  skipped {k}: {v}")
    if summary["unmapped_codes"]:
        print(f"  land-cover codes outside the mapping (code: pixels, treated as no-data): {summary['unmapped_codes']}")
    for split, means in summary["class_fraction_means"].items():
        print(f"  mean class fractions ({split}): " + ", ".join(f"{k} {v:.3f}" for k, v in means.items()))


if __name__ == "__main__":
    raise SystemExit(main())
