"""Progress that reads well on a terminal and in a log file.

On a terminal (stderr is a tty) :func:`progress_bar` is a tqdm bar. Redirected to a file or a
pipe it prints a plain line each time another ``every`` percent is done (``predict: 40/120
win (33 %), 12 s``) instead of hundreds of ``\\r`` bar updates. :func:`lightning_progress` is
the same choice for a Lightning ``Trainer``: its bar on a terminal, else one line per epoch
with the logged losses and metrics.
"""

from __future__ import annotations

import math
import sys
import time
from typing import IO, Any

__all__ = ["LineProgress", "epoch_metrics", "is_interactive", "lightning_progress", "progress_bar"]


def is_interactive(stream: IO[str] | None = None) -> bool:
    """Whether ``stream`` (default stderr) is a terminal."""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class LineProgress:
    """A tqdm-like counter that prints a line at every ``every`` percent of ``total``."""

    def __init__(self, total: int | None, desc: str = "", unit: str = "it", every: float = 10.0,
                 file: IO[str] | None = None) -> None:
        self.total, self.desc, self.unit, self.every = total, desc, unit, every
        self.file = file
        self.n = 0
        self._t0 = time.monotonic()
        self._next = every

    def update(self, n: int = 1) -> None:
        self.n += n
        if not self.total:
            return
        pct = 100.0 * self.n / self.total
        if pct + 1e-9 >= self._next or self.n >= self.total:
            self._print(pct)
            self._next = (math.floor(pct / self.every) + 1) * self.every

    def _print(self, pct: float) -> None:
        head = f"{self.desc}: " if self.desc else ""
        print(f"{head}{self.n}/{self.total} {self.unit} ({pct:.0f} %), {time.monotonic() - self._t0:.0f} s",
              file=self.file or sys.stderr, flush=True)

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:  # tqdm compatibility
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> "LineProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def progress_bar(total: int | None, desc: str = "", unit: str = "it", *, enabled: bool = True,
                 every: float = 10.0, **tqdm_kwargs: Any) -> Any:
    """A tqdm bar on a terminal, a :class:`LineProgress` otherwise (a silent one when not ``enabled``)."""
    if enabled and is_interactive():
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, **tqdm_kwargs)
    if not enabled:
        return LineProgress(None, desc, unit, every)  # counts, prints nothing
    return LineProgress(total, desc, unit, every)


def epoch_metrics(trainer: Any, validated: bool) -> dict[str, float]:
    """Scalar epoch-level metrics Lightning holds now (``x_epoch`` reported as ``x``; ``val_*``
    only when ``validated`` this epoch, since Lightning keeps the last validation's values)."""
    out: dict[str, float] = {}
    for k, v in trainer.callback_metrics.items():
        if k.endswith("_step") or getattr(v, "numel", lambda: 1)() != 1:
            continue
        name = k.removesuffix("_epoch")
        if name.startswith("val") and not validated:
            continue
        if k.endswith("_epoch") or name not in out:
            out[name] = float(v)
    return out


def _epoch_line_callback(desc: str) -> Any:
    from lightning.pytorch.callbacks import Callback

    class EpochLines(Callback):
        """One line per training epoch: ``train epoch 3/40: train_loss 0.41, val_oa 0.93 (12 s)``."""

        def __init__(self) -> None:
            self._t0 = time.monotonic()
            self._validated = False

        def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
            self._validated = not trainer.sanity_checking

        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            validated, self._validated = self._validated, False
            if getattr(trainer, "global_rank", 0) != 0:
                return
            metrics = epoch_metrics(trainer, validated)
            shown = ", ".join(f"{k} {v:.4g}" for k, v in sorted(metrics.items()))
            total = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else "?"
            step = f", step {trainer.global_step}" if trainer.max_steps and trainer.max_steps > 0 else ""
            head = f"{desc} " if desc else ""
            print(f"{head}epoch {trainer.current_epoch + 1}/{total}{step}: {shown or 'no metrics yet'} "
                  f"({time.monotonic() - self._t0:.0f} s)", file=sys.stderr, flush=True)

    return EpochLines()


def _step_line_callback(desc: str, every: float) -> Any:
    from lightning.pytorch.callbacks import Callback

    class StepLines(Callback):
        """A line each ``every`` % of ``max_steps``: ``pretrain step 300/1000 (30 %): loss 0.41 (12 s)``."""

        def __init__(self) -> None:
            self._t0 = time.monotonic()
            self._next = every

        def on_train_batch_end(self, trainer: Any, pl_module: Any, *args: Any) -> None:
            total = trainer.max_steps
            if not total or total <= 0 or getattr(trainer, "global_rank", 0) != 0:
                return
            pct = 100.0 * trainer.global_step / total
            if pct + 1e-9 < self._next:
                return
            self._next = (math.floor(pct / every) + 1) * every
            shown = ", ".join(f"{k} {v:.4g}" for k, v in sorted(epoch_metrics(trainer, True).items()))
            head = f"{desc} " if desc else ""
            print(f"{head}step {trainer.global_step}/{total} ({pct:.0f} %): {shown or 'no metrics yet'} "
                  f"({time.monotonic() - self._t0:.0f} s)", file=sys.stderr, flush=True)

    return StepLines()


def lightning_progress(enabled: bool = True, desc: str = "", *, by: str = "epoch",
                       every: float = 10.0) -> tuple[bool, list[Any]]:
    """``(enable_progress_bar, callbacks)`` for a ``lightning.Trainer``.

    A terminal gets Lightning's bar; a log file gets a line per epoch (``by="epoch"``) or per
    ``every`` % of ``max_steps`` (``by="step"``); ``enabled=False`` gets neither.
    """
    if not enabled:
        return False, []
    if is_interactive():
        return True, []
    return False, [_step_line_callback(desc, every) if by == "step" else _epoch_line_callback(desc)]
