"""Land-cover class fractions on a coarse cell grid: the pre-training targets.

AgriFM is supervised by the share of each land-cover class inside each target cell (e.g. an
8 x 8 grid over a 128-px chip), not by a per-pixel label: fractions tolerate the resolution and
geolocation mismatch between the imagery and a land-cover product made elsewhere.

Fractions are taken over *mapped* pixels only (no-data pixels are neither a class nor counted),
and a cell is valid only if mapped pixels cover at least ``min_coverage`` of its area, so a cell
half off the land-cover raster or half snow does not claim a confident target.

Two ways of aggregating, same meaning:

* ``count`` - exact pixel counting when the land-cover grid *nests* in the cell grid (same CRS,
  north-up, cell size an integer multiple of the pixel size, aligned edges): the common case of
  labels on the imagery grid.
* ``average`` - otherwise, one band per class (one-hot) resampled with GDAL's area-weighted
  ``Resampling.average`` onto the cell grid (any CRS, any resolution).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np

from agrifm.pretrain.landcover import CLASSES, NODATA, apply_mapping, report_unmapped
from agrifm.errors import AgrifmError

__all__ = [
    "CellGrid",
    "NoOverlapError",
    "class_fractions",
    "check_overlap",
    "read_landcover_window",
]

CellGrid = tuple[Any, Any, tuple[int, int]]
"""``(affine transform, crs, (rows, cols))`` of the target cells."""

_TOL = 1e-6  # relative tolerance (in pixels) for "integer" ratios and offsets


class NoOverlapError(AgrifmError, ValueError):
    """The land-cover raster and the imagery (or a chip of it) do not overlap."""


def _crs(crs: Any) -> Any:
    from rasterio.crs import CRS

    return crs if isinstance(crs, CRS) else CRS.from_user_input(crs)


def _bounds(transform: Any, shape: tuple[int, int]) -> tuple[float, float, float, float]:
    from rasterio.transform import array_bounds

    x0, y0, x1, y1 = array_bounds(shape[0], shape[1], transform)  # ordered for north-up grids
    return (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))


def _fmt(bounds: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{b:.3f}" for b in bounds) + ")"


def check_overlap(
    lc_bounds: tuple[float, float, float, float],
    lc_crs: Any,
    img_bounds: tuple[float, float, float, float],
    img_crs: Any,
    *,
    lc_name: str = "land cover",
    img_name: str = "imagery",
) -> tuple[float, float, float, float]:
    """Return the imagery bounds in the land-cover CRS; :class:`NoOverlapError` if disjoint.

    The error names both inputs and their bounds: a mismatched CRS or a tile from the wrong
    area is the usual cause, and the numbers show which.
    """
    from rasterio.warp import transform_bounds

    lc_crs, img_crs = _crs(lc_crs), _crs(img_crs)
    b = img_bounds if lc_crs == img_crs else transform_bounds(img_crs, lc_crs, *img_bounds, densify_pts=21)
    if b[0] >= lc_bounds[2] or b[2] <= lc_bounds[0] or b[1] >= lc_bounds[3] or b[3] <= lc_bounds[1]:
        raise NoOverlapError(
            f"{lc_name} (bounds {_fmt(lc_bounds)} in {lc_crs.to_string()}) does not overlap "
            f"{img_name} (bounds {_fmt(img_bounds)} in {img_crs.to_string()}, "
            f"{_fmt(b)} in the land-cover CRS)"
        )
    return b


def _pad_crop(classes: np.ndarray, row0: int, col0: int, rows: int, cols: int) -> np.ndarray:
    """The window ``[row0:row0+rows, col0:col0+cols]`` of ``classes``, NODATA outside it."""
    out = np.full((rows, cols), NODATA, dtype=np.int8)
    r0, c0 = max(row0, 0), max(col0, 0)
    r1, c1 = min(row0 + rows, classes.shape[0]), min(col0 + cols, classes.shape[1])
    if r1 > r0 and c1 > c0:
        out[r0 - row0 : r1 - row0, c0 - col0 : c1 - col0] = classes[r0:r1, c0:c1]
    return out


def _as_int(value: float) -> int | None:
    r = round(value)
    return int(r) if abs(value - r) < _TOL * max(1.0, abs(value)) else None


def _nesting(lc_transform: Any, lc_crs: Any, cell_transform: Any, cell_crs: Any) -> tuple[int, int, int, int] | None:
    """``(ny, nx, row0, col0)`` if the land-cover pixels tile the cells exactly, else None."""
    if lc_crs != cell_crs:
        return None
    lt, ct = lc_transform, cell_transform
    if lt.b or lt.d or ct.b or ct.d:
        return None
    ints = [_as_int(v) for v in (ct.e / lt.e, ct.a / lt.a, (ct.f - lt.f) / lt.e, (ct.c - lt.c) / lt.a)]
    if any(v is None for v in ints):
        return None
    ny, nx, row0, col0 = (int(v) for v in ints)  # type: ignore[arg-type]
    return (ny, nx, row0, col0) if nx >= 1 and ny >= 1 else None


def _count(classes: np.ndarray, nest: tuple[int, int, int, int], shape: tuple[int, int], k: int) -> np.ndarray:
    """Per-cell pixel counts ``(k + 1, h, w)``: channel 0 = no-data, 1.. = classes."""
    ny, nx, row0, col0 = nest
    h, w = shape
    block = _pad_crop(classes, row0, col0, h * ny, w * nx).astype(np.int64) + 1
    cell = (np.arange(h)[:, None] * w + np.arange(w)[None, :]).repeat(ny, 0).repeat(nx, 1)
    counts = np.bincount((cell * (k + 1) + block).ravel(), minlength=h * w * (k + 1))
    return counts.reshape(h, w, k + 1).transpose(2, 0, 1).astype(np.float64)


def _average(
    classes: np.ndarray, lc_transform: Any, lc_crs: Any, cell_transform: Any, cell_crs: Any, shape: tuple[int, int], k: int
) -> np.ndarray:
    """Area-weighted shares ``(k + 1, h, w)`` (channel 0 = no-data) via GDAL's average."""
    from rasterio.transform import Affine
    from rasterio.warp import Resampling, reproject, transform_bounds
    from rasterio.windows import from_bounds

    # Crop to the cell grid's footprint and pad with no-data beyond the raster, so that cells
    # hanging off the land cover see explicit no-data (GDAL would otherwise average only the
    # part that exists and call a sliver-covered cell complete).
    gb = _bounds(cell_transform, shape)
    if cell_crs != lc_crs:
        gb = transform_bounds(cell_crs, lc_crs, *gb, densify_pts=21)
    win = from_bounds(*gb, transform=lc_transform)
    row0, col0 = int(np.floor(win.row_off)) - 2, int(np.floor(win.col_off)) - 2
    rows, cols = int(np.ceil(win.height)) + 5, int(np.ceil(win.width)) + 5
    block = _pad_crop(classes, row0, col0, rows, cols)
    src_transform = lc_transform @ Affine.translation(col0, row0)
    onehot = (block[None] == np.arange(-1, k, dtype=np.int8)[:, None, None]).astype(np.float32)
    out = np.zeros((k + 1, *shape), dtype=np.float32)
    reproject(
        onehot,
        out,
        src_transform=src_transform,
        src_crs=lc_crs,
        dst_transform=cell_transform,
        dst_crs=cell_crs,
        resampling=Resampling.average,
    )
    return out.astype(np.float64)


