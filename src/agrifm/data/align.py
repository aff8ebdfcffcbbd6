"""Pairing sources of different resolution over one footprint.

AgriFM takes e.g. a 256-px S2 window together with the ~85 px Landsat and ~5 px MODIS
covering the same ground: each source is read at its **native** resolution over the
footprint of a window of the reference (finest) grid, reprojected when its CRS differs.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import rasterio.warp
import rasterio.windows
from rasterio.coords import BoundingBox, disjoint_bounds
from rasterio.windows import Window

from agrifm.data.stack import ResamplingName, Stack, StackArray
from agrifm.errors import InputError

__all__ = ["footprint", "paired_windows"]


def footprint(stack: Stack, window: Window) -> BoundingBox:
    """Bounds ``(left, bottom, right, top)`` of a pixel window of ``stack``, in its CRS."""
    return BoundingBox(*rasterio.windows.bounds(window, stack.transform))


def _check_overlap(name: str, other: Stack, ref: Stack, bounds: BoundingBox) -> None:
    theirs = rasterio.warp.transform_bounds(ref.crs, other.crs, *bounds, densify_pts=21)
    if disjoint_bounds(theirs, other.bounds):
        raise InputError(
            f"source {name!r} ({other.path}) does not overlap the window {tuple(bounds)} of "
            f"{ref.path}: window in its CRS {tuple(round(v, 3) for v in theirs)}, "
            f"its bounds {tuple(round(v, 3) for v in other.bounds)}"
        )


def paired_windows(ref: Stack, window: Window, others: Mapping[str, Stack], *,
                   until: str | np.datetime64 | None = None,
                   resampling: ResamplingName = "average") -> dict[str, StackArray]:
    """Each other source over the footprint of ``window`` of ``ref``, at its native resolution.

    Sources in ``ref``'s CRS come back as their own native pixels covering the footprint
    (edges rounded to their grid); others are warped onto a grid over exactly the footprint
    in ``ref``'s CRS at their resolution. A source that does not overlap is an error.
    """
    bounds = footprint(ref, window)
    out = {}
    for name, other in others.items():
        _check_overlap(name, other, ref, bounds)
        out[name] = other.read_bounds(bounds, ref.crs, until=until, resampling=resampling)
    return out
