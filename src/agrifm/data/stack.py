"""GeoTIFF time-series stacks, opened lazily with rasterio.

Three on-disk layouts are recognised, and any mix of them is indexed the same way, as a
table ``(timestamp, band) -> (file, band index)``:

(a) one single-band file per band and date, both in the name (``MOD13Q1_h12v10_NDVI_2013-09-14.tif``);
(b) one multi-band file per date, band names from the band descriptions or from ``bands=``
    (``S2_2021-03.tif``);
(c) one file per band whose raster bands are dates (``NDVI.tif``; timestamps from the band
    descriptions, a ``dates.txt`` sidecar or ``dates=``); the band is named after the file stem.

Opening reads metadata only; :meth:`Stack.read` reads just the requested window of each
file. Values come back in physical units (GDAL scale/offset applied), ``float32``, NaN where
invalid; see ``docs/CONVENTIONS.md``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import rasterio
import rasterio.warp
from affine import Affine
from rasterio.coords import BoundingBox
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.windows import Window

from agrifm.errors import InputError
from agrifm.data.catalog import (
    BandRef,
    PathLike,
    RasterInfo,
    assemble,
    build_catalog,
    check_grid,
    date_from_name,
    describe_paths,
    list_rasters,
    resolve_bands,
)
from agrifm.data.timeseries import until as frames_until

__all__ = ["StackArray", "Stack", "open_stack", "date_from_name", "PathLike", "ResamplingName"]

ResamplingName = Literal["average", "nearest", "bilinear"]


@dataclass
class StackArray:
    """A block of a stack: ``data`` (T, C, H, W) float32, NaN exactly where ``valid`` is False."""

    data: np.ndarray
    valid: np.ndarray
    dates: np.ndarray
    bands: list[str]
    transform: Affine
    crs: CRS

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return self.data.shape  # type: ignore[return-value]


# --------------------------------------------------------------------------- stack


def _window_bounds_to_pixels(window: Window) -> tuple[int, int, int, int]:
    """Integer (row0, col0, height, width) of a possibly fractional window, edges rounded."""
    def edge(v: float) -> int:
        return math.floor(round(v, 6) + 0.5)

    r0, c0 = edge(window.row_off), edge(window.col_off)
    r1, c1 = edge(window.row_off + window.height), edge(window.col_off + window.width)
    return r0, c0, max(1, r1 - r0), max(1, c1 - c0)


class Stack:
    """A lazily read time series of co-registered rasters, shape (T, C, height, width).

    Build one with :func:`open_stack`. Attributes mirror rasterio's (``crs``, ``transform``,
    ``width``, ``height``, ``res``, ``bounds``) plus ``bands`` and ``dates``.
    """

    def __init__(self, path: str, timestamps: np.ndarray, bands: list[str], refs: list[list[BandRef]],
                 grid: RasterInfo, mask: list[BandRef] | None = None,
                 mask_kind: Literal["cloud", "valid"] = "cloud") -> None:
        self.path = path
        self.timestamps = timestamps
        self.bands = bands
        self._refs = refs
        self._grid = grid
        self._mask = mask
        self.mask_kind = mask_kind

    # -- metadata
    @property
    def dates(self) -> np.ndarray:
        return self.timestamps.astype("datetime64[D]")

    @property
    def crs(self) -> CRS:
        return self._grid.crs

    @property
    def transform(self) -> Affine:
        return self._grid.transform

    @property
    def width(self) -> int:
        return self._grid.width

    @property
    def height(self) -> int:
        return self._grid.height

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return len(self.timestamps), len(self.bands), self.height, self.width

    @property
    def res(self) -> tuple[float, float]:
        return abs(self.transform.a), abs(self.transform.e)

    @property
    def bounds(self) -> BoundingBox:
        return BoundingBox(*rasterio.windows.bounds(Window(0, 0, self.width, self.height), self.transform))

    @property
    def dtype(self) -> str:
        return self._refs[0][0][0].dtype

    @property
    def nodata(self) -> float | None:
        return self._refs[0][0][0].nodata

    @property
    def files(self) -> list[Path]:
        refs = [r for row in self._refs for r in row] + list(self._mask or [])
        return list(dict.fromkeys(r[0].path for r in refs))

    def __repr__(self) -> str:
        d = self.dates
        span = f"{d[0]}..{d[-1]}" if len(d) else "no dates"
        return (f"Stack({self.path!r}, T={len(d)} ({span}), bands={self.bands}, "
                f"{self.height}x{self.width} px @ {self.res[0]:g}, {_short_crs(self.crs)})")

    # -- reading
    def window_for(self, bounds: Sequence[float]) -> Window:
        """The pixel window of this grid covering ``bounds`` (left, bottom, right, top), edges rounded."""
        w = rasterio.windows.from_bounds(*bounds, transform=self.transform)
        r0, c0, h, wd = _window_bounds_to_pixels(w)
        return Window(c0, r0, wd, h)

    def read(self, window: Window | None = None, *, bands: Sequence[str] | None = None,
             until: str | np.datetime64 | None = None, boundless: bool = True) -> StackArray:
        """Read one pixel window (whole raster by default); outside the raster is NaN/invalid.

        ``boundless=False`` clips the window to the raster instead.
        """
        window = window or Window(0, 0, self.width, self.height)
        if not boundless:
            full = Window(0, 0, self.width, self.height)
            try:
                window = window.intersection(full)
            except rasterio.errors.WindowError as e:
                raise InputError(f"window {window} lies outside stack {self.path} "
                                 f"({self.height}x{self.width} px)") from e
        return self.read_many([window], bands=bands, until=until)[0]

    def read_many(self, windows: Sequence[Window], *, bands: Sequence[str] | None = None,
                  until: str | np.datetime64 | None = None) -> list[StackArray]:
        """Read several windows, opening each file once (chips, point samples)."""
        t_idx = self._frames_until(until)
        c_idx = self._band_indices(bands)
        pix = [_window_bounds_to_pixels(w) for w in windows]
        out = [np.full((len(t_idx), len(c_idx), h, w), np.nan, np.float32) for _, _, h, w in pix]
        refs = [[self._refs[t][c] for c in c_idx] for t in t_idx]
        _fill(out, pix, refs)
        ok = [np.ones((len(t_idx), h, w), bool) for _, _, h, w in pix]
        if self._mask is not None:
            masks = [np.full((len(t_idx), 1, h, w), np.nan, np.float32) for _, _, h, w in pix]
            _fill(masks, pix, [[self._mask[t]] for t in t_idx])
            ok = [self._mask_ok(m[:, 0]) for m in masks]
        return [self._finish(d, m, p, t_idx, c_idx) for d, m, p in zip(out, ok, pix)]

    def read_bounds(self, bounds: Sequence[float], crs: CRS | str | None = None, *,
                    shape: tuple[int, int] | None = None, bands: Sequence[str] | None = None,
                    until: str | np.datetime64 | None = None,
                    resampling: ResamplingName = "average") -> StackArray:
        """Read a geographic window ``(left, bottom, right, top)`` given in ``crs``.

        Same CRS and no ``shape``: the native pixels covering the bounds (no resampling).
        Otherwise the native-resolution block is warped onto a grid over exactly ``bounds``
        in ``crs`` (``shape`` or this stack's resolution expressed in ``crs``), with NaN as
        nodata so invalid pixels are never averaged in.
        """
        dst_crs = CRS.from_user_input(crs) if crs is not None else self.crs
        if dst_crs == self.crs and shape is None:
            return self.read(self.window_for(bounds), bands=bands, until=until)
        height, width = shape if shape is not None else self._native_shape(bounds, dst_crs)
        dst_transform = rasterio.transform.from_bounds(*bounds, width, height)
        src_bounds = rasterio.warp.transform_bounds(dst_crs, self.crs, *bounds, densify_pts=21)
        w = self.window_for(src_bounds)
        pad = 2  # resampling kernels need neighbours beyond the footprint
        block = self.read(Window(w.col_off - pad, w.row_off - pad, w.width + 2 * pad, w.height + 2 * pad),
                          bands=bands, until=until)
        return _warp(block, dst_crs, dst_transform, (height, width), resampling)

    # -- helpers
    def _native_shape(self, bounds: Sequence[float], dst_crs: CRS) -> tuple[int, int]:
        """Pixels over ``bounds`` at this stack's resolution, expressed in ``dst_crs`` units."""
        t, _, _ = rasterio.warp.calculate_default_transform(
            self.crs, dst_crs, self.width, self.height, *self.bounds)
        left, bottom, right, top = bounds
        return (max(1, round((top - bottom) / abs(t.e))), max(1, round((right - left) / abs(t.a))))

    def _frames_until(self, until: str | np.datetime64 | None) -> np.ndarray:
        if until is None:
            return np.arange(len(self.timestamps))
        return frames_until(self.dates, until, what=f"until={until}: stack {self.path}")

    def _band_indices(self, bands: Sequence[str] | None) -> list[int]:
        if bands is None:
            return list(range(len(self.bands)))
        missing = [b for b in bands if b not in self.bands]
        if missing:
            raise InputError(f"band(s) {missing} not in stack {self.path}; bands: {self.bands}")
        return [self.bands.index(b) for b in bands]

    def _mask_ok(self, m: np.ndarray) -> np.ndarray:
        """Pixel-dates the mask leaves valid (NaN = mask nodata/outside = invalid)."""
        with np.errstate(invalid="ignore"):
            return (m == 0) if self.mask_kind == "cloud" else (np.isfinite(m) & (m != 0))

    def _finish(self, data: np.ndarray, ok: np.ndarray, pix: tuple[int, int, int, int],
                t_idx: np.ndarray, c_idx: list[int]) -> StackArray:
        valid = ok & np.isfinite(data).all(axis=1)
        data[np.broadcast_to(~valid[:, None], data.shape)] = np.nan
        r0, c0, _, _ = pix
        return StackArray(data=data, valid=valid, dates=self.dates[t_idx],
                          bands=[self.bands[c] for c in c_idx],
                          transform=self.transform @ Affine.translation(c0, r0), crs=self.crs)


def _short_crs(crs: CRS) -> str:
    return f"EPSG:{crs.to_epsg()}" if crs.to_epsg() else crs.to_proj4()


def _fill(out: list[np.ndarray], pix: list[tuple[int, int, int, int]],
          refs: list[list[BandRef]]) -> None:
    """Read ``refs[t][c]`` into ``out[k][t, c]`` for every window ``pix[k]``, file by file.

    Only the part of each window inside the raster is read; nodata and NaN become NaN, and
    the file's scale/offset is applied.
    """
    by_file: dict[Path, list[tuple[int, int, RasterInfo, int]]] = {}
    for t, row in enumerate(refs):
        for c, (raster, bidx) in enumerate(row):
            by_file.setdefault(raster.path, []).append((t, c, raster, bidx))
    for path, items in by_file.items():
        raster = items[0][2]
        indexes = sorted({b for *_, b in items})
        pos = {b: i for i, b in enumerate(indexes)}
        scale = np.array([raster.scales[b - 1] for b in indexes])[:, None, None]
        offset = np.array([raster.offsets[b - 1] for b in indexes])[:, None, None]
        try:
            with rasterio.open(path) as src:
                for dst, (r0, c0, h, w) in zip(out, pix):
                    rr0, cc0 = max(r0, 0), max(c0, 0)
                    rr1, cc1 = min(r0 + h, raster.height), min(c0 + w, raster.width)
                    if rr1 <= rr0 or cc1 <= cc0:
                        continue
                    block = src.read(indexes, window=Window(cc0, rr0, cc1 - cc0, rr1 - rr0), masked=True)
                    values = (block.data.astype(np.float64) * scale + offset).astype(np.float32)
                    values[np.ma.getmaskarray(block)] = np.nan
                    for t, c, _, b in items:
                        dst[t, c, rr0 - r0:rr1 - r0, cc0 - c0:cc1 - c0] = values[pos[b]]
        except rasterio.errors.RasterioError as e:
            raise InputError(f"cannot read raster {path}: {e}") from e


_RESAMPLING = {"average": Resampling.average, "nearest": Resampling.nearest,
               "bilinear": Resampling.bilinear}


def _warp(block: StackArray, dst_crs: CRS, dst_transform: Affine, shape: tuple[int, int],
          resampling: str) -> StackArray:
    """Warp a NaN-carrying block onto another grid; NaN is nodata on both sides."""
    if resampling not in _RESAMPLING:
        raise InputError(f"resampling must be one of {sorted(_RESAMPLING)}, got {resampling!r}")
    t, c, h, w = block.data.shape
    dst = np.full((t * c, *shape), np.nan, np.float32)
    if t * c:
        rasterio.warp.reproject(
            block.data.reshape(t * c, h, w), dst, src_transform=block.transform, src_crs=block.crs,
            dst_transform=dst_transform, dst_crs=dst_crs, src_nodata=np.nan, dst_nodata=np.nan,
            resampling=_RESAMPLING[resampling],
            # per-band nodata: GDAL's default only drops pixels that are NaN in *all* bands,
            # which lets NaN of partly invalid frames leak into averages
            UNIFIED_SRC_NODATA="NO")
    data = dst.reshape(t, c, *shape)
    valid = np.isfinite(data).all(axis=1)
    data[np.broadcast_to(~valid[:, None], data.shape)] = np.nan
    return StackArray(data=data, valid=valid, dates=block.dates, bands=block.bands,
                      transform=dst_transform, crs=dst_crs)


# --------------------------------------------------------------------------- opening


def _open_mask(mask: PathLike | Sequence[PathLike], kind: str, timestamps: np.ndarray,
               grid: RasterInfo, dates: Sequence[str] | None) -> list[BandRef]:
    """One mask band per stack frame, on the stack's grid and at the same dates."""
    if kind not in ("cloud", "valid"):
        raise InputError(f"mask_kind must be 'cloud' or 'valid', got {kind!r}")
    origin = f"mask {describe_paths(mask)}"
    cat = build_catalog(list_rasters(mask), origin, None, dates)
    stored = resolve_bands(cat, None, None)
    if len(stored) != 1:
        raise InputError(f"{origin} must hold one band per date; found bands {[s for s, _ in stored]}")
    frames, refs = assemble(cat, [stored[0][1]])
    days, want = frames.astype("datetime64[D]"), timestamps.astype("datetime64[D]")
    if len(days) != len(want) or (days != want).any():
        diff = next((i for i, (a, b) in enumerate(zip(days, want)) if a != b), min(len(days), len(want)))
        raise InputError(f"{origin} has {len(days)} dates, the stack {len(want)}; first difference at "
                         f"frame {diff}: mask {days[diff] if diff < len(days) else '-'} vs "
                         f"stack {want[diff] if diff < len(want) else '-'}")
    check_grid([grid] + [r[0][0] for r in refs], origin)
    return [r[0] for r in refs]


def open_stack(path: PathLike | Sequence[PathLike], *, bands: Sequence[str] | None = None,
               band_map: dict[str, str] | None = None, mask: PathLike | Sequence[PathLike] | None = None,
               mask_kind: Literal["cloud", "valid"] = "cloud",
               dates: Sequence[str] | None = None) -> Stack:
    """Open a folder, a file or a list of GeoTIFFs as a time-series :class:`Stack`.

    ``bands`` selects and orders bands (the model's band order) and names the bands of
    multi-band files without descriptions; ``band_map`` substitutes bands a source lacks
    (``{'B8A': 'B08'}``); ``mask`` is a per-date cloud (1 = cloud, ``mask_kind='cloud'``) or
    validity (1 = valid, ``'valid'``) stack with the same dates; ``dates`` dates the bands of
    files whose bands are dates (stack and mask) when neither band descriptions nor a
    ``dates.txt`` sidecar do.
    """
    origin = describe_paths(path)
    cat = build_catalog(list_rasters(path), origin, bands, dates)
    selected = resolve_bands(cat, bands, band_map)
    timestamps, refs = assemble(cat, [s for _, s in selected])
    grid = check_grid(list({r[0].path: r[0] for row in refs for r in row}.values()), origin)
    if grid.crs is None:
        raise InputError(f"{grid.path} has no CRS; stacks must be georeferenced")
    mask_refs = _open_mask(mask, mask_kind, timestamps, grid, dates) if mask is not None else None
    return Stack(origin, timestamps, [o for o, _ in selected], refs, grid, mask_refs, mask_kind)
