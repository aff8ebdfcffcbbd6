"""Long time-series tables, grouped splits and the table dataset, on the real Mato Grosso samples."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import need

from agrifm.data.datasets import TableDataset, collate
from agrifm.data.tables import SeriesTable, TableError, group_ids, grouped_split, read_table
from agrifm.data.timeseries import fill_series
from agrifm.sensors import Source, get_source

pd = pytest.importorskip("pandas")

BANDS = ("MIR", "BLUE", "NIR", "RED", "EVI", "NDVI")


@pytest.fixture
def csv(demo_data_dir: Path) -> Path:
    return need(demo_data_dir / "mato_grosso_modis" / "samples" / "mato_grosso_train.csv")


@pytest.fixture
def table(csv: Path) -> SeriesTable:
    return read_table(csv)


def test_read_mato_grosso(table: SeriesTable, csv: Path) -> None:
    assert table.values.shape == (1327, 23, 6) and table.values.dtype == np.float32
    assert table.bands == BANDS and (table.lengths == 23).all() and not np.isnan(table.values).any()
    counts = dict(zip(table.class_names, np.bincount(table.labels)))
    assert counts["Cerrado"] == 267 and counts["Soy_Sunflower"] == 18 and len(counts) == 9
    assert table.coords.shape == (1327, 2) and table.sample_ids[0] == 1
    assert table.dates[0, 0] == np.datetime64("2013-09-14") and (np.diff(table.dates, axis=1) > np.timedelta64(0)).all()
    df = pd.read_csv(csv)
    first = df[df.sample_id == table.sample_ids[5]]
    np.testing.assert_allclose(table.values[5], first[list(BANDS)].to_numpy(), rtol=1e-6)
    assert not table.aligned  # seasons 2000...2015: dates differ between samples


def test_parquet_equals_csv(table: SeriesTable, csv: Path, tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    pq = tmp_path / "mt.parquet"
    pd.read_csv(csv).head(230).to_parquet(pq)
    small = read_table(pq, class_names=table.class_names)
    np.testing.assert_array_equal(small.values, table.values[:10])
    np.testing.assert_array_equal(small.labels, table.labels[:10])


def test_padded_adds_padding_frames_only(table: SeriesTable) -> None:
    t = table.values.shape[1]
    assert table.padded(t) is table
    wide = table.padded(t + 2)
    assert wide.values.shape == (len(table), t + 2, len(table.bands))
    np.testing.assert_array_equal(wide.values[:, :t], table.values)
    assert np.isnan(wide.values[:, t:]).all() and np.isnat(wide.dates[:, t:]).all()
    np.testing.assert_array_equal(wide.lengths, table.lengths)
    with pytest.raises(ValueError, match="cannot pad"):
        table.padded(t - 1)


def test_grouped_split_keeps_groups_on_one_side(table: SeriesTable) -> None:
    groups = group_ids(table)
    places, place_of, visits = np.unique(table.coords, axis=0, return_inverse=True, return_counts=True)
    revisited = np.flatnonzero(place_of.ravel() == visits.argmax())  # the most revisited point
    assert len(revisited) > 1 and len(set(groups[revisited])) == 1
    train, test = grouped_split(table, (0.8, 0.2), seed=0)
    assert len(train) + len(test) == len(table) and not set(groups[train]) & set(groups[test])
    assert abs(len(test) / len(table) - 0.2) < 0.03
    share = np.bincount(table.labels[test], minlength=9) / np.bincount(table.labels)
    assert (np.abs(share - 0.2) < 0.1).all()  # stratified by label
    held_out = table.subset(test)
    assert len(held_out) == len(test) and held_out.class_names == table.class_names
    np.testing.assert_array_equal(held_out.values[0], table.values[test[0]])
    again = grouped_split(table, 0.2, seed=0)
    np.testing.assert_array_equal(again[1], test)
    parts = grouped_split(table, (0.6, 0.2, 0.2), seed=3)
    assert sum(map(len, parts)) == len(table) and not set(groups[parts[1]]) & set(groups[parts[2]])


def test_gaps_become_nan_and_fill_linearly_in_time(csv: Path, tmp_path: Path) -> None:
    df = pd.read_csv(csv)
    df = df[df.sample_id.isin(df.sample_id.unique()[:3])].reset_index(drop=True)
    first = df.sample_id.iloc[0]
    rows = df.index[df.sample_id == first]
    gappy = df.drop(index=rows[[4, 5]]).astype({"NDVI": object})  # two dates gone
    gappy.loc[rows[10], "NDVI"] = ""  # one empty cell
    path = tmp_path / "gappy.csv"
    gappy.to_csv(path, index=False)
    t = read_table(path)
    assert t.values.shape == (3, 23, 6) and t.lengths.tolist() == [21, 23, 23]
    assert np.isnat(t.dates[0, 21:]).all() and np.isnan(t.values[0, 21:]).all()
    ndvi = t.bands.index("NDVI")
    assert np.isnan(t.values[0, 8, ndvi]) and np.isfinite(t.values[0, 8, :ndvi]).all()  # row 10 -> slot 8
    filled, any_valid = fill_series(t.values, t.dates)
    assert any_valid.all() and not np.isnan(filled).any()
    days = df.loc[rows, "date"].to_numpy().astype("datetime64[D]").astype(np.int64)
    known = np.delete(np.arange(23), [4, 5, 10])
    want = np.interp(days, days[known], df.loc[rows, "NDVI"].to_numpy()[known])
    got_days = t.dates[0, :21].astype(np.int64)
    np.testing.assert_allclose(filled[0, :21, ndvi], np.interp(got_days, days, want), rtol=1e-5)
    np.testing.assert_allclose(filled[0, :21, 0], df.loc[rows, "MIR"].to_numpy()[np.delete(np.arange(23), [4, 5])],
                               rtol=1e-6)  # MIR had no gap


def test_bad_tables_name_file_and_column(table: SeriesTable, csv: Path, tmp_path: Path) -> None:
    df = pd.read_csv(csv, nrows=46)
    df.drop(columns="date").to_csv(p := tmp_path / "nodate.csv", index=False)
    with pytest.raises(TableError, match=r"nodate.csv: required column\(s\) \['date'\] missing"):
        read_table(p)
    bad = df.astype({"NIR": object})
    bad.loc[3, "NIR"] = "abc"
    bad.to_csv(p := tmp_path / "text.csv", index=False)
    with pytest.raises(TableError, match=r"text.csv: column 'NIR' looks like a band but has non-numeric value 'abc' in row 5"):
        read_table(p)
    with pytest.raises(TableError, match=r"text.csv: band column 'NIR' is not numeric"):
        read_table(p, bands=["NIR"])
    pd.concat([df, df.head(1)]).to_csv(p := tmp_path / "dup.csv", index=False)
    with pytest.raises(TableError, match=r"dup.csv: sample 1 has date 2013-09-14 twice"):
        read_table(p)
    df.assign(label=["Pasture"] * 45 + ["Forest"]).to_csv(p := tmp_path / "mixed.csv", index=False)
    with pytest.raises(TableError, match=r"mixed.csv: sample .* has more than one label"):
        read_table(p)
    with pytest.raises(TableError, match=r"label\(s\) \['Pasture'\] not in the class list"):
        read_table(csv, class_names=[c for c in table.class_names if c != "Pasture"])  # e.g. unseen in training


def test_table_dataset_and_collate(table: SeriesTable) -> None:
    source = Source("MT", BANDS[::-1], 231.656, "mixed", mean=(0.5,) * 6, std=(0.2,) * 6)
    ds = TableDataset(table, source, indices=[0, 1, 2, 3], frames=16, train=True, noise_std=0.0)
    item = ds[0]
    assert item["inputs"]["MT"].shape == (16, 6, 1, 1) and item["label"].shape == ()
    days = item["dates"]["MT"].numpy()
    assert len(np.unique(days)) == 16 and np.isin(days, table.dates[0].astype(np.int64)).all()
    full = TableDataset(table, source)[0]["inputs"]["MT"]  # all 23 frames, bands reversed
    torch.testing.assert_close(full[:, :, 0, 0], torch.from_numpy((table.values[0, :, ::-1] - 0.5) / 0.2))
    batch = collate([ds[i] for i in range(4)])
    assert batch["inputs"]["MT"].shape == (4, 16, 6, 1, 1) and batch["label"].dtype == torch.int64
    assert batch["dates"]["MT"].shape == (4, 16) and batch["nodata"]["MT"].shape == (4, 1, 1)
    with pytest.raises(ValueError, match=r"collate: 'batch.inputs.MT' has different shapes"):
        collate([ds[0], TableDataset(table, source, frames=5)[0]])
    evaluation = TableDataset(table, source, frames=8)
    np.testing.assert_array_equal(evaluation[0]["dates"]["MT"].numpy(),
                                  table.dates[0, [0, 3, 6, 9, 13, 16, 19, 22]].astype(np.int64))
    with pytest.raises(ValueError, match=r"source 'S2': band\(s\) .* not in table"):
        TableDataset(table, get_source("S2"))


def test_frame_dropout_blanks_frames_before_gap_filling(table: SeriesTable) -> None:
    source = Source("MT", BANDS, 231.656, "mixed", mean=(0.0,) * 6, std=(1.0,) * 6)
    clean = TableDataset(table, source, indices=[0])[0]["inputs"]["MT"][:, :, 0, 0].numpy()
    torch.manual_seed(0)
    ds = TableDataset(table, source, indices=[0], train=True, drop_frames=0.3)
    changed = []
    for _ in range(20):
        x = ds[0]["inputs"]["MT"][:, :, 0, 0].numpy()
        moved = ~np.isclose(x, clean).all(axis=1)
        # a blanked frame is a linear interpolation (or nearest value) of its kept neighbours
        kept = np.flatnonzero(~moved)
        assert len(kept) >= 2 and np.isfinite(x).all()
        for t in np.flatnonzero(moved):
            lo, hi = kept[kept < t], kept[kept > t]
            if len(lo) and len(hi):
                d = table.dates[0].astype("datetime64[D]").astype(np.int64)
                w = (d[t] - d[lo[-1]]) / (d[hi[0]] - d[lo[-1]])
                np.testing.assert_allclose(x[t], (1 - w) * clean[lo[-1]] + w * clean[hi[0]], rtol=1e-5, atol=1e-6)
        changed.append(moved.mean())
    assert 0.15 < np.mean(changed) < 0.45  # about 30 % of the frames
    cloudy = dataclasses.replace(table, values=table.values.copy())
    cloudy.values[0, 1::3] = np.nan  # a third of the frames already missing
    ds = TableDataset(cloudy, source, indices=[0], train=True, drop_frames=0.3)
    filled = TableDataset(cloudy, source, indices=[0])[0]["inputs"]["MT"]
    assert all(torch.equal(ds[0]["inputs"]["MT"], filled) for _ in range(5))  # already cloudier than the target
    np.testing.assert_array_equal(TableDataset(table, source, indices=[0], drop_frames=0.3)[0]["inputs"]["MT"][:, :, 0, 0].numpy(),
                                  clean)  # evaluation never drops
    with pytest.raises(ValueError, match="drop_frames 1.0"):
        TableDataset(table, source, drop_frames=1.0)


def test_with_classes_maps_labels_onto_a_shared_class_list(tmp_path) -> None:
    from agrifm.data.tables import TableError, read_table

    rows = [(i, lab, f"2020-01-{d + 1:02d}", 0.1 * d) for i, lab in enumerate(["b", "a", "b"]) for d in range(3)]
    path = tmp_path / "t.csv"
    path.write_text("sample_id,label,date,NDVI\n" + "\n".join(",".join(map(str, r)) for r in rows) + "\n")
    table = read_table(path)
    assert table.class_names == ["a", "b"] and table.labels.tolist() == [1, 0, 1]
    wide = table.with_classes(["c", "b", "a"])
    assert wide.class_names == ["c", "b", "a"] and wide.labels.tolist() == [1, 2, 1]
    with pytest.raises(TableError, match=r"class\(es\) \['a'\] not in the class list \['b', 'c'\]"):
        table.with_classes(["b", "c"])


def test_truncated_cuts_each_series_at_a_fraction_of_its_own_frames(tmp_path) -> None:
    from agrifm.data.tables import read_table

    rows = [(0, "a", f"2020-01-{d + 1:02d}", float(d)) for d in range(8)]  # 8 frames
    rows += [(1, "b", f"2020-02-{d + 1:02d}", float(d)) for d in range(4)]  # 4 frames (a shorter record)
    path = tmp_path / "t.csv"
    path.write_text("sample_id,label,date,NDVI\n" + "\n".join(",".join(map(str, r)) for r in rows) + "\n")
    table = read_table(path)
    quarter = table.truncated(0.25)
    assert quarter.lengths.tolist() == [2, 1] and quarter.values.shape[:2] == (2, 2)
    assert quarter.values[0, :, 0].tolist() == [0.0, 1.0] and np.isnan(quarter.values[1, 1, 0])
    assert np.isnat(quarter.dates[1, 1]) and quarter.dates[1, 0] == np.datetime64("2020-02-01")
    half = table.truncated(0.5)
    assert half.lengths.tolist() == [4, 2]
    assert table.truncated(1.0).lengths.tolist() == [8, 4]
    with pytest.raises(ValueError, match="fraction must be in"):
        table.truncated(0.0)


def test_with_observed_marks_gaps_and_frame_dropout_zeroes_them(table: SeriesTable) -> None:
    from agrifm.data.tables import OBSERVED

    cloudy = dataclasses.replace(table, values=table.values.copy())
    cloudy.values[0, 4:7] = np.nan  # three frames under cloud
    cloudy.values[1, 2, 0] = np.nan  # one band missing: the frame still counts as observed
    obs = cloudy.with_observed()
    assert obs.bands == (*table.bands, OBSERVED) and obs.with_observed() is obs
    mask = obs.values[..., -1]
    assert mask[0].tolist() == [1.0] * 4 + [0.0] * 3 + [1.0] * (table.values.shape[1] - 7)
    assert (mask[1] == 1).all()
    np.testing.assert_array_equal(obs.values[..., :-1], cloudy.values)
    short = cloudy.truncated(0.5).padded(table.values.shape[1]).with_observed()
    assert np.isnan(short.values[0, short.lengths[0]:, -1]).all()  # padding is no frame
    # Frame dropout: a blanked frame reads 0 in the observation band, never an interpolated 1.
    source = Source("MT", (*BANDS, OBSERVED), 231.656, "mixed", mean=(0.0,) * 7, std=(1.0,) * 7)
    clean = table.with_observed()
    ds = TableDataset(clean, source, indices=[0], train=True, drop_frames=0.3)
    x0 = TableDataset(clean, source, indices=[0])[0]["inputs"]["MT"][:, :, 0, 0].numpy()
    dropped = []
    for _ in range(10):
        x = ds[0]["inputs"]["MT"][:, :, 0, 0].numpy()
        moved = ~np.isclose(x[:, :-1], x0[:, :-1]).all(axis=1)
        assert set(np.unique(x[:, -1])) <= {0.0, 1.0}
        np.testing.assert_array_equal(x[:, -1] == 0, moved)  # zero exactly where a frame was blanked
        dropped.append(moved.mean())
    assert 0.15 < np.mean(dropped) < 0.45  # the observation band does not count as a seen value
    # A series already cloudier than the target keeps its own gaps (the band is not a value).
    gappy = dataclasses.replace(table, values=table.values.copy())
    gappy.values[0, 1::3] = np.nan
    gappy = gappy.with_observed()
    ds = TableDataset(gappy, source, indices=[0], train=True, drop_frames=0.3)
    ref = TableDataset(gappy, source, indices=[0])[0]["inputs"]["MT"]
    assert all(torch.equal(ds[0]["inputs"]["MT"], ref) for _ in range(5))


def test_varying_gaps_counts_gaps_that_differ_between_series(table: SeriesTable) -> None:
    from agrifm.tasks.pointfit import GAPPY, uses_observed

    idx = np.arange(len(table))
    assert table.varying_gaps() == 0.0 and not uses_observed("auto", table, idx)
    month = dataclasses.replace(table, values=table.values.copy())
    month.values[:, 3] = np.nan  # a date missing for every series: nothing to tell them apart
    assert month.varying_gaps() == 0.0 and not uses_observed("auto", month, idx)
    cloudy = dataclasses.replace(table, values=table.values.copy())
    rng = np.random.default_rng(0)
    cloudy.values[rng.random(cloudy.values.shape[:2]) < 0.2] = np.nan  # clouds series by series
    share = cloudy.varying_gaps()
    assert 0.15 < share < 0.25 and share > GAPPY and uses_observed("auto", cloudy, idx)
    assert uses_observed(True, table, idx) and not uses_observed(False, cloudy, idx)
    assert cloudy.varying_gaps([]) == 0.0
    with pytest.raises(ValueError, match="observed_channel 'yes'"):
        uses_observed("yes", table, idx)
