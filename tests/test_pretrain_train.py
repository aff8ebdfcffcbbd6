"""Pre-training: model and export units, then tiny end-to-end runs of ``agrifm pretrain`` on
shards built (with ``agrifm pretrain-data``) from the real Slovenia NDVI stack, cloud mask and
land-use raster."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from agrifm.compat import load_official_checkpoint
from agrifm.models.agrifm import AgriFM
from agrifm.models.presets import preset
from agrifm.pretrain.model import (
    PretrainModel,
    ema_update,
    fraction_l1,
    from_agrifm,
    load_pretrain_model,
    published_state_dict,
    to_agrifm,
)
from conftest import DATA, need

L = pytest.importorskip("lightning")

# A tiny backbone (2 stages) that keeps the test runs to seconds on 2 CPU cores.
TINY = {"preset": "small", "embed_dim": 16, "depths": [1, 1], "num_heads": [1, 2], "patch_size": [2, 2, 2],
        "window_size": [4, 4, 4], "downsample_steps": [[2, 2, 2]], "drop_path_rate": 0.0}


def tiny_config(**sources: int):
    return preset("small", **{k: v for k, v in TINY.items() if k != "preset"}, sources=sources, head="fraction",
                  num_classes=8, feature_fusion="mean")


# -- model units ---------------------------------------------------------------------------------


def test_shared_backbone_maps_to_published_layout_and_agrifm() -> None:
    torch.manual_seed(0)
    cfg = tiny_config(S2=10, HLSL30=6)
    model = PretrainModel(cfg).eval()
    keys = set(model.state_dict())
    assert {k.split(".")[0] for k in keys} == {"backbone", "S2_patch_emd", "HLSL30_patch_emd", "head"}
    pub = published_state_dict(model.state_dict(), model.sources, cfg.window_size)
    assert not any(k.startswith("head.") for k in pub) and "S2_patch_emd.proj.weight" in pub
    assert "backbone.layers.0.blocks.0.attn.relative_position_index" in pub  # every published buffer

    s2, ls = torch.randn(2, 4, 10, 16, 16), torch.randn(2, 4, 6, 16, 16)
    frac = model("S2", s2, grid=(4, 4))
    assert frac.shape == (2, 8, 4, 4) and torch.allclose(frac.sum(1), torch.ones(2, 4, 4))
    assert model("S2", s2, grid=(16, 16)).shape == (2, 8, 16, 16)  # coarser features: interpolated up

    agri = to_agrifm(model.state_dict(), cfg).eval()
    with torch.no_grad():  # AgriFM's head over both sources = our head on their mean features
        want = model.head((model.encode("S2", s2) + model.encode("HLSL30", ls)) / 2)
        assert torch.allclose(agri({"S2": s2, "HLSL30": ls}), want, atol=1e-5)
    back = from_agrifm(agri)
    assert all(torch.equal(v, back.state_dict()[k]) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="not a pre-training model"):
        from_agrifm(AgriFM(preset("small", sources={"S2": 10})))


def test_l1_ema_and_input_checks() -> None:
    pred = torch.tensor([[[[0.5]], [[0.5]]]])
    target = torch.tensor([[[[1.0]], [[0.0]]]])
    l1, n = fraction_l1(pred.expand(1, 2, 2, 2), target.expand(1, 2, 2, 2), torch.tensor([[[True, False], [False, False]]]))
    assert (float(l1), float(n)) == (1.0, 1.0)

    a, b = PretrainModel(tiny_config(S2=10)), PretrainModel(tiny_config(S2=10))
    t0 = [p.clone() for p in a.parameters()]
    ema_update(a, b, 0.9)
    assert all(torch.allclose(p, 0.9 * p0 + 0.1 * q) for p, p0, q in zip(a.parameters(), t0, b.parameters()))
    with pytest.raises(ValueError, match=r"expected \(B, T, 10, H, W\)"):
        a("S2", torch.zeros(1, 4, 3, 8, 8))
    with pytest.raises(KeyError, match="unknown source 'L8'"):
        a("L8", torch.zeros(1, 4, 10, 8, 8))


def test_teacher_weight_warms_up_from_zero() -> None:
    from agrifm.pretrain.task import PretrainTask

    task = PretrainTask(tiny_config(S2=10).to_dict(), teacher_weight=0.3, teacher_warmup=10)
    assert [task.teacher_weight_at(s) for s in (0, 5, 10, 50)] == [0.0, 0.15, 0.3, 0.3]
    assert not any(p.requires_grad for p in task.teacher.parameters())
    task.train()
    assert task.model.training and not task.teacher.training
    with pytest.raises(ValueError, match="teacher_weight"):
        PretrainTask(tiny_config(S2=10).to_dict(), teacher_weight=1.5)


def test_ce_weight_can_decay_to_pure_l1() -> None:
    from agrifm.pretrain.task import PretrainTask

    task = PretrainTask(tiny_config(S2=10).to_dict(), ce_weight=1.0, ce_decay=10)
    assert [task.ce_weight_at(s) for s in (0, 5, 10, 50)] == [1.0, 0.5, 0.0, 0.0]
    assert PretrainTask(tiny_config(S2=10).to_dict(), ce_weight=0.5).ce_weight_at(1000) == 0.5
    assert PretrainTask(tiny_config(S2=10).to_dict()).ce_weight_at(0) == 0.0


def test_collapsed_predictions_are_reported(monkeypatch) -> None:
    import agrifm.pretrain.task as task_mod
    from agrifm.pretrain.task import PretrainTask

    task = PretrainTask(tiny_config(S2=10).to_dict())
    monkeypatch.setattr(task, "_global_sum", lambda t: t)
    fractions = torch.zeros(2, 8, 2, 2)
    fractions[:, 1] = 1.0
    batch = {"fractions": fractions, "frac_valid": torch.ones(2, 2, 2, dtype=torch.bool), "_weight": 1.0}

    def run(pred: torch.Tensor) -> list[str]:
        monkeypatch.setattr(task_mod, "predict_fractions", lambda model, b: pred)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            task.on_validation_epoch_start()
            task.validation_step(batch, 0)
            task.on_validation_epoch_end()
        return [str(w.message) for w in caught if "collapsed" in str(w.message)]

    constant = torch.full((2, 8, 2, 2), 1 / 8)
    assert len(run(constant)) == 1 and task.last_val_loss == pytest.approx(2 * (1 - 1 / 8))
    varied = constant.clone()
    varied[0, :, 0, 0] = torch.tensor([0.0, 1.0] + [0.0] * 6)
    assert run(varied) == []


def test_source_schedule_is_shared_and_proportional() -> None:
    from agrifm.pretrain.task import SourceMixer

    class Fake:
        def __init__(self, n: int) -> None:
            self.num_samples = n

    mixer = SourceMixer({"S2": Fake(300), "MODIS": Fake(100)}, 4)  # type: ignore[dict-item]
    picks = [mixer.source_of(i) for i in range(2000)]
    assert picks == [SourceMixer({"S2": Fake(300), "MODIS": Fake(100)}, 4).source_of(i) for i in range(2000)]  # type: ignore[dict-item]
    assert 0.7 < picks.count("S2") / len(picks) < 0.8


# -- end to end on real shards --------------------------------------------------------------------


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("rasterio")
    from agrifm.pretrain.build import main as build

    d = need(DATA / "eolearn_slovenia")
    out = tmp_path_factory.mktemp("shards")
    argv = ["--source", f"NDVI={d / 'NDVI.tif'}", "--mask", f"NDVI={d / 'CLM.tif'}", "--landcover", str(d / "LULC.tif"),
            "--classes", "eolearn_lulc", "--chip-size", "16", "--cell-size", "4", "--keep-empty-frames",
            "--val-fraction", "0.3", "--split-block", "32", "--samples-per-shard", "8", "--out", str(out), "--quiet"]
    assert build(argv) == 0
    return out


@pytest.fixture(scope="module")
def tiny_yaml(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    path.write_text(json.dumps(TINY))  # JSON is YAML
    return path


def _argv(shards: Path, tiny_yaml: Path, out: Path, *extra: str) -> list[str]:
    return ["--data", str(shards / "train"), "--val-data", str(shards / "val"), "--out", str(out), "--model", str(tiny_yaml),
            "--batch-size", "4", "--workers", "0", "--quiet", "--log-every", "1", "--val-every", "2", "--ckpt-every", "1",
            "--teacher-warmup", "2", "--lr", "1e-3", "--warmup-steps", "1", *extra]


def test_pretrain_end_to_end_outputs_load(shards: Path, tiny_yaml: Path, tmp_path: Path, capsys) -> None:
    from agrifm.checkpoint import load_model
    from agrifm.pretrain.cli import main

    run = tmp_path / "run"
    assert main(_argv(shards, tiny_yaml, run, "--max-steps", "3")) == 0
    out = capsys.readouterr().out
    assert "3 steps" in out and "shorter than the frames asked for" in out

    rows = (run / "metrics.csv").read_text().splitlines()
    assert rows[0] == "step,loss,val_loss" and [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3"]
    assert rows[2].split(",")[2] and rows[3].split(",")[2]  # validated at step 2 and on the final weights
    assert (run / "loss_curves.png").read_bytes()[:4] == b"\x89PNG"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["samples"] == 12 and summary["skipped"]["short"] > 0  # 2015 has 11 dates: skipped, counted

    agri = load_model(run / "model.safetensors")
    meta = agri.meta
    assert meta.task == "pretrain" and meta.class_names[:2] == ["cropland", "forest"] and meta.frames == 16
    src = meta.sources["NDVI"]
    assert src.bands == ("NDVI",) and 0.2 < src.mean[0] < 0.9 and 0.05 < src.std[0] < 0.5  # NDVI stats from the shards

    pub = torch.load(run / "encoder_published.pth", weights_only=True)
    assert set(k.split(".")[0] for k in pub) == {"backbone", "NDVI_patch_emd"}
    for name in ("classification", "segmentation"):  # fine-tuning models with a 1-band NDVI source
        ft = AgriFM(preset("small", **{k: v for k, v in TINY.items() if k != "preset"}, sources={"NDVI": 1},
                           head=name, num_classes=5, feature_fusion="mean"))
        report = load_official_checkpoint(ft, run / "encoder_published.pth")
        assert report.kind == "encoder" and not [k for k in report.missing if k.startswith("encoders.")]
        assert torch.equal(ft.encoders["NDVI"].patch_emd.proj.weight, pub["NDVI_patch_emd.proj.weight"])
    pre = load_pretrain_model(run / "model.safetensors")
    assert all(torch.equal(pre.state_dict()[f"backbone.{k[9:]}"], v) for k, v in pub.items()
               if k.startswith("backbone.") and not k.endswith("relative_position_index"))

    from agrifm.tasks.classification import ClassificationTask

    task = ClassificationTask(model={**TINY, "feature_fusion": "mean"}, sources={"NDVI": src}, class_names=list("abc"),
                              init_checkpoint=str(run / "encoder_published.pth"))
    assert torch.equal(task.model.encoders["NDVI"].backbone.norm.weight, pub["backbone.norm.weight"])


def test_resume_mid_run_matches_an_uninterrupted_run(shards: Path, tiny_yaml: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from agrifm.pretrain.cli import parse_args, run

    class StopAt(L.Callback):
        def on_train_batch_end(self, trainer, *args) -> None:
            if trainer.global_step >= 2:
                trainer.should_stop = True

    straight, broken = tmp_path / "straight", tmp_path / "broken"
    run(parse_args(_argv(shards, tiny_yaml, straight, "--max-steps", "4")))
    run(parse_args(_argv(shards, tiny_yaml, broken, "--max-steps", "4")), callbacks=[StopAt()])
    assert (broken / "metrics.csv").read_text().splitlines()[-1].startswith("2,")
    run(parse_args(_argv(shards, tiny_yaml, broken, "--max-steps", "4", "--resume")))
    a, b = load_file(straight / "model.safetensors"), load_file(broken / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)  # same batches, teacher, optimiser and schedule
    assert (straight / "metrics.csv").read_text() == (broken / "metrics.csv").read_text()


def test_bad_inputs_are_clear_errors(shards: Path, tiny_yaml: Path, tmp_path: Path, capsys) -> None:
    import shutil

    from agrifm.cli import main as agrifm_main

    def main(argv):  # through the dispatcher, the one place errors are printed
        return agrifm_main(["pretrain", *argv])

    assert main(["--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r")]) == 2
    assert "no index.json" in capsys.readouterr().err

    bad = tmp_path / "bad"
    shutil.copytree(shards / "train" / "NDVI", bad)
    victim = sorted(bad.glob("*.tar"))[1]
    victim.write_bytes(victim.read_bytes()[:1000])
    assert main(["--data", str(bad), "--out", str(tmp_path / "r")]) == 2
    assert f"{victim} is truncated" in capsys.readouterr().err

    assert main(_argv(shards, tiny_yaml, tmp_path / "r", "--resume")) == 2
    assert "nothing to resume" in capsys.readouterr().err
    assert main(_argv(shards, tiny_yaml, tmp_path / "r", "--batch-size", "0")) == 2
    assert "--batch-size must be >= 1" in capsys.readouterr().err


def test_validation_batches_balance_ranks(shards: Path, monkeypatch) -> None:
    import agrifm.pretrain.task as task_mod
    from agrifm.pretrain.task import ValidationBatches, shard_dataset
    from agrifm.sensors import Source

    src = Source("NDVI", ("NDVI",), 10.0, "index", (0.5,), (0.2,))
    seen = []
    for rank in (0, 1):
        monkeypatch.setattr(task_mod, "rank_world", lambda r=rank: (r, 2))
        ds = shard_dataset(shards / "val" / "NDVI", src, 16)
        seen.append([(b["_weight"], b["_pos"][:, 2].tolist()) for b in ValidationBatches({"NDVI": ds}, 4)])
    assert len(seen[0]) == len(seen[1])  # the same number of forward passes on every rank
    real = [p for r in seen for w, pos in r if w == 1.0 for p in pos]
    assert len(real) == len(set(real)) == ds.stats["samples"]  # every sample exactly once
    assert np.all(np.array(real) > 0)


def test_metrics_log_is_a_lightning_logger_keeping_one_row_per_step(tmp_path: Path) -> None:
    from lightning.pytorch.loggers.logger import Logger

    from agrifm.pretrain.metrics_log import MetricsLog

    path = tmp_path / "metrics.csv"
    path.write_text("step,loss,val_loss\n1,0.500000,\n2,0.400000,0.450000\n3,0.300000,\n")
    log = MetricsLog(path)
    assert isinstance(log, Logger)
    log.log_hyperparams({"lr": 1e-3})
    log.save()  # Lightning saves before training starts: nothing logged yet, the earlier run's rows stay
    assert path.read_text().count("\n") == 4
    log.resume(2)  # the checkpoint's step: row 3 is about to be redone
    log.log_metrics({"loss": 0.25, "epoch": 0, "w": 0.1}, step=3)  # only the pinned columns are kept
    log.finalize("success")
    assert path.read_text() == "step,loss,val_loss\n1,0.500000,\n2,0.400000,0.450000\n3,0.250000,\n"
