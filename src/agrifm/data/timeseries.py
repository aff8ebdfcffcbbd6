"""Time handling for one source: gap filling, normalisation and frame selection.

Readers hand over physical values with NaN where invalid (docs/CONVENTIONS.md); this module
turns them into what the model sees: each pixel's series linearly interpolated in time between
its valid observations, z-scored with the source statistics, pixels never observed set to the
band mean (0) and flagged as nodata. Frame selectors return *indices* into the date axis so
one choice applies to data, masks and dates alike.
"""

from __future__ import annotations

import datetime as _dt
import math
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Union

import numpy as np

from agrifm.errors import InputError

if TYPE_CHECKING:
    import torch

    from agrifm.sensors import Source

__all__ = [
    "as_dates",
    "days_since_epoch",
    "fill_gaps",
    "fill_series",
    "normalize",
    "check_finite",
    "sample_frames",
    "fixed_frames",
    "until",
    "season_cutoff",
    "fraction_of_season",
    "prepare_source",
]

DateLike = Union[str, np.datetime64, _dt.date]
Frames = Union[np.ndarray, int]  # a date array, or just its length T


# --------------------------------------------------------------------------- dates


def as_dates(values: object) -> np.ndarray:
    """ISO strings, bytes, ``datetime``s or datetime64 -> ``datetime64[D]`` (NaT kept)."""
    arr = np.asarray(values)
    if arr.dtype.kind == "S":
        arr = arr.astype(str)
    elif arr.dtype.kind == "O":
        arr = np.array([v.decode() if isinstance(v, bytes) else v for v in arr.ravel()],
                       dtype=object).reshape(arr.shape)
    try:
        return arr.astype("datetime64[D]")
    except (ValueError, TypeError) as e:
        raise InputError(f"cannot parse dates {arr.ravel()[:5].tolist()}...: {e}") from None


def days_since_epoch(dates: object) -> np.ndarray:
    """Dates as int64 days since 1970-01-01 (what the datasets hand to torch); NaT -> int64 min."""
    return as_dates(dates).astype(np.int64)


# --------------------------------------------------------------------------- gap filling


