"""GeoTIFF stacks on the real shared datasets: layouts, scaling, nodata, masks, windows, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

rasterio = pytest.importorskip("rasterio")
from rasterio.windows import Window, bounds as window_bounds  # noqa: E402

from agrifm.data.align import paired_windows  # noqa: E402
from agrifm.data.stack import date_from_name, open_stack  # noqa: E402

S2_AGRIFM = ["B02", "B03", "B04", "B08", "B05", "B06", "B07", "B8A", "B11", "B12"]


@pytest.fixture
def sinop(demo_data_dir: Path) -> Path:
    return demo_data_dir / "mato_grosso_modis" / "sinop_cube"


@pytest.fixture
def belgium(data_dir: Path) -> Path:
    return data_dir / "worldcereal_belgium"


@pytest.fixture
def slovenia(data_dir: Path) -> Path:
    return data_dir / "eolearn_slovenia"


def test_date_from_name() -> None:
    assert str(date_from_name("MOD13Q1_h12v10_NDVI_2013-09-14")[0]) == "2013-09-14T00:00:00"
    assert date_from_name("S2_2021-03")[0] == np.datetime64("2021-03-01")
    assert date_from_name("T31UFS_20210317_B04")[0] == np.datetime64("2021-03-17")
    assert date_from_name("MOD13Q1.A2013257.h12v10")[0] == np.datetime64("2013-09-14")
    assert date_from_name("LULC") is None and date_from_name("tile_32631_h12v10") is None


def test_sinop_single_band_files(sinop: Path) -> None:
    stack = open_stack(sinop, bands=["NDVI", "EVI"])
    arr = stack.read()
    assert arr.data.shape == (23, 2, 144, 254) and arr.data.dtype == np.float32
    assert arr.bands == ["NDVI", "EVI"] and arr.valid.all()
    timeline = np.array((sinop / "timeline.txt").read_text().split(), "datetime64[D]")
    assert (arr.dates == timeline).all() and (np.diff(arr.dates.astype(int)) > 0).all()
    assert -0.2 < np.nanmin(arr.data) and np.nanmax(arr.data) < 1.03
    with rasterio.open(sinop / "MOD13Q1_h12v10_EVI_2014-01-01.tif") as src:  # scale 1e-4 applied
        np.testing.assert_allclose(arr.data[7, 1], src.read(1) * 1e-4, rtol=1e-6)
    assert sorted(open_stack(sinop).bands) == ["EVI", "NDVI"]
    early = stack.read(Window(0, 0, 4, 4), until="2013-12-31")
    assert early.dates[-1] <= np.datetime64("2013-12-31") and len(early.dates) == 7
    # the same rule as data.timeseries.until: 'MM-DD' counts from the first date; errors name the stack
    assert (stack.read(Window(0, 0, 4, 4), until="12-31").dates == early.dates).all()
    with pytest.raises(ValueError, match=r"stack .*no frame on or before 2000-01-01"):
        stack.read(Window(0, 0, 4, 4), until="2000-01-01")


def test_belgium_multiband_nodata_and_band_map(belgium: Path) -> None:
    stack = open_stack(belgium / "test_cube_100x100", bands=S2_AGRIFM, band_map={"B8A": "B08"})
    arr = stack.read()
    assert arr.data.shape == (12, 10, 100, 100) and stack.dates[0] == np.datetime64("2020-11-01")
    empty = np.isin(arr.dates, np.array(["2020-12-01", "2021-01-01"], "datetime64[D]"))
    assert not arr.valid[empty].any() and np.isnan(arr.data[empty]).all()
    assert arr.valid[~empty].all() and np.nanmax(arr.data) == 16008
    np.testing.assert_array_equal(arr.data[:, 7], arr.data[:, 3])  # B8A <- B08
    with pytest.raises(ValueError, match=r"'B8A'.*test_cube_100x100.*B02"):
        open_stack(belgium / "test_cube_100x100", bands=S2_AGRIFM)


def test_slovenia_band_per_date_with_masks(slovenia: Path) -> None:
    stack = open_stack(slovenia / "NDVI.tif", mask=slovenia / "CLM.tif")
    arr = stack.read()
    with rasterio.open(slovenia / "CLM.tif") as src:
        clm = src.read()
    assert arr.data.shape == (68, 1, 101, 100) and stack.bands == ["NDVI"]
    np.testing.assert_array_equal(arr.valid, clm == 0)
    assert np.isnan(arr.data[:, 0][clm == 1]).all() and np.isfinite(arr.data[:, 0][clm == 0]).all()
    assert (np.diff(stack.timestamps.astype(np.int64)) > 0).all()
    valid = open_stack(slovenia, bands=["NDVI"], mask=slovenia / "IS_VALID.tif", mask_kind="valid")
    assert abs(valid.read().valid.mean() - 0.604) < 0.001
    with pytest.raises(ValueError, match=r"CLM.*NDVI.*pass bands="):
        open_stack(slovenia)
    s2 = open_stack(slovenia, bands=["B02", "B08"])  # the dated 13-band L1C files
    assert s2.shape == (5, 2, 101, 100)
    with pytest.raises(ValueError, match="mask.*dates"):
        open_stack(slovenia, bands=["B02"], mask=slovenia / "CLM.tif")


def test_sidecar_dates(tmp_path: Path) -> None:
    profile = dict(driver="GTiff", width=4, height=3, count=3, dtype="int16", crs="EPSG:32631",
                   transform=rasterio.transform.from_origin(0, 30, 10, 10), nodata=-1)
    data = np.arange(36, dtype=np.int16).reshape(3, 3, 4)
    data[1, 0, 0] = -1
    with rasterio.open(tmp_path / "LAI.tif", "w", **profile) as dst:
        dst.write(data)
        dst.scales = (0.5,) * 3
    (tmp_path / "dates.txt").write_text("2020-01-05\n2020-01-15\n2020-01-25\n")
    arr = open_stack(tmp_path / "LAI.tif").read()
    assert arr.bands == ["LAI"] and str(arr.dates[1]) == "2020-01-15"
    assert not arr.valid[1, 0, 0] and np.isnan(arr.data[1, 0, 0, 0]) and arr.data[2, 0, 2, 3] == 17.5


def test_window_reads_match_full_read(belgium: Path) -> None:
    stack = open_stack(belgium / "inference_area_50x48", bands=["B04", "B08"])
    full = stack.read()
    inner = stack.read(Window(5, 7, 20, 10))
    np.testing.assert_array_equal(inner.data, full.data[:, :, 7:17, 5:25])
    assert inner.transform.c == stack.transform.c + 50
    edge = stack.read(Window(-3, 45, 10, 10))  # boundless: outside is NaN / invalid
    assert edge.data.shape == (20, 2, 10, 10) and not edge.valid[:, 5:, :].any()
    np.testing.assert_array_equal(edge.data[:, :, :5, 3:], full.data[:, :, 45:, :7])
    clipped = stack.read(Window(-3, 45, 10, 10), boundless=False)
    assert clipped.data.shape == (20, 2, 5, 7)


def _write_aggregate(stack, folder: Path, factor: int) -> np.ndarray:
    """A coarser copy of ``stack`` (NaN-aware block means), one multi-band file per date."""
    full = stack.read()
    t, c, h, w = full.data.shape
    h, w = h // factor, w // factor
    blocks = full.data[:, :, : h * factor, : w * factor].reshape(t, c, h, factor, w, factor)
    with np.errstate(invalid="ignore"), pytest.warns(RuntimeWarning):
        agg = np.nanmean(blocks, axis=(3, 5)).astype(np.float32)
    profile = dict(driver="GTiff", width=w, height=h, count=c, dtype="float32", crs=stack.crs,
                   nodata=float("nan"), transform=stack.transform @ rasterio.Affine.scale(factor))
    for i, day in enumerate(full.dates):
        with rasterio.open(folder / f"L30_{day}.tif", "w", **profile) as dst:
            dst.write(agg[i])
            dst.descriptions = tuple(full.bands)
    return agg


def test_read_bounds_pairs_a_coarse_copy(belgium: Path, tmp_path: Path) -> None:
    s2 = open_stack(belgium / "inference_area_50x48", bands=["B04", "B08"])
    agg = _write_aggregate(s2, tmp_path, 3)  # 30 m, 16 x 16 px; 2020-12 / 2022-02 partly nodata
    coarse = open_stack(tmp_path)
    window = Window(6, 9, 30, 24)
    got = coarse.read_bounds(window_bounds(window, s2.transform))
    assert got.data.shape == (20, 2, 8, 10)
    np.testing.assert_array_equal(got.data, agg[:, :, 3:11, 2:12])
    assert (got.valid == np.isfinite(agg[:, 0, 3:11, 2:12])).all()
    paired = paired_windows(s2, window, {"L30": coarse})["L30"]
    np.testing.assert_array_equal(paired.data, got.data)
    # resampling the fine stack onto the coarse grid averages valid pixels only
    down = s2.read_bounds(coarse.bounds, shape=(16, 16))
    np.testing.assert_allclose(down.data, agg, rtol=1e-5)
    assert (down.valid == np.isfinite(agg).all(axis=1)).all() and not down.valid.all()


def test_read_bounds_reprojects(belgium: Path, sinop: Path) -> None:
    s2 = open_stack(belgium / "inference_area_50x48", bands=["B04"])
    native = s2.read(Window(10, 10, 30, 30))
    utm = window_bounds(Window(10, 10, 30, 30), s2.transform)
    lonlat = rasterio.warp.transform_bounds(s2.crs, "EPSG:4326", *utm)
    warped = s2.read_bounds(lonlat, "EPSG:4326", resampling="bilinear")
    assert warped.crs.to_epsg() == 4326 and 20 <= warped.data.shape[2] <= 40
    frame = 10  # a clear month
    assert warped.valid[frame].mean() > 0.95
    assert abs(np.nanmean(warped.data[frame]) / np.nanmean(native.data[frame]) - 1) < 0.03
    modis = open_stack(sinop)
    with pytest.raises(ValueError, match="'modis'.*does not overlap"):
        paired_windows(s2, Window(0, 0, 10, 10), {"modis": modis})


def test_errors_name_files(belgium: Path, tmp_path: Path) -> None:
    a = belgium / "test_cube_100x100" / "S2_2021-03.tif"
    b = belgium / "inference_area_50x48" / "S2_2021-04.tif"
    with pytest.raises(ValueError, match=r"S2_2021-04\.tif and .*S2_2021-03\.tif.*different grids"):
        open_stack([a, b])
    bad = tmp_path / "S2_2021-05.tif"
    bad.write_bytes(b"this is not a GeoTIFF" * 20)
    with pytest.raises(ValueError, match=r"cannot read raster .*S2_2021-05\.tif"):
        open_stack([a, bad])
    with pytest.raises(ValueError, match=r"band\(s\) \['B8A'\] not in stack"):
        open_stack([a]).read(bands=["B8A"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no GeoTIFF"):
        open_stack(tmp_path / "empty")
