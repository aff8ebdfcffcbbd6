"""Outputs of a scene map: their paths and checks, and assembling the COGs and quicklook from a
complete block folder."""

from __future__ import annotations

import datetime as _dt
import logging
import os
from collections.abc import Mapping
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from agrifm.errors import InputError, OutputExistsError
from agrifm.predict.blocks import BlockStore
from agrifm.predict.cog import NODATA, CogWriter, encode_layers, layer_meta
from agrifm.predict.grid import OutputGrid
from agrifm.predict.tiling import Accumulator, Block, Rect, TileGrid

__all__ = ["NothingMappedError", "assemble", "assemble_with_area", "output_paths", "check_outputs"]

log = logging.getLogger(__name__)


class NothingMappedError(InputError):
    """No output pixel had valid data in every source: no map is written."""


def output_paths(out: str | os.PathLike[str], probabilities: bool, quicklook: bool = True) -> dict[str, Path]:
    """Files of one map: ``map`` (MAP.tif), ``probs`` (MAP_probs.tif), ``confidence``, ``quicklook``."""
    out = Path(out)
    paths = {"map": out}
    if probabilities:
        paths["probs"] = out.with_name(f"{out.stem}_probs{out.suffix}")
        paths["confidence"] = out.with_name(f"{out.stem}_confidence{out.suffix}")
    if quicklook:
        paths["quicklook"] = out.with_suffix(".png")
    return paths


def check_outputs(paths: Mapping[str, Path], overwrite: bool) -> None:
    out = paths["map"]
    if out.suffix.lower() not in (".tif", ".tiff"):  # MAP.png would be the quicklook's name
        raise InputError(f"--out {out}: the map is a GeoTIFF; give a name ending in .tif")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"output folder {out.parent} does not exist")
    if not os.access(out.parent, os.W_OK | os.X_OK):
        raise PermissionError(13, "Permission denied (output folder not writable)", str(out.parent))
    for p in paths.values():
        if p.is_dir():
            raise IsADirectoryError(21, "Is a directory (an output file's name)", str(p))
    if not overwrite:
        for p in paths.values():
            if p.exists():
                raise OutputExistsError(f"{p} exists; pass overwrite=True (--overwrite) to replace it")


def _assemble_block(store: BlockStore, tg: TileGrid, block: Block, k: int, with_probs: bool) -> dict[str, np.ndarray]:
    """Final layers of ``block``: its core as stored, the rest completed from the neighbours' spill."""
    acc = Accumulator(block.rect, k)
    for nb in tg.neighbours(block):
        for part in store.load_parts(nb):
            acc.add_partial(part)
    layers = encode_layers(*acc.result(), with_probs)
    core, stored = store.load_core(block)
    if not core.empty:
        rows, cols = block.rect.slices(core)
        for name, a in stored.items():
            layers[name][..., rows, cols] = a
    return layers


def _can_plot() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        log.warning("matplotlib is not installed: no quicklook PNG (pip install matplotlib)")
        return False
    return True


def assemble(block_dir: str | os.PathLike[str], out: str | os.PathLike[str], *, overwrite: bool = False,
             quicklook: bool = True) -> dict[str, Path]:
    """Build the COG(s) and quicklook from a complete block folder; returns the written paths.

    Sidecars are published first and the class map last, so an existing map means a
    complete product. A folder whose blocks hold no mapped pixel is refused
    (:class:`NothingMappedError`): no map is written.
    """
    return assemble_with_area(block_dir, out, overwrite=overwrite, quicklook=quicklook)[0]


def assemble_with_area(block_dir: str | os.PathLike[str], out: str | os.PathLike[str], *, overwrite: bool,
              quicklook: bool) -> tuple[dict[str, Path], float]:
    """:func:`assemble`, also returning the mapped (not nodata) area in km2."""
    from agrifm.predict.quicklook import write_quicklook

    store = BlockStore(block_dir)
    m = store.manifest()
    grid = OutputGrid.from_json(m["grid"])
    tg = TileGrid(grid.height, grid.width, m["window"], m["overlap"], m["block"])
    missing = [b.index for b in tg.blocks if not store.done(b)]
    if missing:
        raise InputError(f"block folder {store.root}: {len(missing)} of {len(tg.blocks)} blocks missing "
                           f"(first {missing[:5]}); run the remaining ranks or rerun predict to finish them")
    quicklook = quicklook and _can_plot()
    paths = output_paths(out, m["probabilities"], quicklook)
    check_outputs(paths, overwrite)
    tags = {**m["tags"], "CREATED": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    layers = [name for name in ("map", "probs", "confidence") if name in paths]
    common = dict(width=grid.width, height=grid.height, crs=grid.crs, transform=grid.transform)
    with ExitStack() as es:
        writers = {n: es.enter_context(CogWriter(paths[n], **common, **layer_meta(
            n, m["class_names"], m["class_colors"], tags))) for n in layers}
        mapped = 0
        for block in tg.blocks:
            arrays = _assemble_block(store, tg, block, len(m["class_names"]), m["probabilities"])
            mapped += int(np.count_nonzero(arrays["map"] != NODATA))
            for name, w in writers.items():
                w.write(arrays[name], block.rect.row0, block.rect.col0)
        if not mapped:  # before anything is published: no file claims a mapped area
            raise NothingMappedError(
                f"no pixel of the output area {grid.width}x{grid.height} px has valid data in every source "
                f"({', '.join(m['tags'].get('SOURCES', {})) or 'sources'}): nothing to map, no map written "
                "(all nodata/NaN, masked, or outside --bounds/--until-date?)")
        tmp_map = {n: w.finish() for n, w in writers.items()}["map"]
        for name in layers[1:]:
            writers[name].commit()
        if quicklook:
            write_quicklook(tmp_map, paths["quicklook"], class_names=m["class_names"],
                            class_colors=m["class_colors"], title=Path(out).stem, subtitle=m.get("subtitle"))
        writers["map"].commit()
    if overwrite:  # sidecars of the replaced map that this run did not write would now lie
        for stale in set(output_paths(out, True, True).values()) - set(paths.values()):
            stale.unlink(missing_ok=True)
    return paths, mapped * grid.area_km2(Rect(0, 0, 1, 1))