def class_fractions(
    landcover: np.ndarray,
    lc_transform: Any,
    lc_crs: Any,
    cell_grid: CellGrid,
    mapping: Mapping[int, int],
    *,
    nodata: float | None = None,
    min_coverage: float = 0.5,
    method: Literal["auto", "count", "average"] = "auto",
    strict: bool = False,
    unmapped: Counter[int] | None = None,
    lc_name: str = "land cover",
    grid_name: str = "imagery",
) -> tuple[np.ndarray, np.ndarray]:
    """Share of each class in each cell: ``(fractions (K, h, w) float32, valid (h, w) bool)``.

    ``landcover`` is a 2-D raster of codes on ``lc_transform``/``lc_crs`` (a window of a larger
    file is fine); ``mapping`` maps codes to class indices (:func:`load_mapping`). Fractions sum
    to 1 on valid cells and are 0 on invalid ones. Codes outside the mapping are added to
    ``unmapped`` when given (the caller reports them once), else warned about here; ``strict``
    makes them an error. ``method='auto'`` counts exactly when the grids nest.
    """
    if landcover.ndim != 2:
        raise ValueError(f"{lc_name}: expected a 2-D land-cover raster, got shape {landcover.shape}")
    if not 0.0 < min_coverage <= 1.0:
        raise ValueError(f"min_coverage must be in (0, 1], got {min_coverage}")
    cell_transform, cell_crs, shape = cell_grid
    shape = (int(shape[0]), int(shape[1]))
    lc_crs, cell_crs = _crs(lc_crs), _crs(cell_crs)
    k = len(CLASSES)
    if any(not -1 <= v < k for v in mapping.values()):
        raise ValueError(f"mapping values must be class indices in [-1, {k}), got {sorted(set(mapping.values()))}")

    check_overlap(
        _bounds(lc_transform, landcover.shape), lc_crs, _bounds(cell_transform, shape), cell_crs,
        lc_name=lc_name, img_name=grid_name,
    )
    classes, unm = apply_mapping(landcover, mapping, nodata=nodata, strict=strict, where=lc_name)
    if unmapped is not None:
        unmapped.update(unm)
    else:
        report_unmapped(unm, lc_name)

    nest = _nesting(lc_transform, lc_crs, cell_transform, cell_crs)
    if method == "count" and nest is None:
        raise ValueError(
            f"{lc_name}: method='count' needs the land-cover grid to nest in the cell grid of "
            f"{grid_name} (same CRS, integer pixel ratio, aligned edges); use 'average'"
        )
    if method not in ("auto", "count", "average"):
        raise ValueError(f"unknown method {method!r}; expected 'auto', 'count' or 'average'")
    if nest is not None and method != "average":
        shares = _count(classes, nest, shape, k)
        shares /= nest[0] * nest[1]
    else:
        shares = _average(classes, lc_transform, lc_crs, cell_transform, cell_crs, shape, k)

    mapped = shares[1:].sum(0)
    valid = mapped >= min_coverage * (1 - 1e-6)
    fractions = np.where(valid, shares[1:] / np.where(mapped > 0, mapped, 1.0), 0.0)
    return fractions.astype(np.float32), valid


def read_landcover_window(
    dataset: Any, transform: Any, crs: Any, shape: tuple[int, int], *, margin: int = 2
) -> tuple[np.ndarray, Any] | None:
    """Read the part of an open land-cover raster that covers a grid (plus a margin).

    Keeps memory bounded for continent-sized products: only the pixels under one chip are
    read. Returns ``(array, transform)`` or None when the grid lies outside the raster.
    """
    from rasterio.warp import transform_bounds
    from rasterio.windows import Window, from_bounds

    b = _bounds(transform, shape)
    if _crs(crs) != dataset.crs:
        b = transform_bounds(_crs(crs), dataset.crs, *b, densify_pts=21)
    win = from_bounds(*b, transform=dataset.transform)
    col0 = max(int(np.floor(win.col_off)) - margin, 0)
    row0 = max(int(np.floor(win.row_off)) - margin, 0)
    col1 = min(int(np.ceil(win.col_off + win.width)) + margin, dataset.width)
    row1 = min(int(np.ceil(win.row_off + win.height)) + margin, dataset.height)
    if col1 <= col0 or row1 <= row0:
        return None
    window = Window(col0, row0, col1 - col0, row1 - row0)
    return dataset.read(1, window=window), dataset.window_transform(window)
