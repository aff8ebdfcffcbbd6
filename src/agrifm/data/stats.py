"""Per-band normalisation statistics over valid values only, computed in one streaming pass.

Works on H5 sample folders, long tables, GeoTIFF stacks and any iterable of arrays; only
per-band running moments are kept (Chan et al.'s parallel merge of count, mean and M2), so
datasets larger than memory are fine. ``agrifm stats PATH`` is the command-line front end.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np

from agrifm.data.h5 import h5_sources, read_h5_sample, sample_paths
from agrifm.data.tables import SeriesTable, read_table
from agrifm.io import atomic_output
from agrifm.sensors import get_source
from agrifm.errors import InputError, OutputExistsError, user_input

__all__ = ["BandStats", "RunningStats", "band_stats", "compute_stats", "main"]

PathLike = Union[str, os.PathLike]
ArrayLike = Union[np.ndarray, tuple[np.ndarray, np.ndarray]]  # data, or (data, valid)
TABLE_SUFFIXES = (".csv", ".parquet", ".pq")
RASTER_SUFFIXES = (".tif", ".tiff")


@dataclass
class BandStats:
    """Mean, population std (ddof 0, as ``numpy.nanstd``) and valid-value count per band."""

    bands: list[str]
    mean: np.ndarray
    std: np.ndarray
    count: np.ndarray

    def to_dict(self) -> dict[str, list[Any]]:
        return {"bands": list(self.bands), "mean": self.mean.tolist(), "std": self.std.tolist(),
                "count": self.count.tolist()}

    def write_json(self, path: PathLike) -> Path:
        """Write ``{"bands", "mean", "std", "count"}`` atomically."""
        with atomic_output(path) as tmp:
            tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return Path(path)

    def table(self) -> str:
        width = max(4, *(len(b) for b in self.bands))
        rows = [f"{'band':<{width}}  {'mean':>14}  {'std':>14}  {'count':>12}"]
        rows += [f"{b:<{width}}  {m:>14.6g}  {s:>14.6g}  {n:>12d}"
                 for b, m, s, n in zip(self.bands, self.mean, self.std, self.count)]
        return "\n".join(rows)


class RunningStats:
    """Streaming per-band moments; :meth:`update` with chunks, :meth:`result` at the end."""

    def __init__(self, num_bands: int) -> None:
        self.count = np.zeros(num_bands, dtype=np.int64)
        self.mean = np.zeros(num_bands, dtype=np.float64)
        self.m2 = np.zeros(num_bands, dtype=np.float64)

    def update(self, data: np.ndarray, valid: np.ndarray | None = None, *, axis: int = 1,
               what: str = "data") -> None:
        """Add a chunk; ``axis`` is its band axis, ``valid`` its shape without that axis.

        Non-finite values and values where ``valid`` is False are skipped.
        """
        x = np.asarray(data)
        if x.ndim == 0 or x.shape[axis] != len(self.count):
            raise InputError(f"{what}: shape {x.shape} has no {len(self.count)} bands on axis {axis}")
        ok = np.isfinite(x)
        if valid is not None:
            ok &= np.expand_dims(np.asarray(valid, dtype=bool), axis)
        x = np.moveaxis(x, axis, 0).reshape(len(self.count), -1).astype(np.float64)
        ok = np.moveaxis(ok, axis, 0).reshape(x.shape)
        n = ok.sum(axis=1)
        mean = np.where(ok, x, 0.0).sum(axis=1) / np.maximum(n, 1)
        m2 = np.where(ok, (x - mean[:, None]) ** 2, 0.0).sum(axis=1)
        total = self.count + n
        delta = mean - self.mean
        share = np.divide(n, total, out=np.zeros_like(self.mean), where=total > 0)
        self.mean += delta * share
        self.m2 += m2 + delta**2 * self.count * share
        self.count = total

    def result(self, bands: Sequence[str]) -> BandStats:
        """Final statistics; a band without any valid value is an error naming it."""
        empty = [b for b, n in zip(bands, self.count) if n == 0]
        if empty:
            raise InputError(f"no valid value for band(s) {empty}")
        return BandStats(list(bands), self.mean.copy(), np.sqrt(self.m2 / self.count), self.count.copy())


# --------------------------------------------------------------------------- inputs


def _accumulate(chunks: Iterable[ArrayLike], axis: int, names: Sequence[str] | None = None) -> BandStats:
    """Stream ``data`` or ``(data, valid)`` chunks; ``names`` default to ``band_<i>``."""
    stats: RunningStats | None = None
    for i, chunk in enumerate(chunks):
        data, valid = chunk if isinstance(chunk, tuple) else (chunk, None)
        data = np.asarray(data)
        if stats is None:
            stats = RunningStats(data.shape[axis])
        stats.update(data, valid, axis=axis, what=f"chunk {i}")
    if stats is None:
        raise InputError("no data to compute statistics on")
    return stats.result(names or [f"band_{i}" for i in range(len(stats.count))])


def _of_table(table: SeriesTable, bands: Sequence[str] | None) -> BandStats:
    missing = [b for b in bands or () if b not in table.bands]
    if missing:
        raise InputError(f"{table.path}: band(s) {missing} not in the table's bands {list(table.bands)}")
    columns = [table.bands.index(b) for b in bands] if bands else list(range(len(table.bands)))
    return _accumulate([table.values[..., columns]], axis=-1, names=[table.bands[c] for c in columns])


def _pick_source(files: list[Path], source: str | None) -> str:
    """The H5 dataset to use: ``source``, else the only 4-D dataset, else ``S2``."""
    found = h5_sources(files[0])
    if source is None:
        source = next(iter(found)) if len(found) == 1 else "S2" if "S2" in found else None
        if source is None:
            raise InputError(f"{files[0]} holds sources {sorted(found)}: choose one with --source")
    return source


def _of_h5(root: Path, source: str | None, bands: Sequence[str] | None, split: Any) -> BandStats:
    files = sample_paths(root, split)
    key = _pick_source(files, source)
    names: list[str] = list(bands or [])

    def chunks() -> Iterable[np.ndarray]:
        for f in files:
            sample = read_h5_sample(f, [key], bands={key: bands} if bands else None, label_key=None)
            names[:] = sample.bands[key] or names  # read by _accumulate after the stream ends
            yield sample.inputs[key]

    return _accumulate(chunks(), axis=1, names=names)


def _of_stack(path: Path, bands: Sequence[str] | None, block_rows: int = 256) -> BandStats:
    from rasterio.windows import Window

    from agrifm.data.stack import open_stack

    stack = open_stack(path, bands=bands)
    blocks = (stack.read(Window(0, r, stack.width, min(block_rows, stack.height - r)))
              for r in range(0, stack.height, block_rows))
    return _accumulate(((a.data, a.valid) for a in blocks), axis=1, names=stack.bands)


def _is_h5(path: Path) -> bool:
    return path.suffix == ".h5" or (path.is_dir() and ((path / "h5_samples").is_dir() or any(path.glob("*.h5"))))


def band_stats(
    data: PathLike | SeriesTable | np.ndarray | Iterable[ArrayLike],
    *,
    source: str | None = None,
    bands: Sequence[str] | None = None,
    split: Any = None,
    axis: int = 1,
) -> BandStats:
    """Statistics of a dataset-like input over its valid values.

    ``data``: a table file (.csv/.parquet) or :class:`SeriesTable`; an H5 dataset folder or
    file (``source`` = dataset key, ``split`` as in :func:`agrifm.data.h5.sample_paths`); a
    GeoTIFF folder/file (``bands`` as in ``open_stack``); an array, a ``(data, valid)`` pair,
    or an iterable of either, with bands on ``axis``. ``bands`` selects and orders bands.
    """
    if isinstance(data, SeriesTable):
        return _of_table(data, bands)
    if isinstance(data, (str, os.PathLike)):
        path = Path(data)
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist")
        if path.suffix.lower() in TABLE_SUFFIXES:
            return _of_table(read_table(path), bands)
        if _is_h5(path):
            return _of_h5(path.parent if path.is_file() else path, source,
                          bands, [path.stem] if path.is_file() else split)
        if path.suffix.lower() in RASTER_SUFFIXES or path.is_dir():
            return _of_stack(path, bands)
        raise InputError(f"{path}: not a table (.csv/.parquet), H5 sample(s) or GeoTIFF stack")
    if isinstance(data, (np.ndarray, tuple)):  # one array or one (data, valid) pair
        data = [data]
    return _accumulate(data, axis, bands)


def compute_stats(data: Any, **kwargs: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(mean, std)`` per band of :func:`band_stats` (what :meth:`Source.with_stats` takes)."""
    s = band_stats(data, **kwargs)
    return s.mean, s.std


