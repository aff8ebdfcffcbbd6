"""Checkpointing for runs that must survive being killed.

A run directory (``trainer.default_root_dir``) holds ``checkpoints/best.ckpt`` (best by a
validation metric) and ``checkpoints/last.ckpt`` (every n optimiser steps and at the end), so
``agrifm fit --ckpt_path last`` resumes at a fixed, predictable place, whatever the logger's
version folders are. Checkpoint files are written by :class:`AtomicCheckpointIO` (a Trainer
plugin), so a run killed while saving keeps its previous ``last.ckpt`` intact.

Only public Lightning APIs are used (``CheckpointIO.save_checkpoint``, callback hooks,
``Trainer.save_checkpoint``), so a Lightning upgrade does not silently change them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from weakref import proxy

import lightning as L
import torch
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_warn

from agrifm.io import atomic_output

__all__ = ["AtomicCheckpointIO", "RunCheckpoint", "checkpoint_dir", "find_run_checkpoint"]

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


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes a local checkpoint to a temporary file beside it, fsyncs it and renames it into
    place: a killed or failed save leaves the previous file intact, never a partial one.

    Lightning's ``TorchCheckpointIO`` buffers the whole checkpoint in memory and writes it
    through an fsspec transaction whose temporary file lies in the system temp folder, so on
    another filesystem (a run on a network or scratch disk) the final step is a copy, not a
    rename. Remote paths (``s3://`` ...) are left to it. Pass it to the Trainer as
    ``plugins=[AtomicCheckpointIO()]``; it remembers the optimiser step of each file it wrote
    (:meth:`saved_step`), which :class:`RunCheckpoint` asks before saving ``last.ckpt`` again.
    """

    def __init__(self) -> None:
        super().__init__()
        self._saved: dict[str, int] = {}

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike,
                        storage_options: Any | None = None) -> None:
        fs, local = url_to_fs(str(path))
        if storage_options is not None or not isinstance(fs, LocalFileSystem):
            super().save_checkpoint(checkpoint, path, storage_options)
        else:
            with atomic_output(local) as tmp, open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            local = os.path.realpath(local)
        self._saved[str(local)] = int(checkpoint.get("global_step", -1))

    def saved_step(self, path: str | os.PathLike) -> int | None:
        """The ``global_step`` of the checkpoint this process last wrote to ``path`` (None: none)."""
        fs, local = url_to_fs(str(path))
        return self._saved.get(os.path.realpath(local) if isinstance(fs, LocalFileSystem) else local)


class RunCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` for run directories.

    * ``dirpath=None`` means ``<default_root_dir>/checkpoints`` (not the logger's version
      folder, which changes on every restart and would hide ``last.ckpt`` from a resume);
    * a monitored metric that was never logged (no validation since a restart, or a
      validation split whose sparse labels are all unlabelled) skips that save with a warning
      instead of aborting training (Lightning raises once validation has run);
    * ``save_last`` also saves at the end of training when ``last.ckpt`` does not hold the final
      step yet (Lightning's own end-of-training save only happens when nothing was saved), so
      ``last.ckpt`` always holds the finished run;
    * files are written atomically when the Trainer has :class:`AtomicCheckpointIO`.
    """

    _warned_at: int | None = None  # the step of the last missing-metric warning

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.dirpath is None:
            self.dirpath = os.path.realpath(Path(trainer.default_root_dir) / CHECKPOINT_SUBDIR)
        super().setup(trainer, pl_module, stage)

    def _monitor_missing(self, trainer: L.Trainer) -> bool:
        """True (and one warning per step) when the best checkpoint cannot be judged now."""
        if (self.monitor is None or self.save_top_k == 0 or self.monitor in ("epoch", "step")
                or self.monitor in trainer.callback_metrics):
            return False
        if trainer.state.fn == "fit" and not trainer.sanity_checking and self._warned_at != trainer.global_step:
            self._warned_at = trainer.global_step
            rank_zero_warn(f"checkpoint: no {self.monitor!r} at step {trainer.global_step} (no validation since the "
                           "restart, or no labelled validation pixel); best checkpoint not updated")
        return True

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._monitor_missing(trainer):
            super().on_validation_end(trainer, pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._monitor_missing(trainer):
            super().on_train_epoch_end(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.save_last or trainer.fast_dev_run or trainer.global_step == 0:
            return
        metrics = {**trainer.callback_metrics, "epoch": torch.tensor(trainer.current_epoch),
                   "step": torch.tensor(trainer.global_step)}
        path = self.last_model_path or self.format_checkpoint_name(metrics, self.CHECKPOINT_NAME_LAST)
        io = trainer.strategy.checkpoint_io
        saved = io.saved_step(path) if isinstance(io, AtomicCheckpointIO) and trainer.is_global_zero else None
        if trainer.strategy.broadcast(saved) == trainer.global_step:  # rank 0 decides for all
            return
        self.last_model_path = path
        trainer.save_checkpoint(path, self.save_weights_only)  # rank 0 writes, all ranks wait
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))
