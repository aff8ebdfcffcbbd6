"""AgriFM H5 samples (agrifm.data.h5) and the H5 dataset, on the real PASTIS subset."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import need
from torch.utils.data import DataLoader

from agrifm.data.datasets import H5SampleDataset, collate
from agrifm.data.h5 import H5SampleError, read_h5_sample, read_split, sample_paths, write_h5_sample
from agrifm.sensors import Source, get_source

h5py = pytest.importorskip("h5py")

S1 = Source("S1A", ("VV", "VH", "VV/VH"), 10.0, "dB", mean=(-12.0, -18.5, 6.3), std=(3.0, 3.2, 1.8))


@pytest.fixture
def pastis(data_dir: Path) -> Path:
    return need(data_dir / "pastis_geobench")


def test_read_pastis_sample(pastis: Path) -> None:
    s = read_h5_sample(pastis / "h5_samples" / "pastis_10186.h5", extra=("instance",))
    assert set(s.inputs) == {"S2", "S1A", "S1D"}
    assert s.inputs["S2"].shape == (3, 10, 32, 32) and s.inputs["S2"].dtype == np.float32
    assert s.inputs["S1A"].shape == (3, 3, 32, 32)
    assert s.bands["S2"] == ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")
    np.testing.assert_array_equal(s.dates["S2"], np.array(["2018-09-24", "2018-09-29", "2018-10-04"], "datetime64[D]"))
    assert s.dates["S1A"][0] == np.datetime64("2018-10-04")
    assert s.label.dtype == np.int64 and s.label.shape == (32, 32)
    assert set(np.unique(s.label)) == {0, 1, 2, 3, 4, 5, 13, 17, 19}
    assert (s.label == 19).sum() == 261  # void pixels (README)
    assert s.extra["instance"].shape == (32, 32)


def test_bands_are_reordered_to_the_source_order(pastis: Path) -> None:
    path = pastis / "h5_samples" / "pastis_10186.h5"
    stored = read_h5_sample(path, ["S2"]).inputs["S2"]
    s = read_h5_sample(path, ["S2"], bands={"S2": get_source("S2").bands})
    np.testing.assert_array_equal(s.inputs["S2"][:, 3], stored[:, 6])  # B08 fourth
    assert s.bands["S2"] == get_source("S2").bands
    with pytest.raises(H5SampleError, match=r"pastis_10186.h5: dataset 'S2' lacks band\(s\) \['B01'\]"):
        read_h5_sample(path, ["S2"], bands={"S2": ["B01", "B02"]})


def test_split_lists(pastis: Path) -> None:
    assert read_split(pastis / "data_lists" / "val.txt") == ["pastis_20275", "pastis_20534"]
    assert [p.name for p in sample_paths(pastis, "test")] == ["pastis_20213.h5", "pastis_30336.h5"]
    assert len(sample_paths(pastis, "train")) == 5 and len(sample_paths(pastis)) == 9
    with pytest.raises(FileNotFoundError, match="listed in the given names are missing"):
        sample_paths(pastis, ["pastis_00000"])


def test_write_read_round_trip(pastis: Path, tmp_path: Path) -> None:
    src = read_h5_sample(pastis / "h5_samples" / "pastis_20213.h5", extra=("instance",))
    out = tmp_path / "h5_samples" / "copy.h5"
    write_h5_sample(out, src.inputs, src.label, dates=src.dates, bands=src.bands,
                    extra={"instance": src.extra["instance"]}, attrs={"tile": "t31tfj"})
    back = read_h5_sample(out, extra=("instance",))
    for k in src.inputs:
        np.testing.assert_array_equal(back.inputs[k], src.inputs[k])
        np.testing.assert_array_equal(back.dates[k], src.dates[k])
        assert back.bands[k] == src.bands[k]
    np.testing.assert_array_equal(back.label, src.label)
    np.testing.assert_array_equal(back.extra["instance"], src.extra["instance"])
    assert back.attrs["tile"] == "t31tfj"
    assert [p.name for p in out.parent.iterdir()] == ["copy.h5"]  # no temporary left behind


def test_write_rejects_inconsistent_metadata(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"source 'S2': 2 dates for 3 frames"):
        write_h5_sample(tmp_path / "x.h5", {"S2": np.zeros((3, 2, 4, 4))}, dates={"S2": ["2020-01-01"] * 2})
    assert not list(tmp_path.iterdir())


def test_corrupt_or_incomplete_files_name_file_and_key(pastis: Path, tmp_path: Path) -> None:
    bad = tmp_path / "truncated.h5"
    bad.write_bytes((pastis / "h5_samples" / "pastis_10186.h5").read_bytes()[:2000])
    with pytest.raises(H5SampleError, match="truncated.h5"):
        read_h5_sample(bad)
    good = tmp_path / "good.h5"
    shutil.copy(pastis / "h5_samples" / "pastis_10186.h5", good)
    with pytest.raises(H5SampleError, match=r"good.h5: no dataset 'HLSL30'"):
        read_h5_sample(good, ["HLSL30"])
    with pytest.raises(H5SampleError, match=r"good.h5: no dataset 'mask'"):
        read_h5_sample(good, ["S2"], label_key="mask")
    with pytest.raises(FileNotFoundError, match="missing.h5"):
        read_h5_sample(tmp_path / "missing.h5")


def test_h5_dataset_items_and_collate(pastis: Path) -> None:
    ds = H5SampleDataset(pastis, "train", {"S2": get_source("S2"), "S1A": S1}, ignore_values=[19])
    item = ds[0]
    assert item["id"] == "pastis_10186" and ds.class_names[19] == "Void label"
    assert item["inputs"]["S2"].shape == (3, 10, 32, 32) and item["inputs"]["S1A"].shape == (3, 3, 32, 32)
    assert item["label"].dtype == torch.int64 and (item["label"] == -1).sum() == 261
    assert 19 not in item["label"].unique().tolist()
    assert item["dates"]["S2"].tolist() == np.array(
        ["2018-09-24", "2018-09-29", "2018-10-04"], "datetime64[D]").astype(np.int64).tolist()
    assert item["nodata"]["S2"].shape == (32, 32) and not item["nodata"]["S2"].any()
    raw = read_h5_sample(ds.files[0], ["S2"]).inputs["S2"]  # B02 is stored first, too
    torch.testing.assert_close(item["inputs"]["S2"][:, 0], torch.from_numpy((raw[:, 0] - 4179.19) / 4041.52))
    batch = next(iter(DataLoader(ds, batch_size=2, collate_fn=collate)))
    assert batch["inputs"]["S2"].shape == (2, 3, 10, 32, 32) and batch["label"].shape == (2, 32, 32)
    assert batch["dates"]["S1A"].shape == (2, 3) and batch["nodata"]["S2"].shape == (2, 32, 32)
    assert batch["id"] == ["pastis_10186", "pastis_10477"]


def test_h5_dataset_frames_pad_by_repeating(pastis: Path) -> None:
    ds = H5SampleDataset(pastis, ["pastis_40252"], ["S2"], frames=5, train=True)
    item = ds[0]
    assert item["inputs"]["S2"].shape == (5, 10, 32, 32)
    d = item["dates"]["S2"]
    assert (d[1:] >= d[:-1]).all() and len(d.unique()) == 3


def test_label_19_is_a_class_unless_ignored_and_data_list_folder(pastis: Path, tmp_path: Path) -> None:
    """19 is PASTIS's void, but a class elsewhere: ignored only when asked; the release's data_list/ is read."""
    kept = H5SampleDataset(pastis, "train", ["S2"])[0]["label"]
    assert (kept == 19).sum() == 261 and not (kept == -1).any()
    root = tmp_path / "release_layout"
    shutil.copytree(pastis / "h5_samples", root / "h5_samples")
    (root / "data_list").mkdir()
    (root / "data_list" / "val.txt").write_text("pastis_20275\n")
    assert [p.stem for p in sample_paths(root, "val")] == ["pastis_20275"]
