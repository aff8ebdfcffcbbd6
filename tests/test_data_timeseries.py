"""Gap filling, normalisation and frame selection (agrifm.data.timeseries)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from agrifm.data.timeseries import (
    fill_gaps,
    fill_series,
    fixed_frames,
    fraction_of_season,
    normalize,
    prepare_source,
    sample_frames,
    season_cutoff,
    until,
)
from agrifm.sensors import Source

NAN = np.nan


def test_fill_gaps_interpolates_linearly_between_frames_and_repeats_at_the_ends() -> None:
    x = np.array([NAN, 1, NAN, 3, NAN, NAN, 9, NAN], np.float32)[:, None]  # (T=8, C=1)
    filled, any_valid = fill_gaps(x)
    np.testing.assert_array_equal(filled[:, 0], [1, 1, 2, 3, 5, 7, 9, 9])
    assert any_valid.shape == () and bool(any_valid)


def test_fill_gaps_uses_dates_for_irregular_spacing() -> None:
    x = np.array([0, NAN, NAN, 10], np.float32)[:, None]
    dates = np.array(["2020-01-01", "2020-01-02", "2020-01-06", "2020-01-11"], "datetime64[D]")
    filled, _ = fill_gaps(x, dates=dates)
    np.testing.assert_allclose(filled[:, 0], [0, 1, 5, 10])


def test_fill_gaps_respects_valid_mask_and_flags_pixels_never_observed() -> None:
    x = np.arange(4 * 2 * 1 * 2, dtype=np.float32).reshape(4, 2, 1, 2)  # (T, C, H, W)
    valid = np.ones((4, 1, 2), bool)
    valid[1, 0, 0] = False  # a cloud: the stored value must not be used
    valid[:, 0, 1] = False  # never observed
    filled, any_valid = fill_gaps(x, valid)
    np.testing.assert_allclose(filled[1, :, 0, 0], (x[0, :, 0, 0] + x[2, :, 0, 0]) / 2)
    assert np.isnan(filled[:, :, 0, 1]).all()
    np.testing.assert_array_equal(any_valid, [[True, False]])


def test_fill_gaps_keeps_the_valid_bands_of_a_partly_missing_date() -> None:
    x = np.array([[0, 0], [NAN, 5], [2, 2]], np.float32)  # band 0 missing at t=1 only
    filled, _ = fill_gaps(x)
    np.testing.assert_array_equal(filled, [[0, 0], [1, 5], [2, 2]])


def test_fill_gaps_matches_per_pixel_np_interp() -> None:
    rng = np.random.default_rng(1)
    dates = np.datetime64("2021-01-01") + np.sort(rng.choice(200, 9, replace=False)).astype("timedelta64[D]")
    x = rng.normal(size=(9, 3, 4, 5)).astype(np.float32)
    valid = rng.random((9, 4, 5)) > 0.5
    valid[0, 0, 0] = valid[-1, 0, 0] = False
    valid[:, 3, 4] = False
    filled, any_valid = fill_gaps(np.where(valid[:, None], x, NAN), valid, dates=dates)
    t = dates.astype(np.int64)
    for r, c in np.ndindex(4, 5):
        ok = valid[:, r, c]
        assert any_valid[r, c] == ok.any()
        for b in range(3):
            if ok.any():
                want = np.interp(t, t[ok], x[ok, b, r, c])
                np.testing.assert_allclose(filled[:, b, r, c], want, rtol=1e-5, atol=1e-6)


def test_fill_series_handles_per_sample_dates_and_padding() -> None:
    values = np.array([[[0.0], [NAN], [4.0]], [[1.0], [3.0], [NAN]]], np.float32)  # (N=2, T=3, C=1)
    dates = np.array([["2020-01-01", "2020-01-02", "2020-01-05"],
                      ["2020-01-01", "2020-01-03", "NaT"]], "datetime64[D]")
    filled, any_valid = fill_series(values, dates)
    np.testing.assert_allclose(filled[..., 0], [[0, 1, 4], [1, 3, 3]])
    assert any_valid.tolist() == [True, True]


def test_normalize_and_band_count_error() -> None:
    x = np.random.default_rng(0).normal(size=(2, 3, 4, 4)).astype(np.float32)
    mean, std = [1.0, 2.0, 3.0], [0.5, 1.0, 2.0]
    z = normalize(x, mean, std)
    np.testing.assert_allclose(z[:, 2], (x[:, 2] - 3) / 2, rtol=1e-6)
    with pytest.raises(ValueError, match="2 values but data .* has 3 bands"):
        normalize(x, [0.0, 0.0], [1.0, 1.0])


def test_fixed_frames_are_evenly_spaced_and_repeat_when_too_few() -> None:
    np.testing.assert_array_equal(fixed_frames(23, 5), [0, 6, 11, 17, 22])
    idx = fixed_frames(100, 32)
    assert len(np.unique(idx)) == 32 and idx[0] == 0 and idx[-1] == 99
    np.testing.assert_array_equal(fixed_frames(3, 5), [0, 1, 1, 2, 2])


def test_sample_frames_sorted_unique_reproducible_and_padded() -> None:
    a = sample_frames(23, 16, np.random.default_rng(7))
    assert len(a) == 16 and len(np.unique(a)) == 16 and (np.diff(a) > 0).all()
    np.testing.assert_array_equal(a, sample_frames(23, 16, np.random.default_rng(7)))
    b = sample_frames(3, 5, np.random.default_rng(0))
    assert len(b) == 5 and set(b.tolist()) == {0, 1, 2} and (np.diff(b) >= 0).all()
    with pytest.raises(ValueError, match="cannot select 0 frames"):
        sample_frames(3, 0, np.random.default_rng(0))


def test_until_crosses_new_year() -> None:
    dates = np.array(["2013-09-14", "2013-09-30", "2013-10-16", "2013-11-01", "2013-11-17", "2013-12-03",
                      "2013-12-19", "2014-01-01", "2014-01-17", "2014-02-02", "2014-02-18"], "datetime64[D]")
    assert season_cutoff("2013-09-14", "01-31") == np.datetime64("2014-01-31")
    keep = until(dates, "01-31")
    np.testing.assert_array_equal(keep, np.arange(9))  # up to 2014-01-17
    np.testing.assert_array_equal(until(dates, "2014-01-17"), keep)
    np.testing.assert_array_equal(until(dates, "09-14"), [0])  # the start day itself
    with pytest.raises(ValueError, match="no frame on or before"):
        until(dates, "2013-01-01")


def test_fraction_of_season() -> None:
    np.testing.assert_array_equal(fraction_of_season(23, 0.5), np.arange(12))
    np.testing.assert_array_equal(fraction_of_season(10, 0.7), np.arange(7))
    assert len(fraction_of_season(23, 1.0)) == 23 and len(fraction_of_season(23, 0.01)) == 1
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        fraction_of_season(23, 0.0)


def test_prepare_source_outputs_finite_normalised_tensor_and_nodata() -> None:
    source = Source("TOY", ("A", "B"), 10.0, "x", mean=(10.0, 20.0), std=(2.0, 4.0))
    x = np.full((4, 2, 2, 2), NAN, np.float32)
    x[0, :, 0, 0], x[3, :, 0, 0] = (12, 24), (18, 24)  # pixel (0, 0): two observations
    x[:, :, :, 1] = 10.0  # column 1 fully observed; pixel (1, 0) never
    out, nodata = prepare_source(x, None, source, frames=np.array([1, 2]))
    assert out.dtype == torch.float32 and out.shape == (2, 2, 2, 2) and torch.isfinite(out).all()
    torch.testing.assert_close(out[:, :, 0, 0], torch.tensor([[2.0, 1.0], [3.0, 1.0]]))  # 14, 16 -> z
    assert out[:, :, 1, 0].eq(0).all()
    assert nodata.tolist() == [[False, False], [True, False]]
    with pytest.raises(ValueError, match="source 'TOY': expected \\(T, 2, H, W\\)"):
        prepare_source(np.zeros((4, 3, 2, 2)), None, source)
