"""Point classifiers whose temporal fusion concatenates frames (``feature_fusion="cat"``): every
series reaches the model on the table's full grid, a cut season held at its last frame."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from agrifm.data.datasets import TableDataset, held_to
from agrifm.data.tables import SeriesTable
from agrifm.errors import InputError
from agrifm.tasks.pointfit import PointFitConfig, _Truncate, fit_point_classifier, predict_table, source_from_table

pytestmark = pytest.mark.usefixtures("one_thread")

CAT = {"preset": "point-small", "embed_dim": 8, "depths": [1, 1, 1], "num_heads": [1, 1, 1],
       "feature_fusion": "cat", "date_encoding": True}


def _table(n: int = 48, t: int = 11) -> SeriesTable:
    rng = np.random.default_rng(0)
    labels = np.arange(n) % 3
    days = np.datetime64("2020-01-01") + np.arange(t) * 16
    x = np.arange(t) * 16 / 30.0
    values = (np.sin(x[None, :] + 2 * labels[:, None]) + 0.1 * rng.standard_normal((n, t)))[..., None]
    return SeriesTable(values=values.astype(np.float32), dates=np.repeat(days[None], n, 0), lengths=np.full(n, t),
                       labels=labels, class_names=["a", "b", "c"], sample_ids=np.array([f"s{i}" for i in range(n)]),
                       bands=("NDVI",), path="toy.csv")


def test_held_to_repeats_the_last_frame_and_date() -> None:
    series = np.arange(4, dtype=np.float32).reshape(4, 1)
    dates = np.datetime64("2021-03-01") + np.arange(4) * 10
    s, d = held_to(series, dates, 7)
    assert s[:, 0].tolist() == [0, 1, 2, 3, 3, 3, 3]
    assert d.tolist() == [*dates.tolist(), dates[-1], dates[-1], dates[-1]]
    s, d = held_to(series, dates, 4)
    assert np.array_equal(s, series) and np.array_equal(d, dates)


def test_table_dataset_holds_a_cut_season_on_the_full_grid() -> None:
    table = _table()
    cut = table.truncated(0.5).padded(table.values.shape[1])  # 6 of 11 frames, NaN/NaT padding after
    source = source_from_table(table, np.arange(len(table)), "NDVI")
    item = TableDataset(cut, source, [0], frames=11, hold=11)[0]
    x, d = item["inputs"]["NDVI"][:, 0, 0, 0], item["dates"]["NDVI"]
    assert x.shape == (11,) and d.shape == (11,)
    full = TableDataset(table, source, [0])[0]
    torch.testing.assert_close(x[:6], full["inputs"]["NDVI"][:6, 0, 0, 0])
    assert torch.all(x[6:] == x[5]) and torch.all(d[6:] == d[5]) and torch.equal(d[:6], full["dates"]["NDVI"][:6])
    # Without ``hold`` the same six frames would be spread over the grid (frame 1 repeated early).
    spread = TableDataset(cut, source, [0], frames=11)[0]["inputs"]["NDVI"][:, 0, 0, 0]
    assert not torch.equal(spread, x)


def test_truncation_in_hold_mode_keeps_the_length_and_repeats_the_kept_frame() -> None:
    batch = {"inputs": {"s": torch.arange(10.0).view(1, 10, 1, 1, 1).repeat(2, 1, 1, 1, 1)},
             "dates": {"s": torch.arange(10.0).repeat(2, 1)}, "label": torch.zeros(2)}
    out = _Truncate(1.0, 0.25, seed=0, hold=True)(batch)
    x, d = out["inputs"]["s"][0, :, 0, 0, 0], out["dates"]["s"][0]
    k = int((x == x.max()).nonzero()[0]) + 1  # frames kept
    assert x.shape == (10,) and 3 <= k <= 10
    assert torch.equal(x[:k], torch.arange(float(k))) and torch.all(x[k:] == k - 1) and torch.equal(d, x)
    sliced = _Truncate(1.0, 0.25, seed=0)(batch)["inputs"]["s"]
    assert sliced.shape[1] == k  # the same cut, as a shorter series for models of any length


def test_cat_point_classifier_takes_the_table_grid_and_predicts_cut_seasons() -> None:
    table = _table()
    idx = np.arange(len(table))
    source = source_from_table(table, idx, "NDVI")
    cfg = PointFitConfig(epochs=3, batch_size=16, warmup_steps=2, members=1, progress=False, seed=0,
                         random_truncation=0.5, model=dict(CAT))
    task = fit_point_classifier(table, idx, source, cfg)
    assert task.model.config.num_frames == 11 and task.model.config.feature_fusion == "cat"
    for f in (0.25, 0.5, 1.0):
        probs = predict_table(task, table.truncated(f).padded(11), idx, source)
        assert probs.shape == (len(table), 3) and np.allclose(probs.sum(1), 1, atol=1e-5)
    # A cut table not padded back to the grid is held to it too: the same predictions.
    np.testing.assert_allclose(predict_table(task, table.truncated(0.5), idx, source),
                               predict_table(task, table.truncated(0.5).padded(11), idx, source), atol=1e-6)
    longer = dataclasses.replace(table.padded(13), lengths=np.full(len(table), 13))
    with pytest.raises(InputError, match=r"toy.csv: series of up to 13 frames; this model takes 11"):
        predict_table(task, longer, idx, source)


def test_observed_channel_adds_the_band_at_fit_and_prediction() -> None:
    from agrifm.data.tables import OBSERVED

    table = _table()
    table.values[::2, 3:5] = np.nan  # gaps in every other series
    idx = np.arange(len(table))
    source = source_from_table(table, idx, "NDVI")
    cfg = PointFitConfig(epochs=2, batch_size=16, warmup_steps=2, members=1, progress=False, seed=0,
                         observed_channel=True, model=dict(CAT))
    task = fit_point_classifier(table, idx, source, cfg)
    fitted = task.sources_meta["NDVI"]
    assert fitted.bands == ("NDVI", OBSERVED) and fitted.mean[1] == 0.0 and fitted.std[1] == 1.0
    probs = predict_table(task, table, idx, source)  # the caller's source: the band is derived
    assert probs.shape == (len(table), 3)
    np.testing.assert_allclose(probs, predict_table(task, table.with_observed(), idx, fitted), atol=1e-6)
    # The model reads the band: the same values with other gaps give other probabilities.
    filled = dataclasses.replace(table, values=np.nan_to_num(table.values, nan=0.0))
    assert not np.allclose(predict_table(task, filled, idx, source), probs, atol=1e-4)
    clash = dataclasses.replace(table, values=np.repeat(table.values, 2, axis=2), bands=("NDVI", OBSERVED))
    with pytest.raises(InputError, match=r"toy.csv: a band is named 'observed'"):
        fit_point_classifier(clash, idx, source_from_table(clash, idx, "NDVI"), cfg)


def test_observed_channel_model_maps_a_cloudy_scene_as_it_scores_the_table(tmp_path) -> None:
    """A model fitted with the observation band, exported and run on a scene whose pixels are the
    table's series (clouds as nodata): the scene path derives the band from the nodata mask and
    gives every pixel the class the table path gives its series."""
    import rasterio
    from rasterio.transform import from_origin

    from agrifm.checkpoint import load_predictor
    from agrifm.data.tables import OBSERVED
    from agrifm.predict.run import predict_scene

    h, w, t = 4, 12, 6
    table = _table(n=h * w, t=t)
    rng = np.random.default_rng(1)
    table.values[rng.random((h * w, t)) < 0.3] = np.nan  # clouds that differ between series
    table.values[:, 0] = np.where(np.isnan(table.values[:, 0]), 0.5, table.values[:, 0])  # every series seen once
    days = np.datetime64("2021-01-01") + np.arange(t) * 30
    table = dataclasses.replace(table, dates=np.repeat(days[None], h * w, 0))
    idx = np.arange(len(table))
    source = source_from_table(table, idx, "NDVI")
    cfg = PointFitConfig(epochs=2, batch_size=16, warmup_steps=2, members=1, progress=False, seed=0, model=dict(CAT))
    task = fit_point_classifier(table, idx, source, cfg)  # "auto": these gaps differ from series to series
    assert task.sources_meta["NDVI"].bands == ("NDVI", OBSERVED)
    ckpt = tmp_path / "m.safetensors"
    task.export(str(ckpt))
    folder = tmp_path / "stack"
    folder.mkdir()
    for i, d in enumerate(days):
        with rasterio.open(folder / f"NDVI_{d}.tif", "w", driver="GTiff", width=w, height=h, count=1, dtype="float32",
                           crs="EPSG:32631", transform=from_origin(500000.0, 4000000.0, 10.0, 10.0), nodata=-9999.0) as ds:
            ds.write(np.nan_to_num(table.values[:, i, 0].reshape(1, h, w), nan=-9999.0))
            ds.descriptions = ("NDVI",)
    out = tmp_path / "map.tif"
    predict_scene(load_predictor(ckpt, device="cpu"), {"NDVI": folder}, out, window=16, overlap=0, quicklook=False,
                  progress=False)
    with rasterio.open(out) as ds:
        mapped = ds.read(1).reshape(-1)
    expected = predict_table(task, table, idx, source).argmax(1)
    np.testing.assert_array_equal(mapped, expected)


def test_pseudo_labels_take_the_confident_rows_and_their_class() -> None:
    from agrifm.tasks.pointfit import pseudo_labelled

    probs = np.array([[0.95, 0.05], [0.6, 0.4], [0.02, 0.98], [0.5, 0.5]])
    keep, labels = pseudo_labelled(probs, 0.9)
    assert keep.tolist() == [0, 2] and labels.tolist() == [0, 1]
    keep, labels = pseudo_labelled(probs, 0.99)
    assert keep.tolist() == [] and labels.tolist() == []


def test_balanced_pseudo_labels_keep_each_predicted_class_its_share() -> None:
    from agrifm.tasks.pointfit import pseudo_labelled

    # Class 0 is predicted confidently, class 2 (rare) never reaches tau, class 1 is never predicted.
    probs = np.array([[0.97, 0.02, 0.01], [0.95, 0.03, 0.02], [0.6, 0.3, 0.1], [0.92, 0.05, 0.03],
                      [0.2, 0.1, 0.7], [0.3, 0.2, 0.5], [0.91, 0.06, 0.03], [0.7, 0.2, 0.1]])
    keep, labels = pseudo_labelled(probs, 0.9)
    assert keep.tolist() == [0, 1, 3, 6] and set(labels.tolist()) == {0}
    # Half the rows reached tau: class 2's most confident half (1 of 2) joins; class 0 has its half already.
    keep, labels = pseudo_labelled(probs, 0.9, balanced=True)
    assert keep.tolist() == [0, 1, 3, 4, 6] and labels.tolist() == [0, 0, 0, 2, 0]
    # Nothing confident: nothing kept, balanced or not (no share to keep).
    keep, labels = pseudo_labelled(probs, 0.99, balanced=True)
    assert keep.tolist() == [] and labels.tolist() == []
    # Everything confident: everything kept once.
    keep, _ = pseudo_labelled(probs, 0.1, balanced=True)
    assert keep.tolist() == list(range(8))


def test_concatenated_tables_keep_rows_and_refuse_another_grid() -> None:
    from agrifm.data.tables import TableError

    a, b = _table(n=6), _table(n=4)
    b = dataclasses.replace(b, sample_ids=np.array([f"u{i}" for i in range(4)]), labels=np.array([2, 2, 2, 2]))
    both = a.concatenated(b)
    assert len(both) == 10 and both.labels.tolist() == [*a.labels.tolist(), 2, 2, 2, 2]
    assert both.sample_ids.tolist()[-4:] == ["u0", "u1", "u2", "u3"] and both.coords is None
    np.testing.assert_array_equal(both.values[6:], b.values)
    with pytest.raises(TableError, match=r"x 9 frames; expected \['NDVI'\] x 11"):
        a.concatenated(_table(n=4, t=9))
    with pytest.raises(TableError, match="classes"):
        a.concatenated(dataclasses.replace(b, class_names=["x", "y", "z"]))
    placed = dataclasses.replace(a, coords=np.zeros((6, 2)))
    assert placed.concatenated(b).coords is None  # coordinates only where both tables have them


def test_self_training_learns_from_the_confident_unlabelled_series() -> None:
    """The first model labels the unlabelled series it is sure of; the second is trained from
    scratch on both with the first's steps, and scores at least as well on the unlabelled ones."""
    from agrifm.tasks.pointfit import self_trained

    table = _table(n=96)
    train, pool_idx = np.arange(0, 96, 4), np.setdiff1d(np.arange(96), np.arange(0, 96, 4))  # 24 labelled
    pool = dataclasses.replace(table.subset(pool_idx), labels=np.zeros(len(pool_idx), np.int64), path="pool.csv")
    source = source_from_table(table, train, "NDVI")
    cfg = PointFitConfig(epochs=12, batch_size=8, warmup_steps=2, members=1, progress=False, seed=0,
                         model=dict(CAT), self_training=0.6, lr=3e-3)
    first = fit_point_classifier(table, train, source, cfg)
    task, pseudo = self_trained(first, table, train, source, cfg, pool)
    truth = table.labels[pool_idx]
    assert pseudo.pool == 72 and 0 < len(pseudo.index) <= 72
    assert (pseudo.labels == truth[pseudo.index]).mean() > 0.9  # an easy task: the confident labels are right
    acc = lambda t: (predict_table(t, pool, np.arange(72), source).argmax(1) == truth).mean()  # noqa: E731
    assert acc(task) >= acc(first) - 0.03 and acc(task) > 0.85
    # fit_point_classifier with unlabelled series returns the same self-trained model
    again = fit_point_classifier(table, train, source, cfg, unlabelled=pool)
    np.testing.assert_allclose(predict_table(again, pool, np.arange(72), source),
                               predict_table(task, pool, np.arange(72), source), atol=1e-5)
    # without the setting, the unlabelled series are not used
    off = fit_point_classifier(table, train, source, dataclasses.replace(cfg, self_training=None), unlabelled=pool)
    np.testing.assert_allclose(predict_table(off, pool, np.arange(72), source),
                               predict_table(first, pool, np.arange(72), source), atol=1e-6)


