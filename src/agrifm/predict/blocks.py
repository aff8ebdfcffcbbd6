"""The block store of a scene map: finished blocks as atomic files (so a killed run resumes and
ranks share the work), the manifest that pins a run's settings and inputs, rank markers and
the assembler's lock."""

from __future__ import annotations

import json
import logging
import os
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from agrifm.errors import InputError
from agrifm.io import atomic_output, write_text_atomic
from agrifm.predict.tiling import Block, Partial, Rect

__all__ = ["BlockStore"]

log = logging.getLogger(__name__)


def _json_norm(d: Any) -> Any:
    return json.loads(json.dumps(d, default=str))


class BlockStore:
    """Per-block results on disk: atomic ``block_NNNNNN.npz`` files (existence = done), a
    manifest pinning the run's settings (a mismatch refuses to mix runs) and rank markers."""

    MANIFEST = "manifest.json"
    LOCK = "assemble.lock"

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def init(self, manifest: Mapping[str, Any], *, restart: bool = False) -> None:
        """Pin the run's settings and inputs; a folder of another run (other settings, or inputs
        changed since) is refused, or emptied when ``restart`` (the default hidden folder). A
        folder holding no finished block is simply reused."""
        self.root.mkdir(parents=True, exist_ok=True)
        want = _json_norm(manifest)
        path = self.root / self.MANIFEST
        if path.exists():
            try:
                have = self.manifest()
            except ValueError:  # a damaged manifest: as if it differed in everything
                have = {}
            diff = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))
            if not diff:
                return
            if not self.blocks():
                pass  # nothing finished to protect (e.g. a run that failed before its first block)
            elif restart:
                log.warning("%s: blocks of another run or of inputs changed since (differs in %s): starting afresh",
                            self.root, diff)
                for f in self.blocks():
                    f.unlink(missing_ok=True)
            else:
                raise InputError(f"block folder {self.root} holds blocks of another run or of inputs changed "
                                 f"since (differs in {diff}); delete it or pass another --block-dir")
        write_text_atomic(path, json.dumps(want, indent=1))

    def blocks(self) -> list[Path]:
        """The finished block files."""
        return sorted(self.root.glob("block_*.npz"))

    def manifest(self) -> dict[str, Any]:
        path = self.root / self.MANIFEST
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist: not a block folder of agrifm predict")
        try:
            return json.loads(path.read_text())
        except ValueError as e:
            raise InputError(f"{path} is damaged ({e}): delete the block folder {self.root} and rerun") from None

    def path(self, block: Block) -> Path:
        return self.root / f"block_{block.index:06d}.npz"

    def done(self, block: Block) -> bool:
        return self.path(block).exists()

    def save(self, block: Block, core: Rect, layers: Mapping[str, np.ndarray], parts: Sequence[Partial]) -> None:
        arrays: dict[str, np.ndarray] = {"core_rect": np.array(_rect_tuple(core))}
        arrays.update({f"core_{k}": v for k, v in layers.items()})
        for i, p in enumerate(parts):
            arrays.update({f"part{i}_rect": np.array(_rect_tuple(p.rect)), f"part{i}_num": p.num,
                           f"part{i}_den": p.den, f"part{i}_valid": p.valid})
        with atomic_output(self.path(block), suffix=".tmp.npz") as tmp:
            np.savez(tmp, **arrays)

    def load_core(self, block: Block) -> tuple[Rect, dict[str, np.ndarray]]:
        with self._open(block) as z:
            layers = {k[5:]: z[k] for k in z.files if k.startswith("core_") and k != "core_rect"}
            return Rect(*z["core_rect"].tolist()), layers

    def load_parts(self, block: Block) -> list[Partial]:
        with self._open(block) as z:
            n = sum(1 for k in z.files if k.endswith("_rect") and k.startswith("part"))
            return [Partial(Rect(*z[f"part{i}_rect"].tolist()), z[f"part{i}_num"], z[f"part{i}_den"],
                            z[f"part{i}_valid"]) for i in range(n)]

    @contextmanager
    def _open(self, block: Block) -> Iterator[Any]:
        """The block's arrays; a damaged file (bit rot, a full disk) is removed and named."""
        path = self.path(block)
        try:
            with np.load(path) as z:
                yield z
        except (zipfile.BadZipFile, EOFError, KeyError, ValueError, OSError) as e:
            if isinstance(e, FileNotFoundError):
                raise
            path.unlink(missing_ok=True)
            raise InputError(f"block file {path} is damaged ({type(e).__name__}: {e}); it was removed: "
                             "rerun the same predict command to redo that block") from None

    def check(self, block: Block) -> bool:
        """Whether ``block`` is done and its file readable (a damaged one is removed and redone)."""
        path = self.path(block)
        if not path.exists():
            return False
        try:
            with zipfile.ZipFile(path) as z:
                ok = "core_rect.npy" in z.namelist()
        except (zipfile.BadZipFile, OSError):
            ok = False
        if not ok:
            log.warning("%s is damaged: removed, redoing that block", path)
            path.unlink(missing_ok=True)
        return ok

    def mark_rank(self, rank: int, world_size: int) -> None:
        """Record that ``rank`` finished its share (for orchestration; assembly checks the blocks)."""
        write_text_atomic(self.root / f"rank_{rank}_of_{world_size}.done", "")

    def try_lock(self) -> bool:
        """Elect one assembler among ranks (O_EXCL create)."""
        try:
            os.close(os.open(self.root / self.LOCK, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            return True
        except FileExistsError:
            return False

    def unlock(self) -> None:
        (self.root / self.LOCK).unlink(missing_ok=True)


def _rect_tuple(r: Rect) -> tuple[int, int, int, int]:
    return r.row0, r.col0, r.row1, r.col1
