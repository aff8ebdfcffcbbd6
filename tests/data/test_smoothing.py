"""Whittaker smoothing: the classic smoother on evenly spaced dates, divided differences on real ones."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from agrifm.data.smoothing import difference_penalty, whittaker, whittaker_matrix, whittaker_torch


def _dense_smoother(t: int, lam: float, order: int = 2) -> np.ndarray:
    """The smoother as agrifm computed it before: a dense inverse with plain differences."""
    d = np.diff(np.eye(t), n=order, axis=0)
    return np.linalg.inv(np.eye(t) + lam * d.T @ d)


@pytest.fixture
def series() -> np.ndarray:
    rng = np.random.default_rng(0)
    return np.sin(np.linspace(0, 6, 23))[None, :, None] + rng.normal(0, 0.1, (5, 23, 3))  # (N, T, C)


@pytest.mark.parametrize("order", [1, 2, 3])
def test_evenly_spaced_dates_give_the_classic_smoother(series: np.ndarray, order: int) -> None:
    expected = np.einsum("st,ntc->nsc", _dense_smoother(23, 5.0, order), series)
    dates = np.datetime64("2021-01-01") + 16 * np.arange(23)  # MOD13Q1's 16-day composites
    np.testing.assert_allclose(whittaker(series, 5.0, axis=1, order=order), expected, rtol=0, atol=1e-10)
    np.testing.assert_allclose(whittaker(series, 5.0, axis=1, order=order, dates=dates), expected, rtol=0, atol=1e-10)
    np.testing.assert_allclose(whittaker_matrix(23, 5.0, order), _dense_smoother(23, 5.0, order), atol=1e-10)
    assert whittaker(series.astype(np.float32), 5.0, axis=1, order=order).dtype == np.float32


def test_uneven_dates_penalise_curvature_in_time_not_in_index() -> None:
    days = np.array([0, 5, 10, 40, 45, 50, 90, 95, 100, 160], dtype=float)  # gaps from clouds
    line = 0.2 + 0.004 * days  # e.g. a steady green-up
    np.testing.assert_allclose(whittaker(line, 50.0, dates=days), line, atol=1e-12)  # a line in time is smooth
    assert np.abs(whittaker(line, 50.0) - line).max() > 0.01  # by index it looks bent, and was flattened
    np.testing.assert_allclose(whittaker(np.full(10, 3.0), 50.0, dates=days), 3.0)  # constants kept
    noisy = line + np.random.default_rng(1).normal(0, 0.05, 10)
    smooth = whittaker(noisy, 50.0, dates=days)
    assert np.abs(difference_penalty(10, 2, days) @ smooth).sum() < np.abs(difference_penalty(10, 2, days) @ noisy).sum()


def test_bad_dates_and_short_series() -> None:
    with pytest.raises(ValueError, match="strictly increasing"):
        whittaker(np.zeros(4), 1.0, dates=np.array([0, 1, 1, 2]))
    x = np.arange(2.0)
    assert whittaker(x, 10.0) is x  # too short for second differences: unchanged


def test_torch_version_matches(series: np.ndarray) -> None:
    got = whittaker_torch(torch.from_numpy(series), 5.0, dim=1)
    np.testing.assert_allclose(got.numpy(), whittaker(series, 5.0, axis=1), atol=1e-10)
