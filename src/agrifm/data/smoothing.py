"""Whittaker smoothing of time series (Eilers 2003), vectorised over pixels.

Sample libraries such as the Mato Grosso MOD13Q1 series were smoothed by their providers,
while scenes arrive raw; applying the same smoother to both puts them in one domain. The
smoother is linear and preserves constants, so smoothing normalised values equals
normalising smoothed values.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

__all__ = ["whittaker_matrix", "whittaker", "whittaker_torch"]


@lru_cache(maxsize=32)
def whittaker_matrix(t: int, lam: float, order: int = 2) -> np.ndarray:
    """(T, T) smoother S = (I + λ DᵀD)⁻¹ for evenly spaced series of length ``t``."""
    if t <= order:
        return np.eye(t)
    d = np.diff(np.eye(t), n=order, axis=0)
    return np.linalg.inv(np.eye(t) + lam * d.T @ d)


def whittaker(x: np.ndarray, lam: float, axis: int = 0, order: int = 2) -> np.ndarray:
    """Smooth ``x`` along ``axis`` (gap-free values; fill gaps first)."""
    if lam <= 0:
        return x
    s = whittaker_matrix(x.shape[axis], float(lam), order).astype(np.float32 if x.dtype == np.float32 else np.float64)
    moved = np.moveaxis(x, axis, 0)
    out = np.tensordot(s, moved, axes=(1, 0))
    return np.moveaxis(out, 0, axis).astype(x.dtype, copy=False)


def whittaker_torch(x: torch.Tensor, lam: float, dim: int = 1, order: int = 2) -> torch.Tensor:
    """Torch version, e.g. on (B, T, C, H, W) with ``dim=1``."""
    if lam <= 0:
        return x
    s = torch.as_tensor(whittaker_matrix(x.shape[dim], float(lam), order), dtype=x.dtype, device=x.device)
    return torch.movedim(torch.tensordot(s, torch.movedim(x, dim, 0), dims=([1], [0])), 0, dim)