def fill_gaps(
    data: np.ndarray, valid: np.ndarray | None = None, *, dates: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Interpolate every series of ``data`` linearly in time across its gaps.

    ``data`` is ``(T, C, ...)`` (e.g. ``(T, C, H, W)`` or ``(T, C)``); a value is a gap where
    it is not finite or where ``valid`` ``(T, ...)`` is False. Before the first / after the
    last valid observation the nearest one is repeated. ``dates`` (``(T,)``, or ``(T, ...)``
    when each series has its own dates; NaT only on trailing padding) place the frames in
    time; without them frames are equally spaced. Gaps are per band, so a band missing on one
    date does not discard the others.

    Returns ``(filled float32, any_valid)``: ``any_valid`` ``(...)`` is True where every band
    had at least one valid value; elsewhere the series stays NaN (left to the caller, who
    sets the band mean and flags it as nodata). Fully vectorised: no loop over pixels.
    """
    x = np.asarray(data, dtype=np.float32)
    if x.ndim < 2:
        raise InputError(f"fill_gaps expects (T, C, ...) data, got shape {x.shape}")
    ok = np.isfinite(x)
    if valid is not None:
        v = np.asarray(valid, dtype=bool)
        if v.shape != x.shape[:1] + x.shape[2:]:
            raise InputError(f"valid mask shape {v.shape} does not match data {x.shape} (want (T, ...))")
        ok &= v[:, None]
    per_pixel = ok.all(axis=1, keepdims=True)
    if np.array_equal(per_pixel, ok.any(axis=1, keepdims=True)):
        ok = per_pixel  # bands agree: one set of indices for all bands (C times less memory)
    any_valid = ok.any(axis=0).all(axis=0)
    if ok.all():
        return x.copy(), any_valid
    return _interpolate(x, ok, _positions(dates, x)), any_valid


def _positions(dates: np.ndarray | None, x: np.ndarray) -> np.ndarray:
    """Time coordinate of each frame as float64 broadcastable to ``x`` (NaT -> NaN)."""
    t = x.shape[0]
    if dates is None:
        return np.arange(t, dtype=np.float64).reshape((t,) + (1,) * (x.ndim - 1))
    d = as_dates(dates)
    if d.shape[0] != t or (d.ndim > 1 and d.shape[1:] != x.shape[2:]):
        raise InputError(f"dates shape {d.shape} does not match data {x.shape} (want (T,) or (T, ...))")
    pos = np.where(np.isnat(d), np.nan, d.astype(np.int64).astype(np.float64))
    return pos.reshape((t,) + (1,) * (x.ndim - 1)) if d.ndim == 1 else pos[:, None]


def _interpolate(x: np.ndarray, ok: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Linear interpolation along axis 0 between the frames where ``ok`` (broadcast to ``x``)."""
    t = x.shape[0]
    frame = np.arange(t, dtype=np.int32).reshape((t,) + (1,) * (x.ndim - 1))
    prev = np.maximum.accumulate(np.where(ok, frame, -1), axis=0)  # last valid frame <= t
    nxt = np.flip(np.minimum.accumulate(np.flip(np.where(ok, frame, t), 0), axis=0), 0)  # first >= t
    never = nxt[:1] >= t  # (1, ...) series without any valid frame
    lo = np.where(prev < 0, nxt, prev)  # before the first valid frame: the next one
    hi = np.where(nxt >= t, lo, nxt)  # after the last valid frame: the previous one
    lo = np.where(never, 0, lo)
    hi = np.where(never, 0, hi)
    p_lo = np.take_along_axis(pos, lo, axis=0)  # take_along_axis broadcasts the other axes
    p_hi = np.take_along_axis(pos, hi, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        w = np.where((hi != lo) & (p_hi != p_lo), (pos - p_lo) / (p_hi - p_lo), 0.0).astype(np.float32)
    x_lo = np.take_along_axis(x, lo, axis=0)
    out = x_lo + w * (np.take_along_axis(x, hi, axis=0) - x_lo)
    out[np.broadcast_to(never, out.shape)] = np.nan
    return out


def fill_series(values: np.ndarray, dates: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """:func:`fill_gaps` for tables: ``values (N, T, C)``, ``dates (N, T)`` -> ``(filled, any_valid (N,))``.

    Padding (NaN values with NaT dates after a sample's last date) is filled with the last
    value, so fixed-length models see a flat tail rather than NaN.
    """
    v = np.asarray(values, dtype=np.float32)
    if v.ndim != 3:
        raise InputError(f"fill_series expects (N, T, C) values, got shape {v.shape}")
    pos = None if dates is None else as_dates(dates).T  # (T, N)
    filled, any_valid = fill_gaps(np.moveaxis(v, 0, -1), dates=pos)  # (T, C, N)
    return np.moveaxis(filled, -1, 0), any_valid


# --------------------------------------------------------------------------- normalisation


def _band_stat(stat: Sequence[float] | np.ndarray, x: np.ndarray, axis: int, what: str) -> np.ndarray:
    s = np.asarray(stat, dtype=np.float32)
    if s.shape != (x.shape[axis],):
        raise InputError(f"{what} has {s.size} values but data {x.shape} has {x.shape[axis]} bands on axis {axis}")
    shape = [1] * x.ndim
    shape[axis] = -1
    return s.reshape(shape)


def normalize(data: np.ndarray, mean: Sequence[float], std: Sequence[float], *, axis: int = 1) -> np.ndarray:
    """Per-band z-score ``(x - mean) / std``; ``axis`` is the band axis (1 for ``(T, C, H, W)``)."""
    x = np.asarray(data, dtype=np.float32)
    return (x - _band_stat(mean, x, axis, "mean")) / _band_stat(std, x, axis, "std")


def check_finite(x: np.ndarray, what: str) -> np.ndarray:
    """Raise naming ``what`` (e.g. the source) and the first bad index if ``x`` has NaN/inf."""
    bad = ~np.isfinite(x)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise InputError(f"{what}: {int(bad.sum())} non-finite values in array {x.shape} "
                         f"(first at index {first}); check the statistics and the gap filling")
    return x


# --------------------------------------------------------------------------- frame selection


def _length(dates: Frames) -> int:
    return int(dates) if isinstance(dates, (int, np.integer)) else len(dates)


def _check_request(n: int, t: int) -> None:
    if n < 1 or t < 1:
        raise InputError(f"cannot select {n} frames from a series of {t}")


def fixed_frames(dates: Frames, n: int) -> np.ndarray:
    """``n`` evenly spaced frame indices, first and last included (deterministic: evaluation).

    With fewer than ``n`` frames, frames are repeated (each at least once, in time order) so
    the output always has ``n`` entries.
    """
    t = _length(dates)
    _check_request(n, t)
    return np.floor(np.linspace(0, t - 1, n) + 0.5).astype(np.int64)


def sample_frames(dates: Frames, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` random frame indices in time order, without replacement (training augmentation).

    With fewer than ``n`` frames every frame is kept and random ones are repeated to reach ``n``.
    """
    t = _length(dates)
    _check_request(n, t)
    if t >= n:
        idx = rng.choice(t, size=n, replace=False)
    else:
        idx = np.concatenate([np.arange(t), rng.choice(t, size=n - t, replace=True)])
    return np.sort(idx).astype(np.int64)


def season_cutoff(start: DateLike, cutoff: DateLike) -> np.datetime64:
    """The cut-off date: ``cutoff`` itself, or for ``'MM-DD'`` its first occurrence on/after ``start``.

    So a season starting 2013-09-14 with ``'01-31'`` ends on 2014-01-31 (crossing New Year).
    """
    start_d = as_dates(start)[()]
    if isinstance(cutoff, str) and re.fullmatch(r"\d{2}-\d{2}", cutoff):
        year = int(start_d.astype("datetime64[Y]").astype(np.int64)) + 1970
        for y in (year, year + 1):
            try:
                c = np.datetime64(f"{y:04d}-{cutoff}", "D")
            except ValueError:  # e.g. 02-29 in a common year
                continue
            if c >= start_d:
                return c
        raise InputError(f"cut-off {cutoff!r} is not a valid month-day after {start_d}")
    return as_dates(cutoff)[()]


def until(dates: np.ndarray, cutoff: DateLike, *, what: str = "until") -> np.ndarray:
    """Indices of the frames on or before the cut-off (early-season mapping); the one rule for
    "frames up to a date" (stacks and scene mapping use it too).

    ``cutoff`` is a date, or ``'MM-DD'`` relative to the first date (see :func:`season_cutoff`).
    ``what`` names the series in errors (a file, a source).
    """
    d = as_dates(dates)
    real = d[~np.isnat(d)]
    if real.size == 0:
        raise InputError(f"{what}: the series has no dates")
    c = season_cutoff(real[0], cutoff)
    keep = np.flatnonzero(d <= c)
    if keep.size == 0:
        raise InputError(f"{what}: no frame on or before {c} (series starts {real[0]})")
    return keep


def fraction_of_season(dates: Frames, f: float) -> np.ndarray:
    """Indices of the first ``ceil(f * T)`` frames (at least one), ``0 < f <= 1``."""
    t = _length(dates)
    if not 0.0 < f <= 1.0:
        raise InputError(f"fraction of season must be in (0, 1], got {f}")
    k = max(1, math.ceil(f * t - 1e-9))  # tolerance: 0.7 * 10 must give 7, not 8
    return np.arange(min(k, t), dtype=np.int64)


# --------------------------------------------------------------------------- one source


def prepare_source(
    arr: np.ndarray,
    valid: np.ndarray | None,
    source: Source,
    *,
    frames: np.ndarray | None = None,
    dates: np.ndarray | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Physical ``(T, C, H, W)`` -> model input: gap-filled, frame-selected, normalised.

    Gaps are filled using all frames before ``frames`` (indices) are taken, so dropped frames
    still inform the interpolation. Returns ``(FloatTensor (T', C, H, W), nodata BoolTensor
    (H, W))``; nodata pixels (no valid value in some band) are 0 = the band mean there.
    """
    import torch

    x = np.asarray(arr, dtype=np.float32)
    if x.ndim != 4 or x.shape[1] != source.num_bands:
        raise InputError(f"source {source.name!r}: expected (T, {source.num_bands}, H, W) "
                         f"for bands {list(source.bands)}, got shape {x.shape}")
    filled, any_valid = fill_gaps(x, valid, dates=dates)
    if frames is not None:
        filled = filled[np.asarray(frames)]
    z = normalize(filled, source.mean, source.std)
    z[np.isnan(filled)] = 0.0  # never observed: the band mean
    check_finite(z, f"source {source.name!r}")
    return torch.from_numpy(z), torch.from_numpy(~any_valid)