def test_self_training_keeps_the_first_models_steps_and_observation_band(monkeypatch) -> None:
    from agrifm.data.tables import OBSERVED
    from agrifm.tasks import pointfit

    table = _table(n=64)
    table.values[::2, 3:5] = np.nan  # gaps that differ between series: "auto" gives the band
    train = np.arange(32)
    pool = table.subset(np.arange(32, 64))
    source = source_from_table(table, train, "NDVI")
    cfg = PointFitConfig(epochs=3, batch_size=8, warmup_steps=2, members=1, progress=False, seed=0,
                         model=dict(CAT), self_training=0.0001, self_training_steps=10)
    first = fit_point_classifier(table, train, source, cfg)
    seen: list = []
    real = pointfit._fit_supervised
    monkeypatch.setattr(pointfit, "_fit_supervised", lambda t, i, s, c, **kw: seen.append((len(i), c)) or real(t, i, s, c, **kw))
    # Gaps only in the training rows' every other series; the pooled rows have none of their own,
    # so deciding the band on the stacked rows could differ: the first model's decision is kept.
    task, pseudo = pointfit.self_trained(first, table, train, source, cfg, pool)
    (n, second), = seen
    assert len(pseudo.index) == 32 and n == 64  # every pooled series passes a threshold of 0.0001
    assert second.observed_channel is True and second.self_training is None
    assert second.epochs == 10 // (64 // 8)  # the first model's 3 epochs (12 steps; 24 on the stacked rows), capped at 10 steps
    _, pseudo = pointfit.self_trained(first, table, train, source, dataclasses.replace(cfg, self_training_steps=1000),
                                      pool)
    assert seen[-1][1].epochs == 3  # under the cap: as many epochs as the first model
    assert task.sources_meta["NDVI"].bands == ("NDVI", OBSERVED)
    # The class-balanced selection is the config's to choose (off by default).
    asked: list = []
    chosen = pointfit.pseudo_labelled
    monkeypatch.setattr(pointfit, "pseudo_labelled",
                        lambda p, t, balanced=False: asked.append(balanced) or chosen(p, t, balanced))
    pointfit.self_trained(first, table, train, source, cfg, pool)
    pointfit.self_trained(first, table, train, source, dataclasses.replace(cfg, self_training_balanced=True), pool)
    assert asked == [False, True]


