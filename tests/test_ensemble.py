"""Ensembles of point models: the average, the checkpoint round trip, parallel = sequential training."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import benchmark

from agrifm.checkpoint import load_model, load_predictor, read_metadata, save_model
from agrifm.data.tables import SeriesTable
from agrifm.models.agrifm import AgriFM
from agrifm.models.ensemble import Ensemble
from agrifm.models.presets import preset
from agrifm.sensors import Source

pytestmark = pytest.mark.usefixtures("one_thread")

SOURCE = {"NDVI": Source(name="NDVI", bands=("NDVI",), resolution_m=250.0, units="index", mean=(0.5,), std=(0.2,))}


def _point_model(seed: int) -> AgriFM:
    torch.manual_seed(seed)
    return AgriFM(preset("point-small", embed_dim=8, num_heads=(1, 1, 1, 1), sources={"NDVI": 1}, num_classes=3))


def _batch(n: int = 5, t: int = 8) -> tuple[dict, dict]:
    g = torch.Generator().manual_seed(0)
    return {"NDVI": torch.randn(n, t, 1, 1, 1, generator=g)}, {"NDVI": torch.arange(t).repeat(n, 1) * 16.0 + 19000}


def test_ensemble_output_is_the_members_mean_probability() -> None:
    members = [_point_model(s).eval() for s in range(3)]
    ens = Ensemble(members).eval()
    x, d = _batch()
    with torch.no_grad():
        mean = torch.stack([m(x, d).softmax(1) for m in members]).mean(0)
        out = ens(x, d)
    torch.testing.assert_close(out.softmax(1), mean, atol=1e-6, rtol=0)
    torch.testing.assert_close(out.exp().sum(1), torch.ones(5), atol=1e-6, rtol=0)  # log-probabilities
    assert ens.config is members[0].config and len(ens) == 3


def test_ensemble_rejects_mixed_configs_and_heads_without_class_probabilities() -> None:
    with pytest.raises(ValueError, match="member 1 has a different model config"):
        Ensemble([_point_model(0), AgriFM(preset("point-small", embed_dim=16, sources={"NDVI": 1},
                                                                num_classes=3))])
    with pytest.raises(ValueError, match="at least one member"):
        Ensemble([])
    frac = AgriFM(preset("small", head="fraction", sources={"NDVI": 1}, num_classes=3))
    with pytest.raises(ValueError, match="'fraction' head has none"):
        Ensemble([frac])


def test_ensemble_checkpoint_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ens = Ensemble([_point_model(s) for s in range(2)]).eval()
    path = save_model(ens, tmp_path / "ens.safetensors", task="classification", sources=SOURCE, class_names=["a", "b", "c"])
    assert read_metadata(path).members == 2
    loaded = load_model(path)
    assert isinstance(loaded, Ensemble) and len(loaded) == 2
    x, d = _batch()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, d), ens(x, d), atol=0, rtol=0)
        probs = load_predictor(path, device="cpu")(x, d)
    torch.testing.assert_close(probs, ens(x, d).softmax(1), atol=1e-6, rtol=0)
    # One member is a plain model, stored in the single-model layout.
    single = save_model(Ensemble([_point_model(0)]), tmp_path / "one.safetensors", task="classification",
                        sources=SOURCE, class_names=["a", "b", "c"])
    assert read_metadata(single).members == 1 and not isinstance(load_model(single), Ensemble)
    from agrifm.commands.info import main as info

    assert info([str(path), "--frames", "8", "--size", "1"]) == 0
    assert "an ensemble of 2 such models" in capsys.readouterr().out
    with pytest.raises(ValueError, match="ensemble checkpoint needs a task whose output is class probabilities"):
        save_model(ens, tmp_path / "b.safetensors", task="boundary", sources=SOURCE, class_names=["a", "b", "c"])


def _toy_table(n: int = 60, t: int = 10) -> SeriesTable:
    rng = np.random.default_rng(0)
    labels = np.arange(n) % 3
    days = np.datetime64("2020-01-01") + np.arange(t) * 16
    x = np.arange(t) * 16 / 30.0
    values = (np.sin(x[None, :] + labels[:, None]) + 0.1 * rng.standard_normal((n, t)))[..., None]
    return SeriesTable(values=values.astype(np.float32), dates=np.repeat(days[None], n, 0), lengths=np.full(n, t),
                       labels=labels, class_names=["a", "b", "c"], sample_ids=np.array([f"s{i}" for i in range(n)]),
                       bands=("NDVI",), path="toy")


def test_members_trained_in_parallel_processes_equal_members_trained_one_after_another() -> None:
    from agrifm.tasks.pointfit import PointFitConfig, fit_point_classifier, predict_table, source_from_table

    table = _toy_table()
    idx = np.arange(len(table))
    source = source_from_table(table, idx, "NDVI")
    cfg = PointFitConfig(epochs=2, batch_size=16, warmup_steps=2, members=2, workers=1, progress=False, seed=1,
                         model={"preset": "point-small", "embed_dim": 8, "depths": [1, 1, 1], "num_heads": [1, 1, 1]})
    seq = fit_point_classifier(table, idx, source, cfg)
    par = fit_point_classifier(table, idx, source, dataclasses.replace(cfg, workers=2))
    assert isinstance(seq.model, Ensemble) and len(seq.model) == 2
    s_seq, s_par = seq.model.state_dict(), par.model.state_dict()
    assert s_seq.keys() == s_par.keys()
    for k in s_seq:
        torch.testing.assert_close(s_par[k], s_seq[k], atol=0, rtol=0, msg=k)
    # Members differ (own seeds), and member i of seed s is the single model of seed s·members + i.
    assert not torch.equal(s_seq["members.0.head.mlp.3.weight"], s_seq["members.1.head.mlp.3.weight"])
    one = fit_point_classifier(table, idx, source, dataclasses.replace(cfg, members=1, seed=3))
    torch.testing.assert_close(one.model.state_dict()["head.mlp.3.weight"], s_seq["members.1.head.mlp.3.weight"],
                               atol=0, rtol=0)
    probs = predict_table(seq, table, idx, source)
    assert probs.shape == (len(table), 3) and np.allclose(probs.sum(1), 1, atol=1e-5)


def test_prior_correction_is_a_fraction_of_the_class_weighting_folded_into_every_member() -> None:
    from agrifm.tasks.pointfit import PointFitConfig, fit_point_classifier, prior_logit_bias, source_from_table

    table = _toy_table()
    table = dataclasses.replace(table, labels=np.where(np.arange(len(table)) % 5 == 0, 2, table.labels % 2))  # class 2 rare
    idx = np.arange(len(table))
    source = source_from_table(table, idx, "NDVI")
    cfg = PointFitConfig(epochs=1, batch_size=16, warmup_steps=2, members=2, workers=1, progress=False, class_balance=0.5,
                         prior_correction=0.0, model={"preset": "point-small", "embed_dim": 8, "depths": [1, 1, 1],
                                                      "num_heads": [1, 1, 1]})
    plain = fit_point_classifier(table, idx, source, cfg).model.state_dict()
    task = fit_point_classifier(table, idx, source, part_cfg := dataclasses.replace(cfg, prior_correction=0.8))
    part = {k: v.clone() for k, v in task.model.state_dict().items()}
    want = torch.tensor(prior_logit_bias(table.labels, 3, 0.4))  # 0.8 of the weighting's power 0.5
    assert want[2] < want[0]  # the rare class loses part of what its loss weight gave it
    keys = [f"members.{m}.head.mlp.3.bias" for m in range(2)]
    for key in keys:
        torch.testing.assert_close(part[key] - plain[key], want.to(part[key].dtype), atol=1e-6, rtol=0)
    # accuracy.py --corrections: the same members re-scored at another correction, then restored
    accuracy = benchmark("accuracy")
    seen = accuracy.rescored(task, part_cfg, table.labels, 0.0, lambda t: [t.model.state_dict()[k].clone() for k in keys])
    for key, bias in zip(keys, seen):
        torch.testing.assert_close(bias, plain[key], atol=1e-6, rtol=0)  # as if trained without the correction
        torch.testing.assert_close(task.model.state_dict()[key], part[key], atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match=r"prior_correction 1.5: expected a fraction in \[0, 1\]"):
        fit_point_classifier(table, idx, source, dataclasses.replace(cfg, prior_correction=1.5))


def test_fine_tuning_from_an_ensemble_checkpoint_starts_from_its_first_member(tmp_path: Path) -> None:
    from agrifm.tasks.classification import ClassificationTask

    ens = Ensemble([_point_model(s) for s in range(2)])
    path = save_model(ens, tmp_path / "ens.safetensors", task="classification", sources=SOURCE, class_names=["a", "b", "c"])
    task = ClassificationTask(model={"preset": "point-small", "embed_dim": 8, "num_heads": [1, 1, 1, 1]}, sources=SOURCE,
                              class_names=["a", "b", "c"], init_checkpoint=str(path))
    for k, v in ens.members[0].state_dict().items():
        torch.testing.assert_close(task.model.state_dict()[k], v, atol=0, rtol=0, msg=k)
