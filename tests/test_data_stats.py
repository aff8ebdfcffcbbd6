"""Per-band statistics over valid values (agrifm.data.stats) and the `agrifm stats` command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import need

from agrifm.data.stats import RunningStats, band_stats, compute_stats, main
from agrifm.data.tables import read_table


def _masked_reference(x: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """numpy's nanmean/nanstd per band of (T, C, H, W) with invalid pixel-dates set to NaN."""
    y = np.where(valid[:, None], x, np.nan).astype(np.float64)
    y = np.moveaxis(y, 1, 0).reshape(x.shape[1], -1)
    return np.nanmean(y, axis=1), np.nanstd(y, axis=1)


def test_stats_equal_nanmean_nanstd_over_valid_values() -> None:
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(5, 3, 6, 7)) * [[[[1.0]], [[10.0]], [[1e4]]]] + 3e3).astype(np.float32)
    valid = rng.random((5, 6, 7)) > 0.3
    x[0, 1, 0, 0] = np.nan  # a NaN inside a "valid" pixel-date is skipped too
    mean, std = compute_stats((x, valid))
    valid_b = np.broadcast_to(valid[:, None], x.shape) & np.isfinite(x)
    y = np.moveaxis(np.where(valid_b, x, np.nan).astype(np.float64), 1, 0).reshape(3, -1)
    np.testing.assert_allclose(mean, np.nanmean(y, axis=1), rtol=1e-12)
    np.testing.assert_allclose(std, np.nanstd(y, axis=1), rtol=1e-10)


def test_streaming_in_chunks_equals_one_pass() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(5.0, 2.0, size=(12, 2, 4, 4)).astype(np.float32)
    valid = rng.random((12, 4, 4)) > 0.5
    s = band_stats(((x[i:i + 5], valid[i:i + 5]) for i in range(0, 12, 5)), bands=["a", "b"])
    mean, std = _masked_reference(x, valid)
    np.testing.assert_allclose(s.mean, mean, rtol=1e-12)
    np.testing.assert_allclose(s.std, std, rtol=1e-10)
    assert s.bands == ["a", "b"] and s.count.tolist() == [valid.sum()] * 2


def test_band_without_valid_values_and_band_mismatch_are_errors() -> None:
    r = RunningStats(2)
    with pytest.raises(ValueError, match="shape \\(3, 3\\) has no 2 bands on axis 1"):
        r.update(np.zeros((3, 3)))
    r.update(np.array([[1.0, np.nan]]))
    with pytest.raises(ValueError, match=r"no valid value for band\(s\) \['NIR'\]"):
        r.result(["RED", "NIR"])


def test_table_stats(demo_data_dir: Path) -> None:
    table = read_table(need(demo_data_dir / "mato_grosso_modis" / "samples" / "mato_grosso_train.csv"))
    s = band_stats(table, bands=["NDVI", "EVI"])
    v = table.values.astype(np.float64)
    np.testing.assert_allclose(s.mean, np.nanmean(v[..., [5, 4]], axis=(0, 1)), rtol=1e-10)
    np.testing.assert_allclose(s.std, np.nanstd(v[..., [5, 4]], axis=(0, 1)), rtol=1e-8)
    assert s.count.tolist() == [1327 * 23] * 2


def test_cli_on_h5_split_writes_json(data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from agrifm.data.h5 import read_h5_sample, sample_paths

    root = need(data_dir / "pastis_geobench")
    out = tmp_path / "s1a.json"
    assert main([str(root), "--source", "S1A", "--split", "val", "--json", str(out)]) == 0
    assert "VV/VH" in capsys.readouterr().out
    got = json.loads(out.read_text())
    x = np.concatenate([read_h5_sample(f, ["S1A"]).inputs["S1A"] for f in sample_paths(root, "val")])
    mean, std = _masked_reference(x, np.ones((x.shape[0], 32, 32), bool))
    assert got["bands"] == ["VV", "VH", "VV/VH"] and got["count"] == [2 * 3 * 32 * 32] * 3
    np.testing.assert_allclose(got["mean"], mean, rtol=1e-10)
    np.testing.assert_allclose(got["std"], std, rtol=1e-8)


def test_geotiff_stack_skips_nodata(tmp_path: Path) -> None:
    rasterio = pytest.importorskip("rasterio")
    from rasterio.transform import from_origin

    rng = np.random.default_rng(2)
    frames = rng.integers(0, 10000, size=(2, 5, 6)).astype(np.uint16)
    frames[0, :2] = 65535  # nodata rows
    for i, day in enumerate(["2021-03-01", "2021-04-01"]):
        with rasterio.open(tmp_path / f"NDVI_{day}.tif", "w", driver="GTiff", width=6, height=5, count=1,
                           dtype="uint16", nodata=65535, crs="EPSG:32631",
                           transform=from_origin(600000, 5600000, 10, 10)) as dst:
            dst.write(frames[i], 1)
    s = band_stats(tmp_path)
    values = frames[frames != 65535].astype(np.float64)
    np.testing.assert_allclose([s.mean[0], s.std[0]], [values.mean(), values.std()], rtol=1e-10)
    assert s.count.tolist() == [values.size]