# --------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="agrifm stats", description=(
        "Per-band mean/std over valid values of a table (.csv/.parquet), an H5 sample folder "
        "or a GeoTIFF stack; prints a table and optionally writes JSON."))
    p.add_argument("path", help="table file, H5 dataset folder/file, or GeoTIFF folder/file")
    p.add_argument("--source", help="H5 dataset key (e.g. S2); a registered source also sets the band order")
    p.add_argument("--bands", nargs="+", help="bands to use, in this order")
    p.add_argument("--split", help="H5 split name (train) or split list file")
    p.add_argument("--json", dest="json_out", help="write {bands, mean, std, count} here")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.json_out:  # refused before the (possibly long) pass over the data
        out = Path(args.json_out)
        if out.is_dir():
            raise InputError(f"--json {out} is a folder; give a file name")
        if out.exists() and not args.overwrite:
            raise OutputExistsError(f"--json {out} exists; pass --overwrite to replace it")
        if not out.parent.is_dir():
            raise FileNotFoundError(f"--json {out}: output folder {out.parent} does not exist")
    bands = args.bands
    if bands is None and args.source is not None and Path(args.path).suffix.lower() not in TABLE_SUFFIXES:
        try:  # a registered source: statistics in its band order, ready for Source.with_stats
            bands = list(get_source(args.source).bands)
        except KeyError:
            pass
    with user_input(args.path):
        stats = band_stats(args.path, source=args.source, bands=bands, split=args.split)
    print(stats.table())
    if args.json_out:
        print(f"wrote {stats.write_json(args.json_out)}")
    return 0
