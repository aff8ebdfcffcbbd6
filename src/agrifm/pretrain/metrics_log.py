"""Pre-training's ``metrics.csv``: a Lightning logger (the public ``Logger`` interface, passed as
``Trainer(logger=...)``) that keeps one row per logged optimiser step (``step,loss,val_loss``,
six decimals) in memory and rewrites the file atomically, so a resumed run first drops the rows
after its checkpoint's step and then writes the same file as an uninterrupted run.

A ``Logger`` of its own rather than Lightning's ``CSVLogger``: that one appends a row per
``log_metrics`` call (``loss`` and ``val_loss`` of one step on two rows, plus an ``epoch``
column), writes into ``name/version_N/`` and on a resume keeps the rows logged after the
checkpoint, so the ``metrics.csv`` the pretrain command promises (and its resume guarantee)
could not be kept. The task decides which steps get a row (every ``--log-every`` steps, the mean
loss since the previous row) and sends them with ``log_metrics``; its progress-bar values are
logged with ``logger=False``.
"""

from __future__ import annotations

import csv
import io
import time
from argparse import Namespace
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers.logger import Logger
from lightning.pytorch.utilities import rank_zero_only

from agrifm.io import write_text_atomic

__all__ = ["MetricsLog"]


class MetricsLog(Logger):
    """``metrics.csv`` (step, loss, val_loss), kept in memory, rewritten atomically at most every
    ``every_s`` while rows come in, and whenever Lightning (or the task) calls :meth:`save`."""

    COLUMNS = ("step", "loss", "val_loss")

    def __init__(self, path: str | Path, every_s: float = 30.0) -> None:
        super().__init__()
        self.path, self.every_s = Path(path), every_s
        self.rows: dict[int, dict[str, float]] = {}
        self._last = 0.0
        self._dirty = False  # nothing to write until rows change (an early save must not blank a resumed file)

    @property
    def name(self) -> str:
        return self.path.stem

    @property
    def version(self) -> str:
        return ""

    @property
    def save_dir(self) -> str:
        return str(self.path.parent)

    @rank_zero_only
    def log_hyperparams(self, params: dict[str, Any] | Namespace, *args: Any, **kwargs: Any) -> None:
        """Not kept: the run's settings are in its summary and checkpoint."""

    @rank_zero_only
    def resume(self, step: int) -> None:
        """Keep the rows of an earlier run up to ``step`` (later ones are about to be redone)."""
        self.rows = {}
        if self.path.is_file():
            with open(self.path, newline="") as f:
                for r in csv.DictReader(f):
                    if int(r["step"]) <= step:
                        self.rows[int(r["step"])] = {k: float(v) for k, v in r.items() if k != "step" and v != ""}
        self._dirty = True

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Values of the :attr:`COLUMNS` into the row of ``step`` (others are not kept)."""
        if step is None:
            raise ValueError("MetricsLog keeps one row per optimiser step: log_metrics needs step=")
        values = {k: float(v) for k, v in metrics.items() if k in self.COLUMNS[1:]}
        if values:
            self.rows.setdefault(int(step), {}).update(values)
            self._dirty = True
        if time.monotonic() - self._last > self.every_s:
            self.save()

    @rank_zero_only
    def save(self) -> None:
        if not self._dirty:
            return
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(self.COLUMNS)
        for step in sorted(self.rows):
            r = self.rows[step]
            w.writerow([step] + [f"{r[c]:.6f}" if c in r else "" for c in self.COLUMNS[1:]])
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.path, buf.getvalue(), fsync=True)
        self._last, self._dirty = time.monotonic(), False