def test_self_training_refuses_unlabelled_series_on_other_bands_or_longer_seasons() -> None:
    from agrifm.tasks.pointfit import self_trained

    table = _table(n=32)
    idx = np.arange(32)
    source = source_from_table(table, idx, "NDVI")
    cfg = PointFitConfig(epochs=1, batch_size=16, warmup_steps=1, members=1, progress=False, seed=0, model=dict(CAT))
    first = fit_point_classifier(table, idx, source, cfg)
    other = dataclasses.replace(table, bands=("EVI",), path="pool.csv")
    with pytest.raises(InputError, match=r"pool.csv: bands \['EVI'\]; the model's table has \['NDVI'\]"):
        self_trained(first, table, idx, source, cfg, other)
    longer = dataclasses.replace(table.padded(13), lengths=np.full(32, 13), path="pool.csv")
    with pytest.raises(InputError, match="pool.csv: series of up to 13 frames; the training table's have 11"):
        self_trained(first, table, idx, source, cfg, longer)
    with pytest.raises(ValueError, match="self_training 1.5"):
        self_trained(first, table, idx, source, dataclasses.replace(cfg, self_training=1.5), table)
    shorter = table.truncated(0.5)  # a shorter grid is padded to the table's
    task, pseudo = self_trained(first, table, idx, source, dataclasses.replace(cfg, self_training=0.0001), shorter)
    assert pseudo.pool == 32 and task.model.config.num_frames == 11


