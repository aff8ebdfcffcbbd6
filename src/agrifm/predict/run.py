"""Map a scene: :func:`predict_scene` with its :class:`PredictSettings`, and what one call did.

Flow: the output grid is the finest source's grid (or the caller's CRS/resolution/bounds,
:mod:`agrifm.predict.grid`); each source is read over the same geographic window at its own
resolution and turned into a normalised, gap-filled tensor (:mod:`agrifm.predict.sources`); the
predictor's probabilities are blended with :mod:`agrifm.predict.tiling`'s weights per output block
(:mod:`agrifm.predict.loop`); each finished block goes to an atomic file in ``block_dir``
(:mod:`agrifm.predict.blocks`, so a killed run resumes and ranks share the work); the process that
completes the set assembles the COGs (:mod:`agrifm.predict.assemble`). Mapping never loads
models: it takes any object satisfying :class:`~agrifm.predict.sources.Predictor`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agrifm.errors import InputError
from agrifm.predict.assemble import NothingMappedError, assemble_with_area, check_outputs, output_paths
from agrifm.predict.blocks import BlockStore
from agrifm.predict.checks import check_memory, check_options, check_predictor, resolve_device
from agrifm.predict.grid import OutputGrid, check_grid_size, output_grid
from agrifm.predict.loop import Dated, predictor_device, run_blocks
from agrifm.predict.sources import (DateLike, Predictor, Reader, SourceInput, check_units, input_fingerprint,
                                    make_readers, open_sources)
from agrifm.predict.tiling import TileGrid
from agrifm.runtime import rank_world

__all__ = ["PredictSettings", "PredictResult", "predict_scene"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PredictSettings:
    """How to map a scene (every option of :func:`predict_scene` but its predictor, sources and output)."""

    window: int = 256  # output px per model window
    overlap: int = 32  # px blended between neighbouring windows (0 for point predictors)
    batch_size: int = 4  # windows per model call
    probabilities: bool = False  # also write MAP_probs.tif and MAP_confidence.tif
    until: DateLike | None = None  # only frames on or before this date (early-season mapping)
    resolution: float | Sequence[float] | None = None  # output pixel size (default: the finest source's)
    crs: Any = None  # output CRS (default: the finest source's)
    bounds: Sequence[float] | None = None  # output area (left, bottom, right, top) in ``crs``
    band_map: Mapping[str, Mapping[str, str]] | None = None  # source -> {predictor band: stack band}
    overwrite: bool = False  # replace existing outputs
    device: str | torch.device | None = None  # default: the predictor's
    provenance: Mapping[str, Any] | None = None  # extra GeoTIFF tags (keys upper-cased)
    rank: int | None = None  # default: torch.distributed, else RANK
    world_size: int | None = None  # default: torch.distributed, else WORLD_SIZE
    block_dir: str | os.PathLike[str] | None = None  # default: .<MAP>.blocks beside the map, removed after success
    block_size: int = 2048  # output px per block (rounded to the stride): bounds the memory
    point_batch: int = 16384  # pixels per call of a point predictor
    quicklook: bool = True  # also write MAP.png
    finalize: bool = True  # the process completing the last block assembles the outputs
    progress: bool = True  # progress bar


@dataclass
class PredictResult:
    """What one call did; ``outputs`` is empty on a rank that did not assemble."""

    outputs: dict[str, Path]
    block_dir: Path
    blocks_run: int
    blocks_skipped: int
    windows: int
    seconds: float
    area_km2: float  # of the blocks this call ran (nodata included): the work done
    grid: OutputGrid = field(repr=False)
    mapped_km2: float = math.nan  # of the map's pixels that are not nodata (NaN when this call did not assemble)


def _provenance_tags(readers: Sequence[Reader], band_maps: Mapping[str, Mapping[str, str]],
                     until: np.datetime64 | None, tg: TileGrid, kind: str,
                     provenance: Mapping[str, Any] | None) -> dict[str, Any]:
    """GeoTIFF tags saying how the map was made (the caller's provenance keys upper-cased)."""
    from agrifm import __version__

    return {
        "SOFTWARE": f"agrifm {__version__}",
        "SOURCES": {r.name: {"path": str(r.stack.path), "bands": r.bands or list(r.stack.bands),
                             "band_map": dict(band_maps.get(r.name) or {})} for r in readers},
        "DATES": {r.name: [str(d) for d in r.dates] for r in readers},
        "UNTIL": None if until is None else str(until),
        "WINDOW": tg.window, "OVERLAP": tg.overlap, "PREDICTOR_KIND": kind,
        **{str(k).upper(): v for k, v in (provenance or {}).items()},
    }


def _subtitle(readers: Sequence[Reader]) -> str:
    """'S2 2020-11-01..2021-10-01 (12 frames)' per source, for the quicklook."""
    return "; ".join(f"{r.name} {r.dates[0]}..{r.dates[-1]} ({len(r.dates)} frames)" for r in readers)

def predict_scene(predictor: Predictor, sources: Mapping[str, SourceInput], out: str | os.PathLike[str],
                  settings: PredictSettings | None = None, **overrides: Any) -> PredictResult:
    """Map a scene: ``sources`` (name -> stack folder/files or an open Stack) -> ``out`` COG.

    Options come from ``settings`` (:class:`PredictSettings`), each overridden by a keyword of
    the same name (``predict_scene(p, sources, out, window=128)``); an unknown keyword is a
    TypeError. Point predictors run per pixel (``overlap`` is then 0: nothing to blend). Blocks
    of ``block_size`` px (rounded to the stride) bound the memory; they are saved in
    ``block_dir`` (default ``.<MAP>.blocks`` beside the map, removed after success), so a
    rerun skips finished ones, and ranks (``rank``/``world_size``, default torch.distributed
    or ``RANK``/``WORLD_SIZE``) share them. The process that completes the last block
    assembles the outputs unless ``finalize=False`` (then call :func:`~agrifm.predict.assemble.assemble`).
    """
    s = dataclasses.replace(settings or PredictSettings(), **overrides)
    t0 = time.perf_counter()
    out = Path(out)
    try:
        rank, world_size = rank_world(s.rank, s.world_size)
    except ValueError as e:
        raise InputError(str(e)) from None
    check_predictor(predictor)
    overlap = 0 if predictor.kind == "point" else s.overlap
    check_options(s.window, overlap, s.batch_size, s.block_size, s.point_batch)
    check_outputs(output_paths(out, s.probabilities, s.quicklook), s.overwrite)
    device = resolve_device(s.device)
    try:
        day = None if s.until is None else np.datetime64(s.until, "D")
    except (ValueError, TypeError) as e:
        raise InputError(f"--until-date {s.until!r} is not a date YYYY-MM-DD ({e})") from None
    stacks, maps = open_sources(predictor, sources, s.band_map)
    grid = output_grid(stacks, crs=s.crs, resolution=s.resolution, bounds=s.bounds)
    check_grid_size(grid, stacks, s.resolution)
    tg = TileGrid(grid.height, grid.width, s.window, overlap, s.block_size)
    readers = make_readers(predictor, stacks, grid, s.window, day, maps)
    check_memory(readers, tg, len(predictor.class_names), s.batch_size)
    if getattr(predictor, "uses_dates", False):
        predictor = Dated(predictor, {r.name: r.dates for r in readers})
    if rank == 0:
        for r in readers:
            check_units(r)

    default_dir = s.block_dir is None
    store = BlockStore(out.parent / f".{out.name}.blocks" if default_dir else s.block_dir)
    tags = _provenance_tags(readers, maps, day, tg, predictor.kind, s.provenance)
    fresh = not store.root.exists()
    store.init({"grid": grid.to_json(), "window": s.window, "overlap": overlap, "block": s.block_size,
                "kind": predictor.kind, "class_names": list(predictor.class_names),
                "class_colors": [list(c) for c in predictor.class_colors], "probabilities": s.probabilities,
                "tags": tags, "subtitle": _subtitle(readers), "inputs": input_fingerprint(stacks)},
               restart=default_dir and world_size == 1)  # ranks sharing a folder never delete each other's blocks

    mine = tg.blocks[rank::world_size]
    todo = [b for b in mine if not store.check(b)]
    if len(todo) < len(mine):
        log.info("%s: %d of %d blocks already done, skipping them", store.root, len(mine) - len(todo), len(mine))
    try:
        windows = run_blocks(predictor, readers, tg, todo, store, batch_size=s.batch_size,
                             probabilities=s.probabilities, device=predictor_device(predictor, device),
                             point_batch=s.point_batch, progress=s.progress)
    except BaseException:
        if default_dir and fresh and not store.blocks():  # nothing to resume: leave no hidden folder behind
            shutil.rmtree(store.root, ignore_errors=True)
        raise
    store.mark_rank(rank, world_size)

    outputs: dict[str, Path] = {}
    mapped_km2 = math.nan
    if s.finalize and all(store.done(b) for b in tg.blocks):
        if world_size == 1 or store.try_lock():  # among ranks, the first to see all blocks assembles
            try:
                outputs, mapped_km2 = assemble_with_area(store.root, out, overwrite=s.overwrite,
                                                         quicklook=s.quicklook)
            except NothingMappedError:
                if default_dir:  # all-nodata blocks are worth nothing to a rerun
                    shutil.rmtree(store.root, ignore_errors=True)
                raise
            finally:
                store.unlock()
            if default_dir:
                shutil.rmtree(store.root, ignore_errors=True)
        else:
            log.warning("%s is locked: another rank is assembling %s (or one died doing so: then run "
                        "assemble(%r, %r))", store.root, out, str(store.root), str(out))
    return PredictResult(outputs, store.root, len(todo), len(mine) - len(todo), windows,
                         time.perf_counter() - t0, sum(grid.area_km2(b.rect) for b in todo), grid, mapped_km2)
