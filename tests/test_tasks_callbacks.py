"""Checkpointing of run directories: atomic checkpoint files, ``last.ckpt`` holding the final
step, a never-logged monitored metric warning instead of aborting (tiny BoringModel, CPU)."""

from __future__ import annotations

import warnings
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.demos.boring_classes import BoringModel

from agrifm.tasks.callbacks import AtomicCheckpointIO, RunCheckpoint

pytestmark = pytest.mark.usefixtures("one_thread")


def test_checkpoint_io_renames_a_complete_file_into_place(tmp_path: Path) -> None:
    io, path = AtomicCheckpointIO(), tmp_path / "ckpts" / "last.ckpt"
    io.save_checkpoint({"global_step": 3, "w": torch.ones(2)}, path)
    assert torch.load(path, weights_only=True)["global_step"] == 3
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # no temporary file left
    assert io.saved_step(path) == 3 and io.saved_step(tmp_path / "other.ckpt") is None


def test_a_failed_save_leaves_the_previous_checkpoint_intact(tmp_path: Path) -> None:
    io, path = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint({"global_step": 2}, path)
    before = path.read_bytes()
    with pytest.raises(Exception):
        io.save_checkpoint({"global_step": 3, "bad": lambda: None}, path)  # not picklable: fails mid-save
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
    assert io.saved_step(path) == 2


def test_last_holds_the_final_step_and_a_missing_metric_only_warns(tmp_path: Path) -> None:
    """last.ckpt every 2 steps of a 3-step run still ends at step 3; BoringModel never logs
    ``val_mf1``, which plain ModelCheckpoint turns into an error once validation has run."""
    last = RunCheckpoint(save_top_k=0, save_last=True, every_n_train_steps=2, enable_version_counter=False)
    best = RunCheckpoint(monitor="val_mf1", mode="max", filename="best", enable_version_counter=False)
    trainer = L.Trainer(max_steps=3, limit_train_batches=2, limit_val_batches=1, num_sanity_val_steps=0,
                        logger=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                        default_root_dir=str(tmp_path), callbacks=[last, best], plugins=[AtomicCheckpointIO()])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(BoringModel())
    assert any("no 'val_mf1'" in str(w.message) for w in caught)
    ckpts = tmp_path / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["last.ckpt"]
    assert torch.load(ckpts / "last.ckpt", weights_only=False)["global_step"] == 3
