"""Sources of a scene map: matching the caller's names to the predictor's, opening the stacks,
choosing bands and frames, reading windows on the output grid as model input, checking units,
and the fingerprint of the files read."""

from __future__ import annotations

import datetime as _dt
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, Union

import numpy as np
import rasterio.warp
import torch
import torch.nn.functional as F
from rasterio.windows import Window

from agrifm.data.stack import Stack, StackArray, open_stack
from agrifm.data.tables import OBSERVED, stored_bands
from agrifm.data.timeseries import fixed_frames, prepare_source, until as frames_until
from agrifm.errors import InputError
from agrifm.predict.grid import OutputGrid, footprint, overlaps, pixel_size
from agrifm.predict.tiling import Tile

if TYPE_CHECKING:
    from agrifm.sensors import Source

__all__ = ["Predictor", "UnitsWarning", "Reader", "SourceInput", "DateLike", "open_sources", "make_readers",
           "units_problem", "check_units", "input_fingerprint"]

SourceInput = Union[str, os.PathLike, Sequence[Union[str, os.PathLike]], Stack]
DateLike = Union[str, _dt.date, np.datetime64]


class Predictor(Protocol):
    """What scene mapping runs (``agrifm.checkpoint.load_predictor`` returns one).

    ``dense``: ``{src: (B, T, C, h_src, w_src)}`` normalised, gap-filled -> probabilities
    ``(B, K, h, w)`` on the output window (other sizes are resized). ``point``: ``{src:
    (N, T, C, 1, 1)}`` -> ``(N, K)``. ``frames``: frames per source the model wants (None: all).
    """

    sources: dict[str, Source]
    class_names: list[str]
    class_colors: list[tuple[int, int, int]]
    kind: Literal["dense", "point"]
    frames: int | None

    def __call__(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor: ...


class UnitsWarning(UserWarning):
    """A source's values look like another unit than the predictor's statistics expect."""


@dataclass
class Reader:
    """One source on the output grid: reads windows and turns them into model input."""

    name: str
    stack: Stack
    source: Source
    bands: list[str] | None  # what to ask the stack for (None: its bands, already in order)
    until: np.datetime64 | None
    grid: OutputGrid
    window: int
    frames: np.ndarray | None  # indices of the frames the model sees
    dates: np.ndarray  # dates of those frames
    offset: tuple[int, int] | None = field(init=False)  # grid origin in the stack when aligned
    shape: tuple[int, int] = field(init=False)  # source pixels per output window

    def __post_init__(self) -> None:
        self.offset = self._aligned_offset()
        sx, sy = pixel_size(self.stack, self.grid.crs)
        self.shape = (max(1, round(self.window * self.grid.res[1] / sy)),
                      max(1, round(self.window * self.grid.res[0] / sx)))

    def _aligned_offset(self) -> tuple[int, int] | None:
        """Offset when the stack shares the grid's CRS, resolution and pixel corners (plain reads)."""
        s, g = self.stack.transform, self.grid.transform
        if self.stack.crs != self.grid.crs or s.b or s.d or not np.allclose(self.stack.res, self.grid.res, rtol=1e-9):
            return None
        dc, dr = (g.c - s.c) / s.a, (g.f - s.f) / s.e
        if abs(dc - round(dc)) > 1e-6 or abs(dr - round(dr)) > 1e-6:
            return None
        return round(dr), round(dc)

    def read(self, tiles: Sequence[Tile]) -> list[StackArray]:
        if self.offset is not None:
            dr, dc = self.offset
            windows = [Window(t.col + dc, t.row + dr, t.size, t.size) for t in tiles]
            return self.stack.read_many(windows, bands=self.bands, until=self.until)
        return [self.stack.read_bounds(self.grid.rect_bounds(t.rect), self.grid.crs, shape=self.shape,
                                       bands=self.bands, until=self.until) for t in tiles]

    def load(self, tiles: Sequence[Tile]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(inputs (B, T, C, h, w), valid (B, window, window) bool on the output grid)``."""
        xs, valid = [], []
        for a in self.read(tiles):
            data, ok = a.data, a.valid
            if OBSERVED in self.source.bands:  # derived, as SeriesTable.with_observed does for tables
                seen = ok & np.isfinite(data).any(axis=1)
                data = np.insert(data, self.source.bands.index(OBSERVED), seen.astype(data.dtype), axis=1)
                ok = None  # data is NaN exactly where invalid; a mask would blank the band's zeros too
            x, nodata = prepare_source(data, ok, self.source, frames=self.frames, dates=a.dates)
            xs.append(x)
            valid.append(~nodata)
        v = torch.stack(valid)[:, None].float()
        v = F.interpolate(v, size=(self.window, self.window), mode="nearest")[:, 0] > 0.5
        return torch.stack(xs), v

    def sample_values(self, size: int = 128, at: tuple[float, float] = (0.5, 0.5)) -> np.ndarray:
        """Finite values of a ``size``-px native window at ``at`` (fractions of x, y; default the
        centre) of the mapped area."""
        l, b, r, t = self.grid.bounds
        sl, sb, sr, st = footprint(self.stack, self.grid.crs)
        cx = max(l, sl) + at[0] * (min(r, sr) - max(l, sl))
        cy = max(b, sb) + at[1] * (min(t, st) - max(b, sb))
        (x,), (y,) = rasterio.warp.transform(self.grid.crs, self.stack.crs, [cx], [cy])
        col, row = ~self.stack.transform @ (x, y)
        w = Window(int(col) - size // 2, int(row) - size // 2, size, size)
        data = self.stack.read(w, bands=self.bands, until=self.until).data
        return data[np.isfinite(data)]


def _canonical_names(predictor: Predictor, names: Sequence[str]) -> dict[str, str]:
    """Given name -> predictor source name (exact, case-insensitive or alias); errors name both sides."""
    lookup: dict[str, str] = {}
    for key, src in predictor.sources.items():
        for alias in (key, src.name, *src.aliases):
            lookup.setdefault(alias.lower(), key)
    out = {}
    for n in names:
        if n.lower() not in lookup:
            raise InputError(f"unknown source {n!r}: this predictor takes {list(predictor.sources)}")
        twice = [g for g, k in out.items() if k == lookup[n.lower()]]
        if twice:
            raise InputError(f"sources {twice[0]!r} and {n!r} both name the predictor's {lookup[n.lower()]!r}")
        out[n] = lookup[n.lower()]
    missing = [k for k in predictor.sources if k not in out.values()]
    if missing:
        raise InputError(f"missing source(s) {missing}: this predictor needs {list(predictor.sources)} "
                         f"(got {list(names)}; pass --source NAME=PATH for each)")
    return out


def _open(name: str, value: SourceInput, source: Source, band_map: Mapping[str, str] | None) -> Stack:
    if isinstance(value, Stack):
        return value
    try:
        return open_stack(value, bands=stored_bands(source.bands), band_map=dict(band_map or {}) or None)
    except (ValueError, FileNotFoundError) as e:
        raise type(e)(f"source {name!r}: {e}") from e


def _band_selection(name: str, stack: Stack, source: Source, band_map: Mapping[str, str] | None) -> list[str] | None:
    """Stack band names to read, in the source's order (None when the stack already matches)."""
    wanted = stored_bands(source.bands)
    if list(stack.bands) == wanted:
        return None
    stored = [b if b in stack.bands else (band_map or {}).get(b, b) for b in wanted]
    missing = [b for b, s in zip(wanted, stored) if s not in stack.bands]
    if missing:
        raise InputError(
            f"source {name!r} ({stack.path}): bands {missing} of the predictor's {wanted} are "
            f"not in the stack's {list(stack.bands)}; substitute with band_map (--band-map {name}:{missing[0]}=OTHER)")
    return stored


def open_sources(predictor: Predictor, sources: Mapping[str, SourceInput],
                 band_map: Mapping[str, Mapping[str, str]] | None) -> tuple[dict[str, Stack], dict[str, Mapping[str, str]]]:
    """``(stacks, band maps)`` keyed by the predictor's source names, in the model's order."""
    names = _canonical_names(predictor, list(sources))
    by_alias = {alias.lower(): key for key, src in predictor.sources.items() for alias in (key, src.name, *src.aliases)}
    unknown = [k for k in band_map or {} if names.get(k, by_alias.get(k.lower())) not in set(names.values())]
    if unknown:
        raise InputError(f"--band-map {unknown[0]}: not a source of this run ({list(sources)}); "
                         "a band map names a --source")
    maps = {names.get(k, by_alias.get(k.lower(), k)): v for k, v in (band_map or {}).items()}
    stacks = {names[n]: _open(names[n], v, predictor.sources[names[n]], maps.get(names[n]))
              for n, v in sources.items()}
    return {k: stacks[k] for k in predictor.sources}, maps


def make_readers(predictor: Predictor, stacks: Mapping[str, Stack], grid: OutputGrid, window: int,
                  until: np.datetime64 | None, band_map: Mapping[str, Mapping[str, str]]) -> list[Reader]:
    readers = []
    for name, stack in stacks.items():
        source = predictor.sources[name]
        if not overlaps(footprint(stack, grid.crs), grid.bounds):
            raise InputError(f"source {name!r} ({stack.path}) covers {tuple(round(v, 3) for v in stack.bounds)} "
                             f"in {stack.crs}, which does not overlap the output area {grid.bounds} in {grid.crs}")
        dates = stack.dates if until is None else stack.dates[
            frames_until(stack.dates, until, what=f"source {name!r} ({stack.path})")]
        frames = fixed_frames(len(dates), predictor.frames) if predictor.frames else None
        if frames is not None and predictor.kind == "point" and len(dates) < predictor.frames:
            # A point model trained on a table holds a cut season's last frame (TableDataset's
            # ``hold``); spreading the frames over the grid would misplace them in the season.
            frames = np.minimum(np.arange(predictor.frames), len(dates) - 1)
        readers.append(Reader(name, stack, source, _band_selection(name, stack, source, band_map.get(name)),
                               until, grid, window, frames, dates if frames is None else dates[frames]))
    return readers


def units_problem(values: np.ndarray, source: Source) -> str | None:
    """Why ``values`` look like another unit than ``source.valid_range`` (None when plausible)."""
    if source.valid_range is None or values.size == 0:
        return None
    lo, hi = source.valid_range
    span = hi - lo
    p_lo, p_hi = (float(v) for v in np.percentile(values, [0.5, 99.5]))
    outside = float(np.mean((values < lo - 0.05 * span) | (values > hi + 0.05 * span)))
    if outside > 0.01:
        return f"{100 * outside:.0f} % of the values lie outside {lo:g}..{hi:g}"
    if p_hi - p_lo < span / 200:
        return f"the values span only {p_hi - p_lo:.3g}, under 0.5 % of the expected {lo:g}..{hi:g}"
    return None


def check_units(reader: Reader) -> None:
    values = reader.sample_values()
    if values.size > 1 and float(values.min()) == float(values.max()) and all(  # constant beyond the centre too
            float(v.min()) == float(values[0]) == float(v.max())
            for v in (reader.sample_values(32, at) for at in ((0.2, 0.2), (0.8, 0.2), (0.2, 0.8), (0.8, 0.8)))
            if v.size):
        raise InputError(f"source {reader.name!r} ({reader.stack.path}): every sampled value is {float(values[0]):g} "
                         "(all bands and dates): a constant cube holds nothing to map; is nodata declared?")
    why = units_problem(values, reader.source)
    if why:
        p_lo, p_hi = np.percentile(values, [0.5, 99.5])
        warnings.warn(
            f"source {reader.name!r} ({reader.stack.path}): sampled values {p_lo:.4g}..{p_hi:.4g} (0.5-99.5 %) "
            f"but the predictor expects {reader.source.units!r} in {reader.source.valid_range}: {why}. "
            "Wrong unit (digital numbers vs reflectance, scale factor)? The map would be meaningless.",
            UnitsWarning, stacklevel=3)



def input_fingerprint(stacks: Mapping[str, Stack]) -> dict[str, list[list[Any]]]:
    """Per source, ``[path, size, mtime_ns]`` of every file read: a block folder made from other
    (or since modified) files is not reused."""
    out: dict[str, list[list[Any]]] = {}
    for name, stack in stacks.items():
        refs = [r for row in getattr(stack, "_refs", []) for r in row] + list(getattr(stack, "_mask", None) or [])
        files = sorted({str(r[0].path) for r in refs})
        rows = []
        for f in files:
            try:
                st = os.stat(f)
                rows.append([f, st.st_size, st.st_mtime_ns])
            except OSError:
                rows.append([f, None, None])
        out[name] = rows
    return out

