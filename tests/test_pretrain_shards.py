"""Tar shards: writer, index, rank/worker splitting, resume, corrupt and truncated shards.

The samples are real: 16-px chips of the Slovenia NDVI stack with its cloud mask and the class
fractions of its land-cover raster.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

rasterio = pytest.importorskip("rasterio")
from rasterio.transform import Affine  # noqa: E402

from agrifm.pretrain.fractions import class_fractions  # noqa: E402
from agrifm.pretrain.landcover import load_mapping  # noqa: E402
from agrifm.pretrain.shards import (  # noqa: E402
    FIELDS,
    INDEX_NAME,
    ShardDataset,
    ShardError,
    ShardWriter,
    split_shards_for_rank,
)
from conftest import DATA, need  # noqa: E402

CHIP, PER_SHARD = 16, 4


def _chips() -> dict[str, dict[str, np.ndarray]]:
    """36 chips of 16 px; every 5th keeps only 10 frames (a 'short' sample)."""
    d = need(DATA / "eolearn_slovenia")
    with rasterio.open(d / "NDVI.tif") as f:
        ndvi, transform, crs = f.read(), f.transform, f.crs
    with rasterio.open(d / "CLM.tif") as f:
        clear = f.read() == 0
    with rasterio.open(d / "LULC.tif") as f:
        lc = f.read(1)
    dates = np.loadtxt(d / "dates.txt", dtype=str).astype("datetime64[D]")
    mapping = load_mapping("eolearn_lulc")
    out = {}
    for i, (r, c) in enumerate((r, c) for r in range(0, 96, CHIP) for c in range(0, 96, CHIP)):
        t = slice(0, 10) if i % 5 == 4 else slice(None)
        x = np.where(clear, ndvi, np.nan)[t, None, r : r + CHIP, c : c + CHIP]
        grid = (transform @ Affine.translation(c, r) @ Affine.scale(4), crs, (4, 4))
        fr, ok = class_fractions(lc, transform, crs, grid, mapping)
        out[f"ndvi_r{r:03d}_c{c:03d}"] = dict(
            x=x, valid=clear[t, r : r + CHIP, c : c + CHIP], dates=dates[t], fractions=fr, frac_valid=ok
        )
    return out


@pytest.fixture(scope="module")
def chips() -> dict[str, dict[str, np.ndarray]]:
    return _chips()


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory: pytest.TempPathFactory, chips) -> Path:
    out = tmp_path_factory.mktemp("shards") / "ndvi"
    with ShardWriter(out, "ndvi", PER_SHARD, source="ndvi", bands=["NDVI"], chip_size=CHIP, cell_size=4) as w:
        for key, s in chips.items():
            w.add(key, **s, meta={"note": "test"})
    return out


def _keys(ds) -> list[str]:
    return [s["key"] for s in ds]


def _long(chips) -> set[str]:
    return {k for k, s in chips.items() if len(s["dates"]) >= 16}


def test_writer_index_and_round_trip(shard_dir: Path, chips) -> None:
    index = json.loads((shard_dir / INDEX_NAME).read_text())
    assert index["num_samples"] == 36 and len(index["shards"]) == 9
    assert [s["name"] for s in index["shards"]] == [f"ndvi-{i:06d}.tar" for i in range(9)]
    assert {p.name for p in shard_dir.iterdir()} == {INDEX_NAME, *(s["name"] for s in index["shards"])}  # no temp files
    assert index["frac_grid"] == [4, 4] and index["cell_size"] == 4 and index["x_dtype"] == "float16"
    with tarfile.open(shard_dir / "ndvi-000000.tar") as tar:
        names = tar.getnames()
        meta = json.loads(tar.extractfile(names[5]).read())
    first = next(iter(chips))
    assert names[:6] == [f"{first}.{f}" for f in FIELDS]
    assert meta["source"] == "ndvi" and meta["bands"] == ["NDVI"] and meta["note"] == "test"

    got = {s["key"]: s for s in ShardDataset(shard_dir, shuffle_buffer=0, min_frames=0, frames=None)}
    assert set(got) == set(chips)
    for key, ref in chips.items():
        s = got[key]
        assert s["source"] == "ndvi" and s["x"].dtype == torch.float32 and s["dates"].dtype == torch.int64
        np.testing.assert_array_equal(s["valid"].numpy(), ref["valid"])
        np.testing.assert_array_equal(s["dates"].numpy(), ref["dates"].astype(np.int64))
        np.testing.assert_allclose(s["x"].numpy(), ref["x"], atol=1e-3, equal_nan=True)
        np.testing.assert_array_equal(np.isnan(s["x"][:, 0].numpy()), ~ref["valid"])
        np.testing.assert_array_equal(s["frac_valid"].numpy(), ref["frac_valid"])
        np.testing.assert_allclose(s["fractions"].numpy(), ref["fractions"], atol=1e-3)


def test_loader_reads_the_index_and_never_lists_the_folder(shard_dir: Path, monkeypatch) -> None:
    def no_listing(*a, **k):
        raise AssertionError("the loader listed a folder")

    monkeypatch.setattr(os, "scandir", no_listing)
    monkeypatch.setattr(os, "listdir", no_listing)
    monkeypatch.setattr(Path, "iterdir", no_listing)
    ds = ShardDataset(shard_dir, shuffle_buffer=8)
    assert ds.num_samples == 36 and len(_keys(ds)) == 29


def test_writer_rejects_bad_samples_and_protects_finished_sets(tmp_path: Path, chips, shard_dir: Path) -> None:
    s = next(iter(chips.values()))
    with pytest.raises(FileExistsError, match="index.json exists"):
        ShardWriter(shard_dir, "ndvi")
    w = ShardWriter(tmp_path / "w", "ndvi", bands=["NDVI"])
    with pytest.raises(ValueError, match="without '.'"):
        w.add("a.b", **s)
    with pytest.raises(ValueError, match="fractions"):
        w.add("a", **{**s, "fractions": s["fractions"][:3]})
    with pytest.raises(ValueError, match="2 bands in x"):
        w.add("a", **{**s, "x": np.concatenate([s["x"], s["x"]], 1)})
    with pytest.raises(ValueError, match="overflows float16"):
        w.add("a", **{**s, "x": s["x"] * 1e6})
    w.add("a", **s)
    with pytest.raises(ValueError, match="duplicate sample key"):
        w.add("a", **s)
    w.abort()
    assert not any((tmp_path / "w").iterdir())  # no index, no partial shard


def test_int16_storage_keeps_nan(tmp_path: Path, chips) -> None:
    s = next(iter(chips.values()))
    x = np.round(s["x"] * 1e4)
    with ShardWriter(tmp_path, "s2", x_dtype="int16") as w:
        w.add("k", **{**s, "x": x})
        with pytest.raises(ValueError, match="non-integer"):
            w.add("k2", **s)
    (got,) = ShardDataset(tmp_path, min_frames=0, frames=None)
    np.testing.assert_array_equal(got["x"].numpy(), x)


def test_ranks_get_disjoint_shards_covering_all(shard_dir: Path, chips, monkeypatch) -> None:
    shards = list(range(9))
    for world in (1, 2, 3, 4):
        parts = [split_shards_for_rank(shards, r, world) for r in range(world)]
        assert sorted(sum(parts, [])) == shards
    with pytest.raises(ValueError, match="invalid rank"):
        split_shards_for_rank(shards, 2, 2)

    per_rank = [_keys(ShardDataset(shard_dir, rank=r, world_size=2, shuffle_buffer=5)) for r in range(2)]
    assert not set(per_rank[0]) & set(per_rank[1])
    assert sorted(per_rank[0] + per_rank[1]) == sorted(_long(chips))
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    from_env = ShardDataset(shard_dir, shuffle_buffer=5)
    assert from_env.rank_world() == (1, 2) and _keys(from_env) == per_rank[1]
    monkeypatch.setenv("WORLD_SIZE", "10")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ValueError, match="9 shards cannot feed 10 ranks"):
        list(ShardDataset(shard_dir))


def test_workers_split_further(shard_dir: Path, chips) -> None:
    ds = ShardDataset(shard_dir, rank=0, world_size=2, shuffle_buffer=4)
    by_worker = [{s.path.name for s in ds.shards_for(0, 2, w, 2)} for w in range(2)]
    assert not by_worker[0] & by_worker[1]
    assert by_worker[0] | by_worker[1] == {s.path.name for s in ds.shards_for(0, 2)}

    full = ShardDataset(shard_dir, shuffle_buffer=4)
    batches = list(DataLoader(full, batch_size=3, num_workers=2))
    keys = [k for b in batches for k in b["key"]]
    assert len(keys) == len(set(keys)) and set(keys) == _long(chips)
    assert batches[0]["x"].shape == (3, 16, 1, CHIP, CHIP) and batches[0]["fractions"].shape == (3, 8, 4, 4)


def test_epochs_are_seeded_permutations(shard_dir: Path) -> None:
    a = ShardDataset(shard_dir, seed=3, shuffle_buffer=6)
    b = ShardDataset(shard_dir, seed=3, shuffle_buffer=6)
    first = _keys(a)
    assert first == _keys(b)
    a.set_epoch(1)
    assert sorted(_keys(a)) == sorted(first) and _keys(a) != first


def test_frames_are_a_sorted_random_subset(shard_dir: Path, chips) -> None:
    ds = ShardDataset(shard_dir, frames=8, min_frames=16, shuffle_buffer=0)
    samples = list(ds)
    assert ds.stats == {"samples": 29, "short": 7, "corrupt": 0}
    for s in samples:
        d = s["dates"].numpy()
        assert s["x"].shape[0] == s["valid"].shape[0] == len(d) == 8 and (np.diff(d) >= 0).all()
        assert set(d) <= set(chips[s["key"]]["dates"].astype(np.int64))
    again = {s["key"]: s["dates"] for s in ShardDataset(shard_dir, frames=8, shuffle_buffer=0)}
    assert all(torch.equal(again[s["key"]], s["dates"]) for s in samples)


def test_resume_mid_epoch_continues_exactly(shard_dir: Path) -> None:
    reference = [(s["key"], s["x"]) for s in ShardDataset(shard_dir, seed=1, shuffle_buffer=5, epoch=2)]
    ds = ShardDataset(shard_dir, seed=1, shuffle_buffer=5, epoch=2)
    it = iter(ds)
    head = [next(it)["key"] for _ in range(11)]
    state = json.loads(json.dumps(ds.state_dict()))  # survives a checkpoint
    resumed = ShardDataset(shard_dir, seed=1, shuffle_buffer=5, resume_state=state)
    rest = [(s["key"], s["x"]) for s in resumed]
    assert head + [k for k, _ in rest] == [k for k, _ in reference]
    for (_, x), (_, y) in zip(rest, reference[11:], strict=True):  # same frames drawn too
        torch.testing.assert_close(x, y, rtol=0, atol=0, equal_nan=True)
    with pytest.raises(ValueError, match="seed"):
        ShardDataset(shard_dir, seed=2, resume_state=state)


def test_resume_with_workers_yields_exactly_the_unseen_samples(shard_dir: Path, chips) -> None:
    ds = ShardDataset(shard_dir, shuffle_buffer=4)
    seen = []
    for i, batch in enumerate(DataLoader(ds, batch_size=3, num_workers=2)):
        ds.mark_consumed(batch)
        seen += batch["key"]
        if i == 2:
            break
    state = ds.state_dict()
    assert state["num_workers"] == 2
    resumed = ShardDataset(shard_dir, shuffle_buffer=4, resume_state=state)
    rest = [k for b in DataLoader(resumed, batch_size=3, num_workers=2) for k in b["key"]]
    assert len(seen) == 9 and not set(seen) & set(rest) and sorted(seen + rest) == sorted(_long(chips))
    with pytest.raises(ValueError, match="same num_workers"):
        list(ShardDataset(shard_dir, shuffle_buffer=4, resume_state=state))


def _copy(shard_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(shard_dir, tmp_path / "copy"))


def test_corrupt_member_is_counted_and_skipped(shard_dir: Path, tmp_path: Path, chips, caplog) -> None:
    d = _copy(shard_dir, tmp_path)
    shard = d / "ndvi-000002.tar"
    with tarfile.open(shard) as tar:
        member = tar.getmember(tar.getnames()[6])  # x.npy of the shard's second sample
    key = member.name.split(".")[0]
    with open(shard, "r+b") as f:  # bit rot in the npy header, tar structure intact
        f.seek(member.offset_data)
        f.write(b"\x00garbage\x00")
    with caplog.at_level(logging.WARNING, logger="agrifm.pretrain.shards"):
        ds = ShardDataset(d, min_frames=0, frames=None, shuffle_buffer=3)
        keys = _keys(ds)
    assert ds.stats["corrupt"] == 1 and len(keys) == 35 and key not in keys
    assert "ndvi-000002.tar" in caplog.text and key in caplog.text
    with pytest.raises(ShardError, match="SHA-256"):
        list(ShardDataset(d, verify=True))


def test_truncated_shard_is_a_clear_error(shard_dir: Path, tmp_path: Path) -> None:
    d = _copy(shard_dir, tmp_path)
    shard = d / "ndvi-000005.tar"
    os.truncate(shard, shard.stat().st_size // 2)
    with pytest.raises(ShardError, match=r"ndvi-000005\.tar is truncated"):
        list(ShardDataset(d, min_frames=0))
    shard.unlink()
    with pytest.raises(ShardError, match=r"ndvi-000005\.tar: cannot be read"):
        list(ShardDataset(d, min_frames=0))


def _old_writer_shard(path: Path, samples: dict[str, dict[str, bytes]]) -> None:
    """A shard as agrifm wrote it before it used webdataset: tarfile, USTAR, members in FIELDS
    order, mode 0644, mtime 0, no owner."""
    import io

    with tarfile.open(path, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for key, members in samples.items():
            for field in FIELDS:
                info = tarfile.TarInfo(f"{key}.{field}")
                info.size, info.mode, info.mtime = len(members[field]), 0o644, 0
                tar.addfile(info, io.BytesIO(members[field]))


def test_shards_written_before_webdataset_still_read(shard_dir: Path, tmp_path: Path) -> None:
    index = json.loads((shard_dir / INDEX_NAME).read_text())
    with tarfile.open(shard_dir / "ndvi-000000.tar") as tar:
        samples: dict[str, dict[str, bytes]] = {}
        for m in tar.getmembers():
            key, _, field = m.name.partition(".")
            samples.setdefault(key, {})[field] = tar.extractfile(m).read()
    old = tmp_path / "old"
    old.mkdir()
    _old_writer_shard(old / "ndvi-000000.tar", samples)
    # the old writer's bytes are the new writer's: same layout, same size and hash in the index
    assert (old / "ndvi-000000.tar").read_bytes() == (shard_dir / "ndvi-000000.tar").read_bytes()
    (old / INDEX_NAME).write_text(json.dumps({**index, "shards": index["shards"][:1], "num_samples": 4}))
    got = list(ShardDataset(old, min_frames=0, frames=None, shuffle_buffer=0, verify=True))
    assert [s["key"] for s in got] == list(samples) and got[0]["x"].shape[1:] == (1, CHIP, CHIP)
