"""Checkpointing for runs that must survive being killed.

A run directory (``trainer.default_root_dir``) holds ``checkpoints/best.ckpt`` (best by a
validation metric) and ``checkpoints/last.ckpt`` (every n optimiser steps and at the end), so
``agrifm fit --ckpt_path last`` resumes at a fixed, predictable place, whatever the logger's
version folders are.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from weakref import proxy

import lightning as L
from fsspec.utils import get_protocol
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_warn

__all__ = ["RunCheckpoint", "checkpoint_dir", "find_run_checkpoint"]

CHECKPOINT_SUBDIR = "checkpoints"


def checkpoint_dir(trainer: L.Trainer) -> Path:
    """Where this run's checkpoints go: the first :class:`RunCheckpoint`'s folder, else
    ``<default_root_dir>/checkpoints``."""
    for cb in trainer.callbacks:  # type: ignore[attr-defined]
        if isinstance(cb, RunCheckpoint) and cb.dirpath is not None:
            return Path(cb.dirpath)
    return Path(trainer.default_root_dir) / CHECKPOINT_SUBDIR


def find_run_checkpoint(trainer: L.Trainer, which: str) -> Path | None:
    """``'best'``/``'last'`` -> the file in this run's checkpoint folder (None if absent);
    anything else is taken as a path and must exist."""
    if which in ("best", "last"):
        path = checkpoint_dir(trainer) / f"{which}.ckpt"
        return path if path.is_file() else None
    path = Path(which)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    return path


class RunCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` for run directories.

    * ``dirpath=None`` means ``<default_root_dir>/checkpoints`` (not the logger's version
      folder, which changes on every restart and would hide ``last.ckpt`` from a resume);
    * a monitored metric that was never logged (e.g. a validation split whose sparse labels
      are all unlabelled) skips the best-checkpoint save with one warning instead of
      aborting training;
    * ``save_last`` also saves at the end of training when the final step is not saved yet,
      so ``last.ckpt`` always holds the finished run;
    * local files are written to a temporary name and renamed, so a run killed while saving
      keeps its previous ``last.ckpt`` intact.
    """

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.dirpath is None:
            self.dirpath = os.path.realpath(Path(trainer.default_root_dir) / CHECKPOINT_SUBDIR)
        super().setup(trainer, pl_module, stage)

    def _save_topk_checkpoint(self, trainer: L.Trainer, monitor_candidates: dict[str, Any]) -> None:
        if self.monitor is not None and self.save_top_k != 0 and self.monitor not in monitor_candidates:
            rank_zero_warn(f"checkpoint: no {self.monitor!r} at step {trainer.global_step} (no validation since the "
                           "restart, or no labelled validation pixel); best checkpoint not updated")
            return
        super()._save_topk_checkpoint(trainer, monitor_candidates)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        if get_protocol(str(filepath)) != "file":
            super()._save_checkpoint(trainer, filepath)
            return
        path = Path(filepath)
        tmp = path.with_name(f".{path.name}.tmp")
        trainer.save_checkpoint(tmp, self.save_weights_only)  # rank 0 writes, all ranks wait
        if trainer.is_global_zero:
            os.replace(tmp, path)
        trainer.strategy.barrier("RunCheckpoint._save_checkpoint")
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))