def test_self_training_can_start_from_the_first_model_and_decide_with_the_labelled_prior(monkeypatch) -> None:
    """``self_training_init="first"``: the second model starts from the first's weights without its
    prior correction; ``self_training_prior="labelled"``: its logits move from the class prior of
    training + pseudo-labels to that of the labelled series."""
    from agrifm.tasks import pointfit

    table = _table(n=64)
    rows = np.arange(64)
    train = np.flatnonzero((rows < 12) | ((rows < 36) & (table.labels == 0)))  # classes 12 : 4 : 4
    pool = table.subset(np.setdiff1d(rows, train))
    source = source_from_table(table, train, "NDVI")
    cfg = PointFitConfig(epochs=2, batch_size=8, warmup_steps=1, members=1, progress=False, seed=0,
                         model=dict(CAT), self_training=0.0001, self_training_init="first")
    first = fit_point_classifier(table, train, source, cfg)
    seen: list = []
    real = pointfit._fit_supervised
    monkeypatch.setattr(pointfit, "_fit_supervised",
                        lambda *a, init=None, **kw: seen.append(init) or real(*a, init=init, **kw))
    pointfit.self_trained(first, table, train, source, cfg, pool)
    (init,), = seen
    start = pointfit._new_task(table, train, source, cfg, None)
    start.model.load_state_dict(init)
    k = len(table.class_names)
    start.add_logit_bias(pointfit.prior_logit_bias(table.labels[train], k, cfg.prior_correction * cfg.class_balance))
    every = np.arange(len(table))
    np.testing.assert_allclose(predict_table(start.eval(), table, every, source),
                               predict_table(first, table, every, source), atol=1e-6)
    # ... and training starts there (a learning rate of ~0 keeps them; the same prior correction back)
    still = pointfit._fit_one(table, train, source, dataclasses.replace(cfg, lr=1e-12, ema_decay=None), init=init)
    np.testing.assert_allclose(predict_table(still, table, every, source),
                               predict_table(first, table, every, source), atol=1e-5)
    with pytest.raises(ValueError, match="self_training_init 'warm'"):
        pointfit.self_trained(first, table, train, source, dataclasses.replace(cfg, self_training_init="warm"), pool)
    # The shift takes the prior of the trained labels to the target's: 3:1 -> 1:1 is log 3 between classes.
    shift = pointfit.prior_shift(np.array([0, 0, 1, 1]), np.array([0, 0, 0, 0, 0, 0, 1, 1]), 2)
    np.testing.assert_allclose(shift, [-np.log(3) / 2, np.log(3) / 2])
    # centred, and a class the trained labels lack counts as one
    assert sum(pointfit.prior_shift(np.array([0, 1, 2]), np.array([0]), 3)) == pytest.approx(0)
    monkeypatch.setattr(pointfit, "_fit_supervised", real)
    scratch = dataclasses.replace(cfg, self_training_init="scratch")
    plain, pseudo = pointfit.self_trained(first, table, train, source, scratch, pool)
    shifted, _ = pointfit.self_trained(first, table, train, source,
                                       dataclasses.replace(scratch, self_training_prior="labelled"), pool)
    want = pointfit.prior_shift(table.labels[train], np.concatenate([table.labels[train], pseudo.labels]), k)
    assert np.abs(want).max() > 0.05  # the pseudo-labels' class mix is not the labelled one's
    logp = lambda t: np.log(predict_table(t, table, every, source))  # noqa: E731
    moved = logp(shifted) - logp(plain)
    np.testing.assert_allclose(moved - moved.mean(1, keepdims=True), np.tile(want, (len(table), 1)), atol=1e-4)
    with pytest.raises(ValueError, match="self_training_prior 'test'"):
        pointfit.self_trained(first, table, train, source, dataclasses.replace(scratch, self_training_prior="test"),
                              pool)
