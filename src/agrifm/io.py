"""Atomic file output: readers never see a half-written file, and a failed or killed write
leaves the previous file intact (what resumable jobs rely on)."""

from __future__ import annotations

import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

__all__ = ["atomic_output", "temp_beside", "write_text_atomic"]


def temp_beside(path: str | os.PathLike, suffix: str = ".tmp") -> Path:
    """A hidden temporary name beside ``path``, unique per process and call, ending in ``suffix``
    (for writers that publish in two steps, e.g. :class:`agrifm.predict.cog.CogWriter`'s finish
    then commit; everything else uses :func:`atomic_output`)."""
    dest = Path(path)
    return dest.with_name(f".{dest.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}{suffix}")


@contextmanager
def atomic_output(path: str | os.PathLike, *, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    The temporary name is unique per process and call (parallel writers never share one) and
    ends in ``suffix`` for writers that choose a format by extension (``.tmp.npz``). Created by
    the writer, not by ``mkstemp``, so the file gets ordinary permissions (the umask), not 0600.
    """
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_beside(dest, suffix)
    try:
        yield tmp
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | os.PathLike, text: str, *, fsync: bool = False) -> Path:
    """UTF-8 ``text`` to ``path`` atomically; ``fsync`` also survives a power cut (indexes, logs)."""
    with atomic_output(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
    return Path(path)
