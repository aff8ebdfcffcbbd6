"""The shard format: names, fields, the ``index.json`` of a folder of shards, and which shards a
rank reads."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from agrifm.errors import AgrifmError

FORMAT = "agrifm-shards/1"
INDEX_NAME = "index.json"
FIELDS = ("x.npy", "valid.npy", "dates.npy", "fractions.npy", "frac_valid.npy", "meta.json")
X_DTYPES = ("float16", "float32", "int16")
_INT16_NAN = -32768

T = TypeVar("T")


class ShardError(AgrifmError, RuntimeError):
    """A shard file is missing, truncated or unreadable (the message names it)."""


@dataclass(frozen=True)
class _Shard:
    path: Path
    samples: int
    bytes: int
    sha256: str
    source: str
    x_dtype: str

    def check_size(self, context: str = "") -> None:
        """ShardError (prefixed with ``context``) if the file is missing, unreadable or not the
        size its index recorded - a truncated copy is the common failure on shared storage."""
        prefix = f"{context}: " if context else ""
        try:
            size = self.path.stat().st_size
        except OSError as err:
            raise ShardError(f"{prefix}shard {self.path}: cannot be read ({err})") from None
        if size != self.bytes:
            raise ShardError(f"{prefix}shard {self.path} is truncated or was modified: {size} bytes, "
                             f"the index says {self.bytes}")


def resolve_shard_dirs(paths: str | Path | Iterable[str | Path]) -> list[Path]:
    """Folders with an ``index.json``; a folder without one expands to its direct sub-folders
    that have one (``out/train`` -> ``out/train/<source>``)."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    out: list[Path] = []
    for p in map(Path, paths):
        if (p / INDEX_NAME).is_file():
            out.append(p)
            continue
        subs = sorted(d for d in p.iterdir() if (d / INDEX_NAME).is_file()) if p.is_dir() else []
        if not subs:
            raise FileNotFoundError(f"{p}: no {INDEX_NAME} there or in its sub-folders (not a shard folder, or the build did not finish)")
        out.extend(subs)
    return out


def _load_index(folder: Path) -> dict[str, Any]:
    path = folder / INDEX_NAME
    try:
        index = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ShardError(f"{path}: unreadable shard index ({err})") from None
    if index.get("format") != FORMAT:
        raise ShardError(f"{path}: format {index.get('format')!r}, expected {FORMAT!r}")
    return index


def split_shards_for_rank(shards: Sequence[T], rank: int, world_size: int) -> list[T]:
    """The shards of one rank: round-robin, so ranks are disjoint and together cover all."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"invalid rank {rank} for world size {world_size}")
    return list(shards[rank::world_size])
