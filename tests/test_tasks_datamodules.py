"""Datamodules on the shared real data: H5 (PASTIS), tables (Mato Grosso), chips (Sinop points,
Belgium S2 at 10 m + the same scene aggregated to 30 m)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from agrifm.tasks.datamodules import ChipDataModule, H5DataModule, TableDataModule, source_from_spec, spatial_split
from conftest import DATA, DEMO_DATA, need

pytestmark = pytest.mark.usefixtures("one_thread")


S2_9 = ["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B11", "B12"]
S1 = {"bands": ["VV", "VH", "VV/VH"], "units": "dB", "resolution_m": 10.0}


def aggregate_stack(src_dir, dst_dir, factor: int = 3) -> None:
    """The S2 monthly files block-averaged to ``factor`` x coarser pixels (nodata never averaged in)."""
    import rasterio
    from affine import Affine

    dst_dir.mkdir(parents=True, exist_ok=True)
    for f in sorted(src_dir.glob("S2_*.tif")):
        with rasterio.open(f) as src:
            a = src.read(masked=True).astype(np.float64).filled(np.nan)
            h, w = (src.height // factor) * factor, (src.width // factor) * factor
            blocks = a[:, :h, :w].reshape(a.shape[0], h // factor, factor, w // factor, factor)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-nodata months: mean of nothing
                mean = np.nanmean(blocks, axis=(2, 4))
            profile = dict(src.profile, width=w // factor, height=h // factor,
                           transform=src.transform @ Affine.scale(factor))
            with rasterio.open(dst_dir / f.name, "w", **profile) as dst:
                dst.write(np.where(np.isnan(mean), src.nodata, np.round(mean)).astype(src.dtypes[0]))
                dst.descriptions = src.descriptions


def belgium_module(tmp_path, **kw) -> ChipDataModule:
    cube = need(DATA / "worldcereal_belgium" / "test_cube_100x100")
    aggregate_stack(cube, tmp_path / "s2_30m")
    return ChipDataModule(
        {"S2": str(cube), "S2_30m": str(tmp_path / "s2_30m")},
        {"S2": "S2", "S2_30m": {"bands": S2_9, "resolution_m": 30.0, "units": "surface reflectance x 1e4"}},
        band_map={"S2": {"B8A": "B08"}}, labels=str(cube / "pseudo_labels" / "cropland_classification.tif"),
        chip_size=30, split_block=50, val_fraction=0.25, frames=3, batch_size=4, **kw)


def test_source_specs():
    s, lacks = source_from_spec("S1A", S1)
    assert s.name == "S1A" and s.bands == ("VV", "VH", "VV/VH") and lacks
    assert source_from_spec("S2", None) == (source_from_spec("S2", "S2")[0], False)
    with pytest.raises(ValueError, match="source 'X': a source description needs 'bands'"):
        source_from_spec("X", {"units": "dB"})


def test_spatial_split_keeps_cells_together():
    rows, cols = np.repeat(np.arange(0, 100, 10), 10), np.tile(np.arange(0, 100, 10), 10)
    part = spatial_split(rows, cols, 50, [0.75, 0.25], seed=0)
    cell = (rows // 50) * 2 + cols // 50
    assert all(len(set(part[cell == c])) == 1 for c in range(4))
    assert np.bincount(part).tolist() == [75, 25]


def test_h5_two_sources_with_computed_stats():
    root = need(DATA / "pastis_geobench")
    dm = H5DataModule(str(root), {"S2": "S2", "S1A": S1}, frames=3, batch_size=2, ignore_values=[19])
    meta = dm.source_meta
    assert meta["S2"]["mean"][0] == pytest.approx(4179.19)  # registered statistics kept
    assert -30 < meta["S1A"]["mean"][0] < 0 and all(s > 0 for s in meta["S1A"]["std"])  # dB, from the train split
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["inputs"]["S2"].shape == (2, 3, 10, 32, 32) and batch["inputs"]["S1A"].shape == (2, 3, 3, 32, 32)
    assert batch["label"].shape == (2, 32, 32) and 19 not in batch["label"] and (batch["label"] == -1).any()
    assert batch["dates"]["S1A"].shape == (2, 3) and abs(float(batch["inputs"]["S1A"].mean())) < 1.5


def test_table_split_grouped_by_location():
    path = need(DEMO_DATA / "mato_grosso_modis" / "samples" / "mato_grosso_train.csv")
    dm = TableDataModule(str(path), "MOD13Q1", val_fraction=0.2, batch_size=8, drop_frames=0.2)
    tr, va = dm.parts["train"], dm.parts["val"]
    assert len(tr) + len(va) == 1327 and 0.15 < len(va) / 1327 < 0.25 and not len(dm.parts["test"])
    coords = dm.table.coords
    assert not {tuple(c) for c in np.round(coords[tr], 4)} & {tuple(c) for c in np.round(coords[va], 4)}
    item = dm.dataset("val")[0]
    assert item["inputs"]["MOD13Q1"].shape == (23, 2, 1, 1) and item["label"].ndim == 0
    assert dm.dataset("train").drop_frames == 0.2 and dm.dataset("val").drop_frames == 0.0  # augmentation: training only


def test_points_give_sparse_chips_split_spatially():
    cube = need(DEMO_DATA / "mato_grosso_modis" / "sinop_cube")
    dm = ChipDataModule({"MOD13Q1": str(cube)}, points=str(DEMO_DATA / "mato_grosso_modis/samples/sinop_points.csv"),
                        chip_size=16, group_radius=4, split_block=48, val_fraction=0.25, frames=4)
    assert dm.class_names == ["Cerrado", "Forest", "Pasture", "Soy_Corn"]
    ids = {s: {i for c in dm.chips[s] for i in c.name.split(":")[1].split(",")} for s in ("train", "val")}
    assert ids["train"] and ids["val"] and not ids["train"] & ids["val"]
    item = dm.dataset("train")[0]
    assert item["inputs"]["MOD13Q1"].shape == (4, 2, 16, 16)
    labelled = item["label"][item["label"] >= 0]
    assert 1 <= labelled.numel() <= 8 and (item["label"] == -1).sum() >= 16 * 16 - 8


def test_two_resolutions_over_one_footprint(tmp_path):
    dm = belgium_module(tmp_path, compute_stats=["S2_30m"])
    assert sum(len(v) for v in dm.chips.values()) == 16  # 4 x 4 tiles of 30 px (edge tiles NaN-padded)
    assert dm.reader.shapes == {"S2": (30, 30), "S2_30m": (10, 10)}
    assert 500 < dm.sources["S2_30m"].mean[0] < 3000  # computed from the 30 m training chips
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["inputs"]["S2"].shape == (4, 3, 10, 30, 30) and batch["inputs"]["S2_30m"].shape == (4, 3, 9, 10, 10)
    assert torch.isfinite(batch["inputs"]["S2_30m"]).all() and set(batch["label"].unique().tolist()) <= {-1, 0, 1}
    edge = [c for c in dm.chips["train"] + dm.chips["val"] if c.name.endswith("c90")]
    assert edge and (edge[0].label[:, 10:] == -1).all()  # beyond the raster: unlabelled


def test_label_raster_off_grid_is_named(tmp_path):
    cube = need(DATA / "worldcereal_belgium" / "test_cube_100x100")
    aggregate_stack(cube, tmp_path / "s2_30m")
    dm = ChipDataModule({"S2": str(tmp_path / "s2_30m")}, {"S2": {"bands": S2_9}},
                        labels=str(cube / "pseudo_labels" / "cropland_classification.tif"), chip_size=8)
    with pytest.raises(ValueError, match=r"label raster .*classification.tif .* not on the grid of source 'S2'"):
        dm.chips


def test_table_source_may_list_the_derived_observation_band(tmp_path):
    from agrifm.data.tables import OBSERVED

    rows = [f"{i},{'ab'[i % 2]},2021-0{d + 1}-01,{'' if (i + d) % 3 == 0 else 0.1 * d + i % 2}"
            for i in range(20) for d in range(6)]
    path = tmp_path / "t.csv"
    path.write_text("sample_id,label,date,NDVI\n" + "\n".join(rows) + "\n")
    dm = TableDataModule(str(path), {"name": "T", "bands": ["NDVI", OBSERVED]}, val_fraction=0.2, batch_size=4)
    assert dm.table.bands == ("NDVI", OBSERVED)
    src = dm.sources["T"]
    assert src.mean[1] == 0.0 and src.std[1] == 1.0 and src.std[0] != 1.0  # NDVI's own statistics
    x = dm.dataset("train")[0]["inputs"]["T"][:, 1, 0, 0]
    i = int(dm.table.sample_ids[dm.parts["train"][0]])
    assert x.tolist() == [0.0 if (i + d) % 3 == 0 else 1.0 for d in range(6)]
