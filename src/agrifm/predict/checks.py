"""Refusing, before any work, what cannot run: options out of range, a predictor of unknown kind,
more memory than this machine has, a device it lacks."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np
import torch

from agrifm.errors import InputError, TooLargeError, require_positive
from agrifm.predict.cog import class_map_meta
from agrifm.predict.sources import Predictor, Reader
from agrifm.predict.tiling import TileGrid

__all__ = ["check_options", "check_predictor", "available_memory", "memory_estimate", "check_memory",
           "resolve_device"]


def check_options(window: int, overlap: int, batch_size: int, block_size: int, point_batch: int) -> None:
    require_positive(window=window, batch_size=batch_size, block_size=block_size, point_batch=point_batch)
    if overlap < 0 or 2 * overlap > window:
        raise InputError(f"--overlap must be in [0, window/2] = [0, {window // 2}], got {overlap}")



def check_predictor(predictor: Predictor) -> None:
    if predictor.kind not in ("dense", "point"):
        raise InputError(f"predictor.kind must be 'dense' or 'point', got {predictor.kind!r}")
    class_map_meta(predictor.class_names, predictor.class_colors)  # validates names/colours/count



def available_memory() -> int:
    """Bytes this process can still allocate without swapping (MemAvailable; total RAM elsewhere)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 << 62


def memory_estimate(readers: Sequence[Reader], tg: TileGrid, num_classes: int, batch_size: int) -> int:
    """A lower bound of the bytes one batch and one block need: source reads and their
    gap-filled copies (x2 with prefetching), probabilities, the block's accumulator. A batch
    holds at most one block's windows, a block at most the scene."""
    per_window = sum(int(np.sum(r.stack.dates <= r.until) if r.until is not None else len(r.stack.dates))
                     * max(1, len(r.bands or r.stack.bands))
                     * r.shape[0] * r.shape[1] * 4 * 3 for r in readers)
    probs = num_classes * tg.window**2 * 4 * 2
    per_side = math.ceil(tg.block_size / tg.stride)  # a batch never spans two blocks
    batch = min(batch_size, min(per_side, len(tg.row_starts)) * min(per_side, len(tg.col_starts)))
    acc = min(tg.block_size + tg.window, tg.height) * min(tg.block_size + tg.window, tg.width) * (num_classes + 2) * 4
    return 2 * batch * per_window + batch * probs + acc + tg.window**2 * 4


def check_memory(readers: Sequence[Reader], tg: TileGrid, num_classes: int, batch_size: int) -> None:
    need, have = memory_estimate(readers, tg, num_classes, batch_size), available_memory()
    if need > have:
        raise TooLargeError(f"--window {tg.window} with --batch-size {batch_size} and --block-size {tg.block} needs "
                            f"at least {need / 2**30:.1f} GiB, {have / 2**30:.1f} GiB are available: "
                            "use a smaller --window, --batch-size or --block-size")


def resolve_device(device: str | torch.device | None) -> torch.device | None:
    """``device`` checked against this machine; under torchrun a bare ``cuda`` (or no device)
    means this process's ``cuda:LOCAL_RANK``."""
    local = os.environ.get("LOCAL_RANK")
    if device is None:
        if local is None or not torch.cuda.is_available():
            return None
        device = "cuda"
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as e:
        raise InputError(f"--device {device!r}: not a device ({e}); use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
        if dev.index is None and local is not None:
            dev = torch.device("cuda", int(local))
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InputError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise InputError(f"--device {device}: MPS is not available on this machine; use --device cpu")
    return dev

