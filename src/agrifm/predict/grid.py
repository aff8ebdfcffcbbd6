"""The map's output grid: the finest source's grid or the caller's CRS/resolution/bounds, and
the refusal of grids far finer than the sources or too large to hold."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import rasterio
import rasterio.errors
import rasterio.warp
import rasterio.windows
from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window

from agrifm.data.stack import Stack
from agrifm.errors import InputError, TooLargeError
from agrifm.predict.tiling import Rect

__all__ = ["OutputGrid", "output_grid", "footprint", "pixel_size", "overlaps", "check_grid_size",
           "MAX_PIXELS", "MAX_UPSAMPLING"]

MAX_PIXELS = 2**36  # ~69 Gpx: a 10 m map of ~6.9 million km2; larger requests are refused before any work
MAX_UPSAMPLING = 16  # output pixels finer than 1/16 of the finest source pixel add nothing but cost


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


def footprint(stack: Stack, crs: CRS) -> tuple[float, float, float, float]:
    """The stack's bounds in ``crs``."""
    b = tuple(stack.bounds)
    return b if stack.crs == crs else rasterio.warp.transform_bounds(stack.crs, crs, *b, densify_pts=21)


def pixel_size(stack: Stack, crs: CRS) -> tuple[float, float]:
    """(x, y) pixel size of ``stack`` in ``crs`` units."""
    if stack.crs == crs:
        return stack.res
    left, bottom, right, top = footprint(stack, crs)
    return (right - left) / stack.width, (top - bottom) / stack.height


def _finest(stacks: Mapping[str, Stack]) -> str:
    common = next(iter(stacks.values())).crs
    return min(stacks, key=lambda n: math.prod(pixel_size(stacks[n], common)))


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
        res = pixel_size(ref, dst)
    else:
        res = (float(resolution),) * 2 if np.isscalar(resolution) else tuple(map(float, resolution))  # type: ignore[arg-type]
        if len(res) != 2 or not all(math.isfinite(r) and r > 0 for r in res):
            raise InputError(f"--resolution must be a positive number (or an x, y pair), got {resolution}")
    left, bottom, right, top = tuple(bounds) if bounds is not None else footprint(ref, dst)
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


def overlaps(a: Sequence[float], b: Sequence[float]) -> bool:
    return min(a[2], b[2]) > max(a[0], b[0]) and min(a[3], b[3]) > max(a[1], b[1])



def check_grid_size(grid: OutputGrid, stacks: Mapping[str, Stack], resolution: Any) -> None:
    """Refuse, naming the option, a grid far finer than the sources or too large to hold."""
    finest = min(min(pixel_size(s, grid.crs)) for s in stacks.values())
    if resolution is not None and min(grid.res) * MAX_UPSAMPLING < finest:
        raise InputError(f"--resolution {resolution} is over {MAX_UPSAMPLING}x finer than the finest source "
                         f"pixel ({finest:g} {grid.crs.linear_units if grid.crs.is_projected else 'units'}): "
                         f"{grid.width:,} x {grid.height:,} px; choose a resolution of at least "
                         f"{finest / MAX_UPSAMPLING:g}")
    if grid.width * grid.height > MAX_PIXELS:
        raise TooLargeError(f"the output grid would be {grid.width:,} x {grid.height:,} px "
                            f"(over {MAX_PIXELS:,}): choose a coarser --resolution or smaller --bounds")

