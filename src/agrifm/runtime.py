"""Where this process runs: its rank among the processes of a job, and the precision to train in.

One place for the questions every entry point asks (training, pre-training, scene mapping), so
they answer them the same way.
"""

from __future__ import annotations

import os
import platform

import torch

__all__ = ["cpu_description", "die_with_parent", "rank_world", "trainer_precision", "usable_cores"]


def rank_world(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """Global rank and world size: the arguments where given, else the initialised
    ``torch.distributed`` process group, else ``RANK``/``WORLD_SIZE`` (``torchrun`` sets them
    before any process group exists), else ``(0, 1)``. ValueError when rank is outside the world."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        rank = dist.get_rank() if rank is None else rank
        world_size = dist.get_world_size() if world_size is None else world_size
    rank = int(os.environ.get("RANK", 0)) if rank is None else int(rank)
    world_size = int(os.environ.get("WORLD_SIZE", 1)) if world_size is None else int(world_size)
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
    return rank, world_size


def trainer_precision(requested: str = "auto") -> str:
    """Lightning ``precision`` for ``requested``: ``auto`` is bf16 mixed precision on GPUs that
    have it (the published recipe's speed), fp16 mixed on older GPUs, fp32 on CPU; anything else
    is returned as given."""
    if requested != "auto":
        return requested
    if not torch.cuda.is_available():
        return "32-true"
    return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"


def die_with_parent(parent: int) -> None:
    """Worker initializer: end this process when ``parent`` dies (SIGTERM, SIGKILL), not train on
    as an orphan. Linux: the kernel's parent-death signal; elsewhere a thread watching the parent."""
    import signal
    import threading
    import time

    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # died before the signal was armed
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="agrifm-die-with-parent", daemon=True).start()


def usable_cores() -> int:
    """Cores this process may run on (a container's share, not the host's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def cpu_description() -> str:
    """The CPU model (with its family and model numbers on Linux) and the vector instructions
    torch's CPU kernels use here: results of a training run can differ in the last digits
    between machines whose kernels differ (e.g. AVX2 vs AVX512), so benchmarks record both."""
    name, ids = platform.processor() or platform.machine(), {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "cpu family", "model") and key not in ids:
                    ids[key] = value.strip()
                elif not key and ids:
                    break  # first processor block read
    except OSError:
        pass
    name = ids.get("model name", name)
    if "cpu family" in ids and "model" in ids:
        name += f" (family {ids['cpu family']} model {ids['model']})"
    return f"{name}, torch CPU capability {torch.backends.cpu.get_cpu_capability()}"
