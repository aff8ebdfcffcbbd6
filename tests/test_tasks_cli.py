"""`agrifm fit|validate|test` end to end on real data, tiny: PASTIS (S2, S2 + S1A, boundaries),
Sinop points (sparse labels), two resolutions; resume after a kill; help and example configs."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch.callbacks import Callback

from agrifm.checkpoint import load_model, read_metadata
from agrifm.cli import main as agrifm
from agrifm.tasks.cli import AgriFMCLI, default_trainer_settings
from agrifm.tasks.cli import main as tasks_main
from conftest import DATA, DEMO_DATA, ROOT, need
from test_tasks_datamodules import S2_9, aggregate_stack

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIGS = ROOT / "configs"
TINY = json.dumps({"preset": "small", "embed_dim": 8, "depths": [1, 1, 1, 1], "decoder_dim": 16,
                   "patch_size": [1, 2, 2]})
FAST = ["--trainer.num_sanity_val_steps", "0", "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false", "--trainer.log_every_n_steps", "1",
        "--model.init_args.model", TINY]


def _args(cmd: str, config: Path, run: Path, *extra: str) -> list[str]:
    return [cmd, "--config", str(config), "--trainer.default_root_dir", str(run), *FAST, *extra]


def _pastis(*extra: str) -> list[str]:
    return ["--data.init_args.root", str(need(DATA / "pastis_geobench")), *extra]


def _step(ckpt: Path) -> int:
    return int(torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"])


def _fit_and_test(config: Path, run: Path, *extra: str, steps: int = 2) -> dict:
    assert agrifm(_args("fit", config, run, "--trainer.max_steps", str(steps), *extra)) == 0
    assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "model.safetensors").is_file()
    assert agrifm(_args("test", config, run, *extra)) == 0
    for name in ("metrics.json", "report.md", "confusion_matrix.png", "per_class_f1.png", "training_curves.png"):
        assert (run / "test" / name).is_file(), name
    return json.loads((run / "test" / "metrics.json").read_text())


def test_pastis_s2_fit_then_test(tmp_path):
    metrics = _fit_and_test(CONFIGS / "pastis_s2.yaml", tmp_path, *_pastis())
    assert len(metrics["class_names"]) == 19 and metrics["n"] > 1000  # void (19) ignored
    meta = read_metadata(tmp_path / "model.safetensors")
    assert meta.task == "segmentation" and meta.frames == 3 and list(meta.sources) == ["S2"]
    model = load_model(tmp_path / "model.safetensors")
    with torch.no_grad():
        assert model({"S2": torch.zeros(1, 3, 10, 32, 32)}).shape == (1, 19, 32, 32)


def test_pastis_s2_s1a_two_sources_stats_travel_with_model(tmp_path):
    _fit_and_test(CONFIGS / "pastis_s2_s1.yaml", tmp_path, *_pastis())
    meta = read_metadata(tmp_path / "model.safetensors")
    assert list(meta.model.sources) == ["S2", "S1A"] and meta.sources["S1A"].bands == ("VV", "VH", "VV/VH")
    assert -30 < meta.sources["S1A"].mean[0] < 0  # computed on the training split, in dB


def test_pastis_boundary_from_instances(tmp_path):
    metrics = _fit_and_test(CONFIGS / "pastis_boundary.yaml", tmp_path, *_pastis())
    assert metrics["class_names"] == ["background", "field"] and 0 <= metrics["boundary_f1"] <= 1
    assert "boundary_f1" in (tmp_path / "test" / "report.md").read_text()
    meta = read_metadata(tmp_path / "model.safetensors")
    assert meta.task == "boundary" and meta.model.num_classes == 3


def test_sinop_points_sparse_labels(tmp_path):
    cube = need(DEMO_DATA / "mato_grosso_modis" / "sinop_cube")
    data = ["--data.init_args.stacks", json.dumps({"MOD13Q1": str(cube)}), "--data.init_args.points",
            str(DEMO_DATA / "mato_grosso_modis" / "samples" / "sinop_points.csv"), "--data.init_args.frames", "4"]
    metrics = _fit_and_test(CONFIGS / "sinop_points.yaml", tmp_path, *data)
    assert 1 <= metrics["n"] <= 8  # only the labelled points of the test chips are evaluated
    assert read_metadata(tmp_path / "model.safetensors").sources["MOD13Q1"].bands == ("NDVI", "EVI")
    # A second test keeps the first report unless told to replace it.
    args = _args("test", CONFIGS / "sinop_points.yaml", tmp_path, *data)
    report = tmp_path / "test" / "metrics.json"
    report.write_text("{}")
    assert agrifm(args) == 2 and report.read_text() == "{}"
    assert agrifm([*args, "--overwrite"]) == 0 and json.loads(report.read_text())["n"] == metrics["n"]


def test_two_resolutions_fit(tmp_path):
    cube = need(DATA / "worldcereal_belgium" / "test_cube_100x100")
    aggregate_stack(cube, tmp_path / "s2_30m")
    config = tmp_path / "multires.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"class_path": "agrifm.tasks.segmentation.SegmentationTask",
                  "init_args": {"class_names": ["cropland", "other"]}},
        "data": {"class_path": "agrifm.tasks.datamodules.ChipDataModule", "init_args": {
            "stacks": {"S2": str(cube), "S2_30m": str(tmp_path / "s2_30m")},
            "sources": {"S2": "S2", "S2_30m": {"bands": S2_9, "resolution_m": 30.0}},
            "band_map": {"S2": {"B8A": "B08"}}, "labels": str(cube / "pseudo_labels" / "cropland_classification.tif"),
            "chip_size": 30, "split_block": 50, "val_fraction": 0.25, "frames": 3, "batch_size": 4}}}))
    run = tmp_path / "run"
    assert agrifm(_args("fit", config, run, "--trainer.max_steps", "2")) == 0
    meta = read_metadata(run / "model.safetensors")
    assert list(meta.sources) == ["S2", "S2_30m"] and meta.sources["S2_30m"].resolution_m == 30.0


class KillAfter(Callback):
    """Stands in for a killed process: raises after ``step`` optimiser steps."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step >= self.step:
            raise RuntimeError(f"killed at step {trainer.global_step}")


@pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")
def test_resume_after_kill(tmp_path):
    """Epochs of 2 steps, last.ckpt every step; killed during step 3 -> resume from step 2 -> 3."""
    args = _args("fit", CONFIGS / "pastis_s2.yaml", tmp_path, *_pastis("--data.init_args.batch_size", "2"),
                 "--trainer.max_steps", "3", "--trainer.limit_train_batches", "2",
                 "--last_checkpoint.every_n_train_steps", "1")
    with pytest.raises(RuntimeError, match="killed at step 3"):
        AgriFMCLI(args=args, trainer_defaults={**default_trainer_settings(), "callbacks": [KillAfter(3)]})
    ckpts = tmp_path / "checkpoints"
    assert _step(ckpts / "last.ckpt") == 2 and _step(ckpts / "best.ckpt") == 2  # validation after epoch 0
    assert not list(ckpts.glob(".*.tmp")) and not (tmp_path / "model.safetensors").exists()

    assert agrifm([*args, "--ckpt_path", "last"]) == 0
    assert _step(ckpts / "last.ckpt") == 3 and (ckpts / "best.ckpt").is_file()
    assert sorted(p.name for p in ckpts.iterdir()) == ["best.ckpt", "last.ckpt"]
    assert read_metadata(tmp_path / "model.safetensors").extra["global_step"] == 3
    with open(tmp_path / "logs" / "version_1" / "metrics.csv") as f:
        steps = {int(r["step"]) for r in csv.DictReader(f) if r.get("train_loss_step")}
    assert steps == {2}  # the resumed run trained step 3 only


def test_help_and_example_configs_parse(tmp_path, capsys):
    for cmd in ("fit", "validate", "test"):
        with pytest.raises(SystemExit) as e:
            agrifm([cmd, "--help"])
        assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--ckpt_path" in out and "--last_checkpoint.every_n_train_steps" in out
    for config in sorted(CONFIGS.glob("*.yaml")):
        with pytest.raises(SystemExit) as e:
            agrifm(["fit", "--config", str(config), "--print_config"])
        assert e.value.code == 0, config
        printed = yaml.safe_load(capsys.readouterr().out)
        assert printed["model"]["class_path"].startswith("agrifm.tasks."), config


def test_missing_checkpoint_is_named(tmp_path, capsys):
    assert agrifm(_args("test", CONFIGS / "pastis_s2.yaml", tmp_path, *_pastis(), "--ckpt_path", "best")) == 2
    assert re.search(r"agrifm test: error: no best.ckpt in .*checkpoints", capsys.readouterr().err)


def test_class_order_must_match_the_data(tmp_path):
    cube = need(DEMO_DATA / "mato_grosso_modis" / "sinop_cube")
    with pytest.raises(ValueError, match=r"data's classes \['Cerrado', 'Forest'.* differ from the model's"):
        tasks_main(_args("fit", CONFIGS / "sinop_points.yaml", tmp_path, "--data.init_args.stacks",
                     json.dumps({"MOD13Q1": str(cube)}), "--data.init_args.points",
                     str(DEMO_DATA / "mato_grosso_modis" / "samples" / "sinop_points.csv"),
                     "--model.init_args.class_names", '["Forest", "Cerrado", "Pasture", "Soy_Corn"]'))
