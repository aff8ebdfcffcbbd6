"""Scene inference: read sources window by window, run a predictor, blend, write COGs.

Flow: the output grid is the finest source's grid (or the caller's CRS/resolution/bounds);
each source is read over the same geographic window at its own resolution and turned into
a normalised, gap-filled tensor (``agrifm.data.timeseries.prepare_source``); the predictor's
probabilities are blended with :mod:`agrifm.predict.tiling`'s weights per output block; each
finished block goes to an atomic file in ``block_dir`` (so a killed run resumes and ranks
share the work); the process that completes the set assembles the COGs (:func:`assemble`).
The engine never loads models: it takes any object satisfying :class:`Predictor`.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import os
import shutil
import time
import warnings
import zipfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar, Union

import numpy as np
import rasterio
import rasterio.errors
import rasterio.warp
import torch
import torch.nn.functional as F
from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window

from agrifm.data.stack import Stack, StackArray, open_stack
from agrifm.data.timeseries import days_since_epoch, fixed_frames, prepare_source
from agrifm.io import atomic_output, write_text_atomic
from agrifm.predict.cog import NODATA, CogWriter, class_map_meta, encode_layers, layer_meta
from agrifm.predict.tiling import Accumulator, Block, Partial, Rect, Tile, TileGrid, blend_weights, ring
from agrifm.errors import InputError, OutputExistsError, TooLargeError, require_positive

if TYPE_CHECKING:
    from agrifm.sensors import Source

__all__ = ["Predictor", "PredictResult", "OutputGrid", "UnitsWarning", "NothingMappedError", "predict_scene", "assemble",
           "output_grid", "output_paths"]

log = logging.getLogger(__name__)

SourceInput = Union[str, os.PathLike, Sequence[Union[str, os.PathLike]], Stack]
DateLike = Union[str, _dt.date, np.datetime64]
T = TypeVar("T")


class Predictor(Protocol):
    """What the engine runs (``agrifm.checkpoint.load_predictor`` returns one).

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


class NothingMappedError(InputError):
    """No output pixel had valid data in every source: no map is written."""


# --------------------------------------------------------------------------- output grid


@dataclass(frozen=True)
class OutputGrid:
    """The map's pixel grid (north-up)."""

    crs: CRS
    transform: Affine
    width: int
    height: int

    @property
    def res(self) -> tuple[float, float]:
        return abs(self.transform.a), abs(self.transform.e)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        return rasterio.windows.bounds(Window(0, 0, self.width, self.height), self.transform)

    def rect_bounds(self, rect: Rect) -> tuple[float, float, float, float]:
        return rasterio.windows.bounds(Window(rect.col0, rect.row0, rect.width, rect.height), self.transform)

    def area_km2(self, rect: Rect) -> float:
        """Area of ``rect`` (NaN on a geographic CRS)."""
        try:
            metre = self.crs.linear_units_factor[1]
        except Exception:  # CRSError: angular units
            return math.nan
        return rect.height * rect.width * self.res[0] * self.res[1] * metre**2 / 1e6

    def to_json(self) -> dict[str, Any]:
        return {"crs": self.crs.to_wkt(), "transform": list(self.transform)[:6],
                "width": self.width, "height": self.height}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "OutputGrid":
        return cls(CRS.from_wkt(d["crs"]), Affine(*d["transform"]), int(d["width"]), int(d["height"]))


def _footprint(stack: Stack, crs: CRS) -> tuple[float, float, float, float]:
    """The stack's bounds in ``crs``."""
    b = tuple(stack.bounds)
    return b if stack.crs == crs else rasterio.warp.transform_bounds(stack.crs, crs, *b, densify_pts=21)


def _pixel_size(stack: Stack, crs: CRS) -> tuple[float, float]:
    """(x, y) pixel size of ``stack`` in ``crs`` units."""
    if stack.crs == crs:
        return stack.res
    left, bottom, right, top = _footprint(stack, crs)
    return (right - left) / stack.width, (top - bottom) / stack.height


def _finest(stacks: Mapping[str, Stack]) -> str:
    common = next(iter(stacks.values())).crs
    return min(stacks, key=lambda n: math.prod(_pixel_size(stacks[n], common)))


