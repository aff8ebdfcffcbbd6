"""Land-cover mappings, class fractions and the ``pretrain-data`` builder on the Slovenia patch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

rasterio = pytest.importorskip("rasterio")
from rasterio.transform import Affine  # noqa: E402

from agrifm.pretrain.fractions import NoOverlapError, class_fractions  # noqa: E402
from agrifm.pretrain.landcover import (  # noqa: E402
    CLASSES,
    NODATA,
    PRESETS,
    UnmappedCodesError,
    apply_mapping,
    load_mapping,
)
from conftest import need  # noqa: E402


@pytest.fixture
def slovenia(data_dir: Path) -> Path:
    return need(data_dir / "eolearn_slovenia")


@pytest.fixture
def lulc(slovenia: Path) -> tuple[np.ndarray, Affine, object]:
    with rasterio.open(slovenia / "LULC.tif") as src:
        return src.read(1), src.transform, src.crs


# -- mappings ----------------------------------------------------------------------------------


def test_presets_and_user_mappings(tmp_path: Path) -> None:
    assert CLASSES == ("cropland", "forest", "shrubland", "grassland", "wetland", "water", "impervious", "bare")
    glc = load_mapping(None)
    assert glc == PRESETS["glc_fcs30d"]
    assert [glc[c] for c in (10, 62, 120, 140, 150, 185, 190, 201, 210)] == [0, 1, 2, 3, 7, 4, 6, 7, 5]
    assert glc[220] == glc[0] == glc[250] == NODATA
    wc, dw, eo = load_mapping("worldcover"), load_mapping("dynamic_world"), load_mapping("EOLEARN_LULC")
    assert (wc[10], wc[50], wc[70], wc[95], wc[100]) == (1, 6, NODATA, 4, 3)
    assert (dw[0], dw[3], dw[8]) == (5, 4, NODATA)
    assert (eo[1], eo[7], eo[8], eo[10], eo[0]) == (0, 3, 6, NODATA, NODATA)

    spec = tmp_path / "classes.json"
    spec.write_text(json.dumps({"1": "cropland", "2": "Forest", "3": None, "4": "nodata"}))
    assert load_mapping(spec) == {1: 0, 2: 1, 3: NODATA, 4: NODATA}
    assert load_mapping({5: "water"}) == {5: 5}
    with pytest.raises(ValueError, match="unknown class 'orchard'"):
        load_mapping({"1": "orchard"})
    with pytest.raises(ValueError, match="neither a preset"):
        load_mapping(tmp_path / "missing.json")


def test_unmapped_codes_are_counted_reported_or_rejected(lulc) -> None:
    lc, transform, crs = lulc
    mapping = {1: 0, 2: 1, 3: 3}  # leaves 0, 4 and 8 out
    classes, unmapped = apply_mapping(lc, mapping)
    assert unmapped == {c: int((lc == c).sum()) for c in (0, 4, 8)}
    assert (classes[lc == 4] == NODATA).all() and (classes[lc == 2] == 1).all()
    grid = (transform @ Affine.scale(4), crs, (25, 25))
    with pytest.warns(UserWarning, match=r"codes outside the class mapping.*\b4: 358\b"):
        class_fractions(lc, transform, crs, grid, mapping)
    with pytest.raises(UnmappedCodesError, match="LULC.tif"):
        class_fractions(lc, transform, crs, grid, mapping, strict=True, lc_name="LULC.tif")


# -- fractions ---------------------------------------------------------------------------------


def test_fractions_equal_brute_force_count_on_nested_grid(lulc) -> None:
    lc, transform, crs = lulc
    mapping = load_mapping("eolearn_lulc")
    cell, shape = 4, (26, 25)  # the last row of cells hangs 3 px off the raster
    fr, ok = class_fractions(lc, transform, crs, (transform @ Affine.scale(cell), crs, shape), mapping)
    assert fr.shape == (len(CLASSES), *shape) and fr.dtype == np.float32
    for i in range(shape[0]):
        for j in range(shape[1]):
            block = lc[i * cell : (i + 1) * cell, j * cell : (j + 1) * cell]
            classes = [mapping[v] for v in block.ravel().tolist() if mapping[v] != NODATA]
            assert ok[i, j] == (len(classes) >= 0.5 * cell * cell)
            expect = np.bincount(classes, minlength=len(CLASSES)) / max(len(classes), 1)
            np.testing.assert_allclose(fr[:, i, j], expect if ok[i, j] else 0, atol=1e-6)
    np.testing.assert_allclose(fr[:, ok].sum(0), 1, atol=1e-6)
    assert not ok[-1].any() and ok.sum() > 500


def test_fractions_resampled_grids(lulc) -> None:
    lc, transform, crs = lulc
    mapping = load_mapping("eolearn_lulc")
    grid = (transform @ Affine.scale(4), crs, (25, 25))
    exact, ok = class_fractions(lc, transform, crs, grid, mapping, method="count")
    avg, ok2 = class_fractions(lc, transform, crs, grid, mapping, method="average")
    np.testing.assert_array_equal(ok, ok2)
    np.testing.assert_allclose(avg, exact, atol=1e-5)
    # Another CRS and a non-nesting cell size: still shares of mapped area, close overall.
    from rasterio.warp import transform_bounds

    w, s, e, n = transform_bounds(crs, "EPSG:4326", *rasterio.transform.array_bounds(101, 100, transform))
    geo = (rasterio.transform.from_bounds(w, s, e, n, 13, 11), "EPSG:4326", (11, 13))
    fr, ok3 = class_fractions(lc, transform, crs, geo, mapping)
    np.testing.assert_allclose(fr[:, ok3].sum(0), 1, atol=1e-5)
    assert ok3.mean() > 0.6
    assert abs(fr[1, ok3].mean() - exact[1, ok].mean()) < 0.05  # forest share
    with pytest.raises(ValueError, match="nest"):
        class_fractions(lc, transform, crs, geo, mapping, method="count")


def test_non_overlapping_landcover_is_a_clear_error(lulc) -> None:
    lc, transform, crs = lulc
    far = (Affine.translation(200_000, 0) @ transform @ Affine.scale(4), crs, (25, 25))
    with pytest.raises(NoOverlapError, match=r"LULC\.tif \(bounds \(465181\.052.*does not overlap chip A \(bounds \(665181"):
        class_fractions(lc, transform, crs, far, load_mapping("eolearn_lulc"), lc_name="LULC.tif", grid_name="chip A")


# -- builder -----------------------------------------------------------------------------------


def _write_shifted_landcover(src: Path, dst: Path, dx: float) -> None:
    with rasterio.open(src) as s:
        profile, data = s.profile, s.read()
    profile.update(transform=Affine.translation(dx, 0) @ profile["transform"])
    with rasterio.open(dst, "w", **profile) as d:
        d.write(data)


def test_build_slovenia_shards_with_spatial_split(slovenia: Path, tmp_path: Path, capsys) -> None:
    pytest.importorskip("agrifm.data.stack")
    from agrifm.pretrain.build import main
    from agrifm.pretrain.shards import ShardDataset

    out = tmp_path / "shards"
    argv = [
        "--source", f"ndvi={slovenia / 'NDVI.tif'}", "--mask", f"ndvi={slovenia / 'CLM.tif'}",
        "--landcover", str(slovenia / "LULC.tif"), "--classes", "eolearn_lulc", "--out", str(out),
        "--chip-size", "16", "--cell-size", "4", "--val-fraction", "0.25", "--split-block", "32",
        "--samples-per-shard", "20", "--quiet",
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "samples train/ndvi" in printed and "samples val/ndvi" in printed and "mean class fractions (val)" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["skipped"]["split_border"] > 0

    with rasterio.open(slovenia / "NDVI.tif") as f:
        ndvi = f.read()
    with rasterio.open(slovenia / "CLM.tif") as f:
        clm = f.read()
    with rasterio.open(slovenia / "LULC.tif") as f:
        lc, lt, lcrs = f.read(1), f.transform, f.crs
    stamps = np.loadtxt(slovenia / "dates.txt", dtype=str).astype("datetime64[D]")
    all_dates, years = stamps.astype(np.int64), stamps.astype("datetime64[Y]").astype(int) + 1970

    chips: dict[str, set[tuple[int, int]]] = {}
    for split in ("train", "val"):
        index = json.loads((out / split / "ndvi" / "index.json").read_text())
        assert index["num_samples"] == summary["samples"][f"{split}/ndvi"] > 0
        assert index["frac_grid"] == [4, 4] and index["bands"] == ["NDVI"] and list(index["class_names"]) == list(CLASSES)
        ds = ShardDataset(out / split, shuffle_buffer=0, min_frames=0, frames=None)
        samples = list(ds)
        assert len(samples) == index["num_samples"] and ds.stats["corrupt"] == 0
        chips[split] = set()
        for s in samples:
            _, r, c, year = s["key"].split("_")
            r, c = int(r[1:]), int(c[1:])
            chips[split].add((r, c))
            # frames: this year's dates with at least one clear pixel, data NaN under clouds
            t = np.flatnonzero((years == int(year)) & (clm[:, r : r + 16, c : c + 16] == 0).any(axis=(1, 2)))
            np.testing.assert_array_equal(s["dates"].numpy(), all_dates[t])
            clear = clm[t, r : r + 16, c : c + 16] == 0
            np.testing.assert_array_equal(s["valid"].numpy(), clear)
            ref = ndvi[t, r : r + 16, c : c + 16]
            np.testing.assert_allclose(s["x"][:, 0].numpy()[clear], ref[clear], atol=1e-3)
            assert np.isnan(s["x"][:, 0].numpy()[~clear]).all()
            # fractions: the brute-force mapped-pixel shares, summing to 1 on valid cells
            fv = s["frac_valid"].numpy()
            np.testing.assert_allclose(s["fractions"].numpy()[:, fv].sum(0), 1, atol=1e-6)
            grid = (lt @ Affine.translation(c, r) @ Affine.scale(4), lcrs, (4, 4))
            fr, ok = class_fractions(lc, lt, lcrs, grid, load_mapping("eolearn_lulc"))
            np.testing.assert_array_equal(fv, ok)
            np.testing.assert_allclose(s["fractions"].numpy(), fr, atol=1e-3)

    # spatial split: no pixel of a validation chip lies in any training chip
    def pixels(cs: set[tuple[int, int]]) -> set[tuple[int, int]]:
        return {(r + i, c + j) for r, c in cs for i in range(16) for j in range(16)}

    assert chips["train"] and chips["val"] and not pixels(chips["train"]) & pixels(chips["val"])


def test_build_small_chips_with_overlapping_stride(slovenia: Path, tmp_path: Path) -> None:
    pytest.importorskip("agrifm.data.stack")
    from agrifm.pretrain.build import build_pretrain_shards, chip_offsets

    assert chip_offsets(101, 16, 8) == [0, 8, 16, 24, 32, 40, 48, 56, 64, 72, 80, 85]
    summary = build_pretrain_shards(
        {"ndvi": str(slovenia / "NDVI.tif")}, str(slovenia / "LULC.tif"), str(tmp_path / "o"),
        masks={"ndvi": str(slovenia / "IS_VALID.tif")}, mask_kind="valid", classes="eolearn_lulc",
        chip_size={"ndvi": 16}, cell_size={"ndvi": 8}, stride={"ndvi": 8}, period="all", progress=False,
    )
    index = json.loads((tmp_path / "o" / "ndvi" / "index.json").read_text())
    assert index["num_samples"] == summary["samples"]["all/ndvi"] == 12 * 12 and index["frac_grid"] == [2, 2]


def test_build_rejects_land_cover_elsewhere(slovenia: Path, tmp_path: Path, capsys) -> None:
    pytest.importorskip("agrifm.data.stack")
    from agrifm.cli import main as agrifm_main

    def main(argv):  # through the dispatcher, the one place errors are printed
        return agrifm_main(["pretrain-data", *argv])

    far = tmp_path / "LULC_far.tif"
    _write_shifted_landcover(slovenia / "LULC.tif", far, 50_000)
    argv = ["--source", f"ndvi={slovenia / 'NDVI.tif'}", "--landcover", str(far), "--out", str(tmp_path / "o"), "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "LULC_far.tif (bounds (515181.052" in err and "NDVI.tif" in err and "does not overlap" in err
    assert not (tmp_path / "o" / "ndvi" / "index.json").exists()
