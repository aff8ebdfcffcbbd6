"""Pre-training's ``metrics.csv``: one row per logged optimiser step (``step,loss,val_loss``,
six decimals), kept in memory and rewritten atomically, so a resumed run first drops the rows
after its checkpoint's step and then writes the same file as an uninterrupted run.

Not Lightning's ``CSVLogger``: that one appends a row per ``log_metrics`` call (``loss`` and
``val_loss`` of one step on two rows, plus an ``epoch`` column), writes into
``name/version_N/`` and on a resume keeps the rows logged after the checkpoint, so the
``metrics.csv`` the pretrain command promises (and its resume guarantee) could not be kept.
"""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path

from agrifm.io import write_text_atomic

__all__ = ["MetricsLog"]


class MetricsLog:
    """``metrics.csv`` (step, loss, val_loss), kept in memory, rewritten atomically at most every ``every_s``."""

    COLUMNS = ("step", "loss", "val_loss")

    def __init__(self, path: str | Path, every_s: float = 30.0) -> None:
        self.path, self.every_s = Path(path), every_s
        self.rows: dict[int, dict[str, float]] = {}
        self._last = 0.0

    def resume(self, step: int) -> None:
        """Keep the rows of an earlier run up to ``step`` (later ones are about to be redone)."""
        self.rows = {}
        if self.path.is_file():
            with open(self.path, newline="") as f:
                for r in csv.DictReader(f):
                    if int(r["step"]) <= step:
                        self.rows[int(r["step"])] = {k: float(v) for k, v in r.items() if k != "step" and v != ""}

    def add(self, step: int, **values: float) -> None:
        self.rows.setdefault(step, {}).update(values)
        if time.monotonic() - self._last > self.every_s:
            self.flush()

    def flush(self) -> None:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(self.COLUMNS)
        for step in sorted(self.rows):
            r = self.rows[step]
            w.writerow([step] + [f"{r[c]:.6f}" if c in r else "" for c in self.COLUMNS[1:]])
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.path, buf.getvalue(), fsync=True)
        self._last = time.monotonic()