def output_grid(stacks: Mapping[str, Stack], *, crs: Any = None, resolution: float | Sequence[float] | None = None,
                bounds: Sequence[float] | None = None) -> OutputGrid:
    """Finest source's grid, or one in ``crs`` at ``resolution`` over ``bounds`` (in ``crs``).

    In the finest source's CRS the top-left corner is snapped outwards to its pixel corners
    (at its resolution that source is then read without resampling).
    """
    name = _finest(stacks)
    ref = stacks[name]
    t = ref.transform
    if t.b or t.d:
        raise InputError(f"source {name!r} ({ref.path}) has a rotated grid; only north-up rasters are supported")
    if crs is None and resolution is None and bounds is None:
        return OutputGrid(ref.crs, t, ref.width, ref.height)
    try:
        dst = CRS.from_user_input(crs) if crs is not None else ref.crs
    except (rasterio.errors.CRSError, ValueError, TypeError) as e:
        raise InputError(f"--crs {crs!r} is not a coordinate reference system ({e})") from None
    if resolution is None:
        res = _pixel_size(ref, dst)
    else:
        res = (float(resolution),) * 2 if np.isscalar(resolution) else tuple(map(float, resolution))  # type: ignore[arg-type]
        if len(res) != 2 or not all(math.isfinite(r) and r > 0 for r in res):
            raise InputError(f"--resolution must be a positive number (or an x, y pair), got {resolution}")
    left, bottom, right, top = tuple(bounds) if bounds is not None else _footprint(ref, dst)
    if not all(math.isfinite(v) for v in (left, bottom, right, top)):
        raise InputError(f"--bounds must be finite numbers, got {(left, bottom, right, top)}")
    if right <= left or top <= bottom:
        raise InputError(f"empty output bounds {(left, bottom, right, top)} (left, bottom, right, top)")
    if dst == ref.crs:  # origin on the finest source's pixel corners
        left = t.c + math.floor((left - t.c) / t.a + 1e-6) * t.a
        top = t.f + math.floor((top - t.f) / t.e + 1e-6) * t.e
    width = math.ceil((right - left) / res[0] - 1e-6)
    height = math.ceil((top - bottom) / res[1] - 1e-6)
    return OutputGrid(dst, Affine(res[0], 0.0, left, 0.0, -res[1], top), width, height)


def _overlaps(a: Sequence[float], b: Sequence[float]) -> bool:
    return min(a[2], b[2]) > max(a[0], b[0]) and min(a[3], b[3]) > max(a[1], b[1])


# --------------------------------------------------------------------------- sources


@dataclass
class _Reader:
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
        sx, sy = _pixel_size(self.stack, self.grid.crs)
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
            x, nodata = prepare_source(a.data, a.valid, self.source, frames=self.frames, dates=a.dates)
            xs.append(x)
            valid.append(~nodata)
        v = torch.stack(valid)[:, None].float()
        v = F.interpolate(v, size=(self.window, self.window), mode="nearest")[:, 0] > 0.5
        return torch.stack(xs), v

    def sample_values(self, size: int = 128, at: tuple[float, float] = (0.5, 0.5)) -> np.ndarray:
        """Finite values of a ``size``-px native window at ``at`` (fractions of x, y; default the
        centre) of the mapped area."""
        l, b, r, t = self.grid.bounds
        sl, sb, sr, st = _footprint(self.stack, self.grid.crs)
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
        return open_stack(value, bands=list(source.bands), band_map=dict(band_map or {}) or None)
    except (ValueError, FileNotFoundError) as e:
        raise type(e)(f"source {name!r}: {e}") from e


def _band_selection(name: str, stack: Stack, source: Source, band_map: Mapping[str, str] | None) -> list[str] | None:
    """Stack band names to read, in the source's order (None when the stack already matches)."""
    if list(stack.bands) == list(source.bands):
        return None
    stored = [b if b in stack.bands else (band_map or {}).get(b, b) for b in source.bands]
    missing = [b for b, s in zip(source.bands, stored) if s not in stack.bands]
    if missing:
        raise InputError(
            f"source {name!r} ({stack.path}): bands {missing} of the predictor's {list(source.bands)} are "
            f"not in the stack's {list(stack.bands)}; substitute with band_map (--band-map {name}:{missing[0]}=OTHER)")
    return stored


