"""Whittaker smoothing of time series (Eilers 2003), vectorised over pixels.

Sample libraries such as the Mato Grosso MOD13Q1 series were smoothed by their providers,
while scenes arrive raw; applying the same smoother to both puts them in one domain. The
smoother is linear and preserves constants, so smoothing normalised values equals
normalising smoothed values.

The smoothed series ``z`` solves the sparse banded system ``(I + λ DᵀD) z = y`` (scipy's sparse
LU; no dense inverse). ``D`` takes divided differences over the real dates (Eilers 2003,
``ddmat``), measured in the series' median date step, so uneven sampling (clouds, missed
passes) is penalised by time, not by index, and evenly spaced dates give the classic smoother
with ``D`` the plain differences: ``λ`` means the same for both.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from scipy import sparse
from scipy.sparse.linalg import splu

__all__ = ["whittaker_matrix", "whittaker", "whittaker_torch", "difference_penalty"]


def difference_penalty(t: int, order: int = 2, dates: np.ndarray | None = None) -> sparse.csr_matrix:
    """``(t - order, t)`` sparse ``D``: differences of ``order`` over ``dates`` (default: evenly
    spaced), divided by the date gaps in units of the median step and scaled by ``k`` at
    step ``k``, so that evenly spaced dates give exactly the plain differences."""
    if dates is None:
        x = np.arange(t, dtype=np.float64)
    else:
        x = np.asarray(dates)
        x = (x.astype("datetime64[D]") if np.issubdtype(x.dtype, np.datetime64) else x).astype(np.float64)
        if x.shape != (t,) or np.any(np.diff(x) <= 0):
            raise ValueError(f"dates must be {t} strictly increasing values, got shape {x.shape}: {x}")
    if t > 1:
        x = x / np.median(np.diff(x))
    d = sparse.eye(t, format="csr")
    for k in range(1, order + 1):
        d = sparse.diags(k / (x[k:] - x[:-k])) @ (d[1:] - d[:-1])
    return d.tocsr()


def _system(t: int, lam: float, order: int, dates: np.ndarray | None) -> sparse.csc_matrix:
    d = difference_penalty(t, order, dates)
    return (sparse.eye(t) + lam * (d.T @ d)).tocsc()


@lru_cache(maxsize=32)
def whittaker_matrix(t: int, lam: float, order: int = 2) -> np.ndarray:
    """(T, T) smoother S = (I + λ DᵀD)⁻¹ for evenly spaced series of length ``t`` (for batched
    matrix products, e.g. on a GPU), from the sparse solve of the identity."""
    if t <= order:
        return np.eye(t)
    return splu(_system(t, lam, order, None)).solve(np.eye(t))


def whittaker(x: np.ndarray, lam: float, axis: int = 0, order: int = 2,
              dates: np.ndarray | None = None) -> np.ndarray:
    """Smooth ``x`` along ``axis`` (gap-free values; fill gaps first). ``dates``: the ``T``
    acquisition dates (datetime64 or numbers, strictly increasing); None = evenly spaced."""
    t = x.shape[axis]
    if lam <= 0 or t <= order:
        return x
    moved = np.moveaxis(x, axis, 0)
    z = splu(_system(t, float(lam), order, dates)).solve(moved.reshape(t, -1).astype(np.float64))
    return np.moveaxis(z.reshape(moved.shape), 0, axis).astype(x.dtype, copy=False)


def whittaker_torch(x: torch.Tensor, lam: float, dim: int = 1, order: int = 2) -> torch.Tensor:
    """Torch version for evenly spaced series, e.g. on (B, T, C, H, W) with ``dim=1``."""
    if lam <= 0:
        return x
    s = torch.as_tensor(whittaker_matrix(x.shape[dim], float(lam), order), dtype=x.dtype, device=x.device)
    return torch.movedim(torch.tensordot(s, torch.movedim(x, dim, 0), dims=([1], [0])), 0, dim)