def _frames_until(name: str, stack: Stack, until: np.datetime64 | None) -> np.ndarray:
    dates = stack.dates if until is None else stack.dates[stack.dates <= until]
    if not len(dates):
        raise InputError(f"source {name!r} ({stack.path}): no frame on or before {until} "
                         f"(first date {stack.dates[0]})")
    return dates


def _make_readers(predictor: Predictor, stacks: Mapping[str, Stack], grid: OutputGrid, window: int,
                  until: np.datetime64 | None, band_map: Mapping[str, Mapping[str, str]]) -> list[_Reader]:
    readers = []
    for name, stack in stacks.items():
        source = predictor.sources[name]
        if not _overlaps(_footprint(stack, grid.crs), grid.bounds):
            raise InputError(f"source {name!r} ({stack.path}) covers {tuple(round(v, 3) for v in stack.bounds)} "
                             f"in {stack.crs}, which does not overlap the output area {grid.bounds} in {grid.crs}")
        dates = _frames_until(name, stack, until)
        frames = fixed_frames(len(dates), predictor.frames) if predictor.frames else None
        readers.append(_Reader(name, stack, source, _band_selection(name, stack, source, band_map.get(name)),
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


def _check_units(reader: _Reader) -> None:
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


# --------------------------------------------------------------------------- block store


def _json_norm(d: Any) -> Any:
    return json.loads(json.dumps(d, default=str))


class BlockStore:
    """Per-block results on disk: atomic ``block_NNNNNN.npz`` files (existence = done), a
    manifest pinning the run's settings (a mismatch refuses to mix runs) and rank markers."""

    MANIFEST = "manifest.json"
    LOCK = "assemble.lock"

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def init(self, manifest: Mapping[str, Any], *, restart: bool = False) -> None:
        """Pin the run's settings and inputs; a folder of another run (other settings, or inputs
        changed since) is refused, or emptied when ``restart`` (the default hidden folder). A
        folder holding no finished block is simply reused."""
        self.root.mkdir(parents=True, exist_ok=True)
        want = _json_norm(manifest)
        path = self.root / self.MANIFEST
        if path.exists():
            try:
                have = self.manifest()
            except ValueError:  # a damaged manifest: as if it differed in everything
                have = {}
            diff = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))
            if not diff:
                return
            if not self.blocks():
                pass  # nothing finished to protect (e.g. a run that failed before its first block)
            elif restart:
                log.warning("%s: blocks of another run or of inputs changed since (differs in %s): starting afresh",
                            self.root, diff)
                for f in self.blocks():
                    f.unlink(missing_ok=True)
            else:
                raise InputError(f"block folder {self.root} holds blocks of another run or of inputs changed "
                                 f"since (differs in {diff}); delete it or pass another --block-dir")
        write_text_atomic(path, json.dumps(want, indent=1))

    def blocks(self) -> list[Path]:
        """The finished block files."""
        return sorted(self.root.glob("block_*.npz"))

    def manifest(self) -> dict[str, Any]:
        path = self.root / self.MANIFEST
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist: not a block folder of agrifm predict")
        try:
            return json.loads(path.read_text())
        except ValueError as e:
            raise InputError(f"{path} is damaged ({e}): delete the block folder {self.root} and rerun") from None

    def path(self, block: Block) -> Path:
        return self.root / f"block_{block.index:06d}.npz"

    def done(self, block: Block) -> bool:
        return self.path(block).exists()

    def save(self, block: Block, core: Rect, layers: Mapping[str, np.ndarray], parts: Sequence[Partial]) -> None:
        arrays: dict[str, np.ndarray] = {"core_rect": np.array(_rect_tuple(core))}
        arrays.update({f"core_{k}": v for k, v in layers.items()})
        for i, p in enumerate(parts):
            arrays.update({f"part{i}_rect": np.array(_rect_tuple(p.rect)), f"part{i}_num": p.num,
                           f"part{i}_den": p.den, f"part{i}_valid": p.valid})
        with atomic_output(self.path(block), suffix=".tmp.npz") as tmp:
            np.savez(tmp, **arrays)

    def load_core(self, block: Block) -> tuple[Rect, dict[str, np.ndarray]]:
        with self._open(block) as z:
            layers = {k[5:]: z[k] for k in z.files if k.startswith("core_") and k != "core_rect"}
            return Rect(*z["core_rect"].tolist()), layers

    def load_parts(self, block: Block) -> list[Partial]:
        with self._open(block) as z:
            n = sum(1 for k in z.files if k.endswith("_rect") and k.startswith("part"))
            return [Partial(Rect(*z[f"part{i}_rect"].tolist()), z[f"part{i}_num"], z[f"part{i}_den"],
                            z[f"part{i}_valid"]) for i in range(n)]

    @contextmanager
    def _open(self, block: Block) -> Iterator[Any]:
        """The block's arrays; a damaged file (bit rot, a full disk) is removed and named."""
        path = self.path(block)
        try:
            with np.load(path) as z:
                yield z
        except (zipfile.BadZipFile, EOFError, KeyError, ValueError, OSError) as e:
            if isinstance(e, FileNotFoundError):
                raise
            path.unlink(missing_ok=True)
            raise InputError(f"block file {path} is damaged ({type(e).__name__}: {e}); it was removed: "
                             "rerun the same predict command to redo that block") from None

    def check(self, block: Block) -> bool:
        """Whether ``block`` is done and its file readable (a damaged one is removed and redone)."""
        path = self.path(block)
        if not path.exists():
            return False
        try:
            with zipfile.ZipFile(path) as z:
                ok = "core_rect.npy" in z.namelist()
        except (zipfile.BadZipFile, OSError):
            ok = False
        if not ok:
            log.warning("%s is damaged: removed, redoing that block", path)
            path.unlink(missing_ok=True)
        return ok

    def mark_rank(self, rank: int, world_size: int) -> None:
        """Record that ``rank`` finished its share (for orchestration; assembly checks the blocks)."""
        write_text_atomic(self.root / f"rank_{rank}_of_{world_size}.done", "")

    def try_lock(self) -> bool:
        """Elect one assembler among ranks (O_EXCL create)."""
        try:
            os.close(os.open(self.root / self.LOCK, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            return True
        except FileExistsError:
            return False

    def unlock(self) -> None:
        (self.root / self.LOCK).unlink(missing_ok=True)


def _rect_tuple(r: Rect) -> tuple[int, int, int, int]:
    return r.row0, r.col0, r.row1, r.col1


# --------------------------------------------------------------------------- running


def _prefetch(items: Iterator[T]) -> Iterator[T]:
    """Produce the next item in a worker thread while the caller consumes this one (I/O vs model)."""
    end = object()
    with ThreadPoolExecutor(1, thread_name_prefix="agrifm-read") as pool:
        fut = pool.submit(next, items, end)
        while (item := fut.result()) is not end:
            fut = pool.submit(next, items, end)
            yield item  # type: ignore[misc]


def _as_probs(p: Any, shape: tuple[int, ...], what: str) -> torch.Tensor:
    if not isinstance(p, torch.Tensor) or tuple(p.shape[:len(shape)]) != shape:
        got = tuple(p.shape) if isinstance(p, torch.Tensor) else type(p).__name__
        raise InputError(f"{what} predictor returned {got}, expected probabilities of shape {shape}...")
    return p.detach().float().cpu()


def _run_dense(predictor: Predictor, inputs: Mapping[str, torch.Tensor], keep: np.ndarray,
               num_classes: int, window: int, device: torch.device) -> np.ndarray:
    """Probabilities ``(n, K, window, window)`` of the windows in ``keep``."""
    idx = torch.from_numpy(keep)
    x = {k: v[idx].to(device) for k, v in inputs.items()}
    with torch.inference_mode():
        p = _as_probs(predictor(x), (len(keep), num_classes), "dense")
    if p.ndim != 4:
        raise InputError(f"dense predictor returned shape {tuple(p.shape)}, expected (B, K, h, w)")
    if p.shape[-2:] != (window, window):
        p = F.interpolate(p, size=(window, window), mode="bilinear", align_corners=False, antialias=True)
    return p.numpy()


def _pixels(x: torch.Tensor, window: int) -> torch.Tensor:
    """``(B, T, C, h, w)`` -> one series per output pixel ``(B * window * window, T, C)`` (nearest)."""
    b, t, c, h, w = x.shape
    if (h, w) != (window, window):
        x = F.interpolate(x.flatten(1, 2), size=(window, window), mode="nearest").unflatten(1, (t, c))
    return x.permute(0, 3, 4, 1, 2).reshape(-1, t, c)


def _run_point(predictor: Predictor, inputs: Mapping[str, torch.Tensor], keep: np.ndarray, valid: torch.Tensor,
               num_classes: int, window: int, device: torch.device, chunk: int) -> np.ndarray:
    """Per-pixel probabilities of the valid pixels of the windows in ``keep``, ``(n, K, window, window)``."""
    idx = torch.from_numpy(keep)
    series = {k: _pixels(v[idx], window) for k, v in inputs.items()}
    sel = valid[idx].reshape(-1).nonzero().squeeze(1)
    out = torch.zeros(len(keep) * window * window, num_classes)
    for s in range(0, len(sel), chunk):
        ids = sel[s:s + chunk]
        x = {k: v[ids][..., None, None].to(device) for k, v in series.items()}
        with torch.inference_mode():
            out[ids] = _as_probs(predictor(x), (len(ids), num_classes), "point")[:, :num_classes]
    return out.reshape(len(keep), window, window, num_classes).permute(0, 3, 1, 2).numpy()


@dataclass
class _Job:
    block: Block
    tiles: list[Tile]
    last: bool  # last batch of its block


def _jobs(tg: TileGrid, blocks: Iterable[Block], batch_size: int) -> Iterator[_Job]:
    for block in blocks:
        tiles = tg.tiles(block)
        starts = range(0, len(tiles), batch_size) if tiles else [0]
        for s in starts:
            yield _Job(block, tiles[s:s + batch_size], s + batch_size >= len(tiles))


def _load(readers: Sequence[_Reader], job: _Job) -> tuple[_Job, dict[str, torch.Tensor], torch.Tensor]:
    if not job.tiles:
        return job, {}, torch.zeros(0, 0, 0, dtype=torch.bool)
    inputs, valid = {}, None
    for r in readers:
        inputs[r.name], v = r.load(job.tiles)
        valid = v if valid is None else valid & v  # a pixel a source never observed is nodata
    assert valid is not None
    return job, inputs, valid


class _Dated:
    """A predictor that also takes the frames' acquisition dates (date-encoding models)."""

    def __init__(self, inner: Predictor, dates: Mapping[str, np.ndarray]) -> None:
        self.inner = inner
        self.dates = {k: torch.from_numpy(days_since_epoch(v)) for k, v in dates.items()}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def __call__(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.inner(inputs, dates={k: self.dates[k] for k in inputs})


def _device(predictor: Predictor, device: str | torch.device | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    d = getattr(predictor, "device", None)
    return torch.device(d) if d is not None else torch.device("cpu")


def _predict(predictor: Predictor, inputs: Mapping[str, torch.Tensor], valid: torch.Tensor, *, window: int,
             device: torch.device, point_batch: int) -> list[np.ndarray | None]:
    """Per window: probabilities ``(K, window, window)``, or None where no pixel is valid (model skipped)."""
    out: list[np.ndarray | None] = [None] * len(valid)
    keep = np.flatnonzero(valid.flatten(1).any(1).numpy()) if len(valid) else np.zeros(0, np.int64)
    if len(keep):
        k = len(predictor.class_names)
        if predictor.kind == "point":
            probs = _run_point(predictor, inputs, keep, valid, k, window, device, point_batch)
        else:
            probs = _run_dense(predictor, inputs, keep, k, window, device)
        for j, i in enumerate(keep):
            out[i] = probs[j]
    return out


def _save_block(store: BlockStore, tg: TileGrid, block: Block, acc: Accumulator, probabilities: bool) -> None:
    """Encode the block's final core; keep the rest (shared with neighbours) as partial sums."""
    core = tg.core(block)
    store.save(block, core, encode_layers(*acc.result(core), probabilities), [acc.partial(r) for r in ring(acc.rect, core)])


def _run_blocks(predictor: Predictor, readers: Sequence[_Reader], tg: TileGrid, blocks: Sequence[Block],
                store: BlockStore, *, batch_size: int, probabilities: bool, device: torch.device,
                point_batch: int, progress: bool) -> int:
    """Predict ``blocks``, saving each as soon as it is complete; returns the windows run.

    Reads for the next batch run in a worker thread while the model runs on this one.
    """
    from agrifm.progress import progress_bar

    weights = blend_weights(tg.window, tg.overlap)
    total = sum(len(tg.tiles(b)) for b in blocks)
    acc: Accumulator | None = None
    with progress_bar(total, "predict", "win", enabled=progress) as bar:
        for job, inputs, valid in _prefetch(_load(readers, j) for j in _jobs(tg, blocks, batch_size)):
            acc = acc or Accumulator(tg.footprint(job.block), len(predictor.class_names), weights)
            probs = _predict(predictor, inputs, valid, window=tg.window, device=device, point_batch=point_batch)
            for tile, p, v in zip(job.tiles, probs, valid.numpy()):
                acc.add(tile, p, v)
            bar.update(len(job.tiles))
            if job.last:
                _save_block(store, tg, job.block, acc, probabilities)
                acc = None
    return total


# --------------------------------------------------------------------------- outputs


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


def _check_outputs(paths: Mapping[str, Path], overwrite: bool) -> None:
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
    return _assemble(block_dir, out, overwrite=overwrite, quicklook=quicklook)[0]


def _assemble(block_dir: str | os.PathLike[str], out: str | os.PathLike[str], *, overwrite: bool,
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
    _check_outputs(paths, overwrite)
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


# --------------------------------------------------------------------------- refusing runaway requests

MAX_PIXELS = 2**36  # ~69 Gpx: a 10 m map of ~6.9 million km2; larger requests are refused before any work
MAX_UPSAMPLING = 16  # output pixels finer than 1/16 of the finest source pixel add nothing but cost


def _check_options(window: int, overlap: int, batch_size: int, block_size: int, point_batch: int) -> None:
    require_positive(window=window, batch_size=batch_size, block_size=block_size, point_batch=point_batch)
    if overlap < 0 or 2 * overlap > window:
        raise InputError(f"--overlap must be in [0, window/2] = [0, {window // 2}], got {overlap}")


def _check_grid_size(grid: OutputGrid, stacks: Mapping[str, Stack], resolution: Any) -> None:
    """Refuse, naming the option, a grid far finer than the sources or too large to hold."""
    finest = min(min(_pixel_size(s, grid.crs)) for s in stacks.values())
    if resolution is not None and min(grid.res) * MAX_UPSAMPLING < finest:
        raise InputError(f"--resolution {resolution} is over {MAX_UPSAMPLING}x finer than the finest source "
                         f"pixel ({finest:g} {grid.crs.linear_units if grid.crs.is_projected else 'units'}): "
                         f"{grid.width:,} x {grid.height:,} px; choose a resolution of at least "
                         f"{finest / MAX_UPSAMPLING:g}")
    if grid.width * grid.height > MAX_PIXELS:
        raise TooLargeError(f"the output grid would be {grid.width:,} x {grid.height:,} px "
                            f"(over {MAX_PIXELS:,}): choose a coarser --resolution or smaller --bounds")


def available_memory() -> int:
    """Bytes this process can still allocate without swapping (MemAvailable; total RAM elsewhere)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 << 62


def memory_estimate(readers: Sequence[_Reader], tg: TileGrid, num_classes: int, batch_size: int) -> int:
    """A lower bound of the bytes one batch and one block need: source reads and their
    gap-filled copies (x2 with prefetching), probabilities, the block's accumulator. A batch
    holds at most one block's windows, a block at most the scene."""
    per_window = sum(int(np.sum(r.stack.dates <= r.until) if r.until is not None else len(r.stack.dates))
                     * max(1, len(r.bands or r.stack.bands))
                     * r.shape[0] * r.shape[1] * 4 * 3 for r in readers)
    probs = num_classes * tg.window**2 * 4 * 2
    per_side = math.ceil(tg.block_size / tg.stride)  # a batch never spans two blocks
    batch = min(batch_size, min(per_side, len(tg.row_starts)) * min(per_side, len(tg.col_starts)))
    acc = min(tg.block_size + tg.window, tg.height) * min(tg.block_size + tg.window, tg.width) * (num_classes + 2) * 4
    return 2 * batch * per_window + batch * probs + acc + tg.window**2 * 4


def _check_memory(readers: Sequence[_Reader], tg: TileGrid, num_classes: int, batch_size: int) -> None:
    need, have = memory_estimate(readers, tg, num_classes, batch_size), available_memory()
    if need > have:
        raise TooLargeError(f"--window {tg.window} with --batch-size {batch_size} and --block-size {tg.block} needs "
                            f"at least {need / 2**30:.1f} GiB, {have / 2**30:.1f} GiB are available: "
                            "use a smaller --window, --batch-size or --block-size")


def resolve_device(device: str | torch.device | None) -> torch.device | None:
    """``device`` checked against this machine; under torchrun a bare ``cuda`` (or no device)
    means this process's ``cuda:LOCAL_RANK``."""
    local = os.environ.get("LOCAL_RANK")
    if device is None:
        if local is None or not torch.cuda.is_available():
            return None
        device = "cuda"
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as e:
        raise InputError(f"--device {device!r}: not a device ({e}); use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
        if dev.index is None and local is not None:
            dev = torch.device("cuda", int(local))
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InputError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise InputError(f"--device {device}: MPS is not available on this machine; use --device cpu")
    return dev


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


# --------------------------------------------------------------------------- entry point


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


def _rank_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        rank = dist.get_rank() if rank is None else rank
        world_size = dist.get_world_size() if world_size is None else world_size
    rank = int(os.environ.get("RANK", 0)) if rank is None else rank
    world_size = int(os.environ.get("WORLD_SIZE", 1)) if world_size is None else world_size
    if not 0 <= rank < world_size:
        raise InputError(f"rank {rank} is not in [0, world_size={world_size})")
    return rank, world_size


def _check_predictor(predictor: Predictor) -> None:
    if predictor.kind not in ("dense", "point"):
        raise InputError(f"predictor.kind must be 'dense' or 'point', got {predictor.kind!r}")
    class_map_meta(predictor.class_names, predictor.class_colors)  # validates names/colours/count


def _provenance_tags(readers: Sequence[_Reader], band_maps: Mapping[str, Mapping[str, str]],
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


def _subtitle(readers: Sequence[_Reader]) -> str:
    """'S2 2020-11-01..2021-10-01 (12 frames)' per source, for the quicklook."""
    return "; ".join(f"{r.name} {r.dates[0]}..{r.dates[-1]} ({len(r.dates)} frames)" for r in readers)


def predict_scene(
    predictor: Predictor,
    sources: Mapping[str, SourceInput],
    out: str | os.PathLike[str],
    *,
    window: int = 256,
    overlap: int = 32,
    batch_size: int = 4,
    probabilities: bool = False,
    until: DateLike | None = None,
    resolution: float | Sequence[float] | None = None,
    crs: Any = None,
    bounds: Sequence[float] | None = None,
    band_map: Mapping[str, Mapping[str, str]] | None = None,
    overwrite: bool = False,
    device: str | torch.device | None = None,
    provenance: Mapping[str, Any] | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    block_dir: str | os.PathLike[str] | None = None,
    block_size: int = 2048,
    point_batch: int = 16384,
    quicklook: bool = True,
    finalize: bool = True,
    progress: bool = True,
) -> PredictResult:
    """Map a scene: ``sources`` (name -> stack folder/files or an open Stack) -> ``out`` COG.

    Point predictors run per pixel (``overlap`` is then 0: nothing to blend). Blocks of
    ``block_size`` px (rounded to the stride) bound the memory; they are saved in
    ``block_dir`` (default ``.<MAP>.blocks`` beside the map, removed after success), so a
    rerun skips finished ones, and ranks (``rank``/``world_size``, default torch.distributed
    or ``RANK``/``WORLD_SIZE``) share them. The process that completes the last block
    assembles the outputs unless ``finalize=False`` (then call :func:`assemble`).
    """
    t0 = time.perf_counter()
    out = Path(out)
    rank, world_size = _rank_world(rank, world_size)
    _check_predictor(predictor)
    if predictor.kind == "point":
        overlap = 0
    _check_options(window, overlap, batch_size, block_size, point_batch)
    _check_outputs(output_paths(out, probabilities, quicklook), overwrite)
    device = resolve_device(device)
    try:
        day = None if until is None else np.datetime64(until, "D")
    except (ValueError, TypeError) as e:
        raise InputError(f"--until-date {until!r} is not a date YYYY-MM-DD ({e})") from None
    names = _canonical_names(predictor, list(sources))
    by_alias = {alias.lower(): key for key, src in predictor.sources.items() for alias in (key, src.name, *src.aliases)}
    unknown = [k for k in band_map or {} if names.get(k, by_alias.get(k.lower())) not in set(names.values())]
    if unknown:
        raise InputError(f"--band-map {unknown[0]}: not a source of this run ({list(sources)}); "
                         "a band map names a --source")
    maps = {names.get(k, by_alias.get(k.lower(), k)): v for k, v in (band_map or {}).items()}
    stacks = {names[n]: _open(names[n], v, predictor.sources[names[n]], maps.get(names[n]))
              for n, v in sources.items()}
    stacks = {k: stacks[k] for k in predictor.sources}  # model order
    grid = output_grid(stacks, crs=crs, resolution=resolution, bounds=bounds)
    _check_grid_size(grid, stacks, resolution)
    tg = TileGrid(grid.height, grid.width, window, overlap, block_size)
    readers = _make_readers(predictor, stacks, grid, window, day, maps)
    _check_memory(readers, tg, len(predictor.class_names), batch_size)
    if getattr(predictor, "uses_dates", False):
        predictor = _Dated(predictor, {r.name: r.dates for r in readers})
    if rank == 0:
        for r in readers:
            _check_units(r)

    default_dir = block_dir is None
    store = BlockStore(out.parent / f".{out.name}.blocks" if default_dir else block_dir)
    tags = _provenance_tags(readers, maps, day, tg, predictor.kind, provenance)
    fresh = not store.root.exists()
    store.init({"grid": grid.to_json(), "window": window, "overlap": overlap, "block": block_size,
                "kind": predictor.kind, "class_names": list(predictor.class_names),
                "class_colors": [list(c) for c in predictor.class_colors], "probabilities": probabilities,
                "tags": tags, "subtitle": _subtitle(readers), "inputs": input_fingerprint(stacks)},
               restart=default_dir and world_size == 1)  # ranks sharing a folder never delete each other's blocks

    mine = tg.blocks[rank::world_size]
    todo = [b for b in mine if not store.check(b)]
    if len(todo) < len(mine):
        log.info("%s: %d of %d blocks already done, skipping them", store.root, len(mine) - len(todo), len(mine))
    try:
        windows = _run_blocks(predictor, readers, tg, todo, store, batch_size=batch_size,
                              probabilities=probabilities, device=_device(predictor, device),
                              point_batch=point_batch, progress=progress)
    except BaseException:
        if default_dir and fresh and not store.blocks():  # nothing to resume: leave no hidden folder behind
            shutil.rmtree(store.root, ignore_errors=True)
        raise
    store.mark_rank(rank, world_size)

    outputs: dict[str, Path] = {}
    mapped_km2 = math.nan
    if finalize and all(store.done(b) for b in tg.blocks):
        if world_size == 1 or store.try_lock():  # among ranks, the first to see all blocks assembles
            try:
                outputs, mapped_km2 = _assemble(store.root, out, overwrite=overwrite, quicklook=quicklook)
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
