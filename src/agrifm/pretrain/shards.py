"""Tar shards of pre-training samples: a writer, and a streaming, resumable loader.

Why tar shards: tens of millions of small samples cannot live as individual files (inode
limits, metadata storms on shared file systems, slow listing). A shard is a plain tar (readable
with any tool, streamable from object storage) holding ``<key>.<field>`` members, one group of
members per sample:

=================== ==========================================================================
member              content
=================== ==========================================================================
``x.npy``           ``(T, C, H, W)`` physical values; float16 (default), float32, or int16 with
                    -32768 = NaN (for integer-valued sources such as S2 reflectance x 1e4)
``valid.npy``       ``(T, H, ceil(W/8))`` uint8, ``numpy.packbits`` of the valid mask on W
``dates.npy``       ``(T,)`` int32 days since 1970-01-01, ascending
``fractions.npy``   ``(K, h, w)`` float16 class fractions (0 on invalid cells)
``frac_valid.npy``  ``(h, w)`` uint8, 1 = the cell's fractions are a target
``meta.json``       source, bands, CRS, chip transform, cell size and builder extras
=================== ==========================================================================

Each folder of shards has an ``index.json`` (written last, atomically) with every shard's name,
sample count, size and SHA-256, plus the source, bands, class names, chip and cell sizes and the
creation parameters. The loader reads the index only - it never lists the folder - so opening a
25 M-sample set costs one small JSON read.

Loader guarantees (:class:`ShardDataset`):

* Shards are permuted per epoch (seeded), dealt round-robin to global ranks, then to DataLoader
  workers: ranks and workers read disjoint shards, and together every shard once per epoch.
* Resume: each sample carries ``_pos = [worker, num_workers, position]``. Feed consumed batches
  to :meth:`ShardDataset.mark_consumed` (or iterate in-process, which counts by itself); after
  :meth:`load_state_dict` each worker stream skips exactly what was consumed, so the remaining
  samples of the epoch are exactly those not yet seen, each worker continuing its own order.
  With ``num_workers=0`` (or a resume at a multiple of ``num_workers`` batches) the global order
  is identical too. Resume needs the same seed, shards, world size and ``num_workers``; state is
  per rank (save each rank's). Call :meth:`set_epoch` at the start of each epoch; do not use
  ``persistent_workers`` (workers would keep a stale epoch).
* A sample with a corrupt member is skipped, counted in ``stats["corrupt"]`` and logged with its
  shard and key; samples with fewer than ``min_frames`` frames are counted in ``stats["short"]``.
  A shard whose size differs from the index (truncated copy) or whose tar structure is broken
  raises :class:`ShardError` naming it: silently training on a partial set is worse than
  stopping. ``stats`` live in the process that iterates (each worker has its own).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tarfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from agrifm.io import write_text_atomic
from agrifm.pretrain.landcover import CLASSES
from agrifm.errors import AgrifmError

__all__ = [
    "FORMAT",
    "INDEX_NAME",
    "ShardError",
    "ShardWriter",
    "ShardDataset",
    "split_shards_for_rank",
    "resolve_shard_dirs",
]

FORMAT = "agrifm-shards/1"
INDEX_NAME = "index.json"
FIELDS = ("x.npy", "valid.npy", "dates.npy", "fractions.npy", "frac_valid.npy", "meta.json")
X_DTYPES = ("float16", "float32", "int16")
_INT16_NAN = -32768
_F16_MAX = float(np.finfo(np.float16).max)

log = logging.getLogger(__name__)
T = TypeVar("T")


class ShardError(AgrifmError, RuntimeError):
    """A shard file is missing, truncated or unreadable (the message names it)."""


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


class _HashingFile:
    """Write-only file wrapper that hashes what passes through (no second read of the shard)."""

    def __init__(self, f: Any) -> None:
        self.f, self.sha, self.size = f, hashlib.sha256(), 0

    def write(self, b: bytes) -> int:
        self.sha.update(b)
        self.size += len(b)
        return self.f.write(b)

    def tell(self) -> int:
        return self.size


class ShardWriter:
    """Write samples into ``<prefix>-000000.tar``, ... and an ``index.json`` in ``out_dir``.

    Each shard is written under a temporary name and renamed when complete; the index is
    written by :meth:`close` (also on leaving a ``with`` block without error), so a crashed run
    leaves no index and cannot be mistaken for a finished one. Use one writer per folder.
    """

    def __init__(
        self,
        out_dir: str | Path,
        prefix: str,
        max_samples_per_shard: int = 1000,
        *,
        source: str | None = None,
        bands: Sequence[str] = (),
        class_names: Sequence[str] = CLASSES,
        chip_size: int | None = None,
        cell_size: int | None = None,
        x_dtype: str = "float16",
        params: Mapping[str, Any] | None = None,
        overwrite: bool = False,
    ) -> None:
        if max_samples_per_shard < 1:
            raise ValueError(f"max_samples_per_shard must be >= 1, got {max_samples_per_shard}")
        if x_dtype not in X_DTYPES:
            raise ValueError(f"x_dtype must be one of {X_DTYPES}, got {x_dtype!r}")
        if not prefix or any(c in prefix for c in "./\\"):
            raise ValueError(f"shard prefix {prefix!r} must be non-empty, without '.', '/' or '\\'")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        index = self.out_dir / INDEX_NAME
        if index.exists():
            if not overwrite:
                raise FileExistsError(f"{index} exists: shards were already written there (overwrite=True replaces them)")
            old = json.loads(index.read_text())
            index.unlink()  # first, so a half-rewritten folder never looks complete
            for s in old.get("shards", []):
                (self.out_dir / s["name"]).unlink(missing_ok=True)
        self.prefix, self.max_samples = prefix, int(max_samples_per_shard)
        self.source = source or prefix
        self.bands = list(bands)
        self.class_names = list(class_names)
        self.chip_size, self.cell_size, self.x_dtype = chip_size, cell_size, x_dtype
        self.params = dict(params or {})
        self.shards: list[dict[str, Any]] = []
        self.num_samples = 0
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._tar: tarfile.TarFile | None = None
        self._file: Any = None
        self._hash: _HashingFile | None = None
        self._keys: set[str] = set()
        self._closed = False

    # -- shards ------------------------------------------------------------------------------
    def _shard_name(self) -> str:
        return f"{self.prefix}-{len(self.shards):06d}.tar"

    def _open_shard(self) -> None:
        tmp = self.out_dir / f".{self._shard_name()}.tmp"
        self._file = open(tmp, "wb")
        self._hash = _HashingFile(self._file)
        self._tar = tarfile.open(fileobj=self._hash, mode="w", format=tarfile.USTAR_FORMAT)  # type: ignore[call-overload]
        self._keys = set()

    def _finish_shard(self) -> None:
        assert self._tar is not None and self._hash is not None
        self._tar.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        name = self._shard_name()
        os.replace(self.out_dir / f".{name}.tmp", self.out_dir / name)
        self.shards.append(
            {"name": name, "samples": len(self._keys), "bytes": self._hash.size, "sha256": self._hash.sha.hexdigest()}
        )
        self._tar = self._file = self._hash = None

    def _add_member(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = len(data), 0o644, 0  # fixed mtime: reproducible bytes
        assert self._tar is not None
        self._tar.addfile(info, io.BytesIO(data))

    # -- samples -----------------------------------------------------------------------------
    def _encode_x(self, x: np.ndarray, key: str) -> np.ndarray:
        finite = x[np.isfinite(x)]
        if self.x_dtype == "float16":
            if finite.size and np.abs(finite).max() > _F16_MAX:
                raise ValueError(f"sample {key!r}: |x| up to {np.abs(finite).max():g} overflows float16; use x_dtype='float32' or 'int16'")
            return x.astype(np.float16)
        if self.x_dtype == "int16":
            if finite.size and (np.any(finite != np.round(finite)) or finite.min() < -32767 or finite.max() > 32767):
                raise ValueError(f"sample {key!r}: x holds non-integer or out-of-range values for int16; use float16/float32")
            return np.where(np.isfinite(x), x, _INT16_NAN).astype(np.int16)
        return x.astype(np.float32)

    def _check_shape(self, what: str, shape: tuple[int, ...], key: str) -> None:
        """Shapes that batching needs constant (bands, chip, cell grid) must not vary."""
        if self._shapes.setdefault(what, shape) != shape:
            raise ValueError(f"{self.out_dir}: sample {key!r} has {what} {shape}, earlier samples {self._shapes[what]}")

    def add(
        self,
        key: str,
        *,
        x: np.ndarray,
        valid: np.ndarray,
        dates: np.ndarray,
        fractions: np.ndarray,
        frac_valid: np.ndarray,
        meta: Mapping[str, Any] | None = None,
    ) -> None:
        """Append one sample. ``key`` must be unique in the shard and contain no '.' or '/'."""
        if self._closed:
            raise RuntimeError(f"ShardWriter for {self.out_dir} is closed")
        if not key or "." in key or "/" in key:
            raise ValueError(f"sample key {key!r} must be non-empty, without '.' or '/'")
        x = np.asarray(x)
        valid = np.asarray(valid, dtype=bool)
        days = np.asarray(dates).astype("datetime64[D]").astype(np.int64)
        fractions, frac_valid = np.asarray(fractions), np.asarray(frac_valid, dtype=bool)
        if x.ndim != 4 or valid.shape != (x.shape[0], *x.shape[2:]) or days.shape != (x.shape[0],):
            raise ValueError(
                f"sample {key!r}: expected x (T,C,H,W), valid (T,H,W), dates (T,); got "
                f"{x.shape}, {valid.shape}, {days.shape}"
            )
        if np.any(np.diff(days) < 0):
            raise ValueError(f"sample {key!r}: dates are not ascending")
        if fractions.shape != (len(self.class_names), *frac_valid.shape):
            raise ValueError(
                f"sample {key!r}: fractions {fractions.shape} do not match {len(self.class_names)} classes "
                f"x frac_valid {frac_valid.shape}"
            )
        if self.bands and x.shape[1] != len(self.bands):
            raise ValueError(f"sample {key!r}: {x.shape[1]} bands in x but the writer has {len(self.bands)} ({self.bands})")
        self._check_shape("chip (C, H, W)", x.shape[1:], key)
        self._check_shape("cell grid", frac_valid.shape, key)
        if self._tar is None:
            self._open_shard()
        if key in self._keys:
            raise ValueError(f"duplicate sample key {key!r} in shard {self._shard_name()}")
        record = {"key": key, "source": self.source, "bands": self.bands, "cell_size": self.cell_size, **(meta or {})}
        members = {
            "x.npy": _npy(self._encode_x(x, key)),
            "valid.npy": _npy(np.packbits(valid, axis=-1)),
            "dates.npy": _npy(days.astype(np.int32)),
            "fractions.npy": _npy(np.where(frac_valid, fractions, 0).astype(np.float16)),
            "frac_valid.npy": _npy(frac_valid.astype(np.uint8)),
            "meta.json": json.dumps(record, default=_json_default).encode(),
        }
        for field in FIELDS:
            self._add_member(f"{key}.{field}", members[field])
        self._keys.add(key)
        self.num_samples += 1
        if len(self._keys) >= self.max_samples:
            self._finish_shard()

    def close(self) -> Path:
        """Finish the open shard and write ``index.json`` (atomically); returns its path."""
        if self._closed:
            return self.out_dir / INDEX_NAME
        if self._tar is not None:
            self._finish_shard()
        cells = self._shapes.get("cell grid")
        index = {
            "format": FORMAT,
            "source": self.source,
            "bands": self.bands,
            "class_names": self.class_names,
            "chip_size": self.chip_size,
            "cell_size": self.cell_size,
            "frac_grid": list(cells) if cells else None,
            "x_dtype": self.x_dtype,
            "num_samples": self.num_samples,
            "shards": self.shards,
            "params": self.params,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        path = self.out_dir / INDEX_NAME
        write_text_atomic(path, json.dumps(index, indent=1, default=_json_default), fsync=True)
        self._closed = True
        return path

    def abort(self) -> None:
        """Drop the shard being written and write no index (the folder stays incomplete)."""
        if self._tar is not None:
            self._file.close()
            (self.out_dir / f".{self._shard_name()}.tmp").unlink(missing_ok=True)
            self._tar = self._file = self._hash = None
        self._closed = True

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (np.ndarray, tuple)):
        return list(obj.tolist() if isinstance(obj, np.ndarray) else obj)
    if isinstance(obj, Path):
        return str(obj)
    return str(obj)


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


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


def _shuffle(items: Iterable[T], size: int, rng: np.random.Generator) -> Iterator[T]:
    """Streaming shuffle buffer: memory is ``size`` samples, however many there are."""
    if size <= 1:
        yield from items
        return
    buf: list[T] = []
    for item in items:
        if len(buf) < size:
            buf.append(item)
            continue
        j = int(rng.integers(len(buf)))
        yield buf[j]
        buf[j] = item
    while buf:
        j = int(rng.integers(len(buf)))
        buf[j], buf[-1] = buf[-1], buf[j]
        yield buf.pop()


def _dist_rank_world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


class ShardDataset(IterableDataset):
    """Stream samples from shard folders (see the module docstring for the guarantees).

    Yields ``{"source", "key", "x" float32 (T,C,H,W) physical with NaN = invalid, "valid" bool
    (T,H,W), "dates" int64 (T,) days since 1970, "fractions" float32 (K,h,w), "frac_valid" bool
    (h,w), "_pos" int64 [worker, num_workers, position]}``. With ``frames`` set, a series longer
    than ``frames`` is cut to ``frames`` randomly chosen dates (kept in order; the choice is
    seeded by seed, epoch and sample, so it is reproducible); a shorter one is kept whole, so
    ``min_frames >= frames`` gives a constant T for batching. Memory: ``shuffle_buffer`` encoded
    samples per worker.
    """

    def __init__(
        self,
        paths: str | Path | Iterable[str | Path],
        *,
        shuffle_buffer: int = 1000,
        seed: int = 0,
        epoch: int = 0,
        resume_state: Mapping[str, Any] | None = None,
        min_frames: int = 16,
        frames: int | None = 16,
        transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        verify: bool = False,
    ) -> None:
        super().__init__()
        self.dirs = resolve_shard_dirs(paths)
        self.shards: list[_Shard] = []
        self.class_names: list[str] | None = None
        self.indexes: dict[str, dict[str, Any]] = {}
        for d in self.dirs:
            index = _load_index(d)
            self.indexes[str(d)] = index
            if self.class_names is None:
                self.class_names = list(index["class_names"])
            elif list(index["class_names"]) != self.class_names:
                raise ValueError(f"{d}: class names {index['class_names']} differ from {self.class_names} ({self.dirs[0]})")
            for s in index["shards"]:
                self.shards.append(_Shard(d / s["name"], int(s["samples"]), int(s["bytes"]), s["sha256"], index["source"], index["x_dtype"]))
        if not self.shards:
            raise ValueError(f"no shards in {[str(d) for d in self.dirs]}")
        self.shuffle_buffer, self.seed, self.epoch = int(shuffle_buffer), int(seed), int(epoch)
        self.min_frames, self.frames, self.transform, self.verify = int(min_frames), frames, transform, verify
        self._rank, self._world = rank, world_size
        self.stats: dict[str, int] = {"samples": 0, "short": 0, "corrupt": 0}
        self._consumed: dict[int, int] = {}
        self._skip: dict[int, int] = {}
        self._num_workers: int | None = None
        if resume_state is not None:
            self.load_state_dict(resume_state)

    # -- bookkeeping ---------------------------------------------------------------------------
    @property
    def num_samples(self) -> int:
        """Samples in all shards (before short/corrupt skips), from the indexes."""
        return sum(s.samples for s in self.shards)

    def rank_world(self) -> tuple[int, int]:
        """Global rank and world size: explicit, else torch.distributed, else RANK/WORLD_SIZE."""
        if self._rank is not None or self._world is not None:
            return int(self._rank or 0), int(self._world or 1)
        return _dist_rank_world()

    def _fingerprint(self) -> str:
        names = "\n".join(f"{s.path.name}:{s.samples}:{s.sha256}" for s in self.shards)
        return hashlib.sha256(names.encode()).hexdigest()[:16]

    def set_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch``: new shard order and shuffle; clears the resume point."""
        self.epoch = int(epoch)
        self._consumed, self._skip, self._num_workers = {}, {}, None

    def mark_consumed(self, batch: Mapping[str, Any]) -> None:
        """Record a sample or batch as consumed (its ``_pos``); idempotent."""
        pos = torch.as_tensor(batch["_pos"]).reshape(-1, 3).tolist()
        for worker, num_workers, position in pos:
            if self._num_workers not in (None, num_workers):
                raise ValueError(f"batch from {num_workers} workers after batches from {self._num_workers}")
            self._num_workers = num_workers
            self._consumed[worker] = max(self._consumed.get(worker, 0), position)

    def state_dict(self) -> dict[str, Any]:
        """This rank's position in the epoch (save one per rank)."""
        rank, world = self.rank_world()
        return {
            "format": FORMAT,
            "seed": self.seed,
            "epoch": self.epoch,
            "rank": rank,
            "world_size": world,
            "num_workers": self._num_workers,
            "shards": self._fingerprint(),
            "consumed": {str(k): v for k, v in sorted(self._consumed.items())},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume from :meth:`state_dict`: the next pass skips what was consumed."""
        if state.get("format") != FORMAT:
            raise ValueError(f"not a ShardDataset state (format {state.get('format')!r})")
        if state["shards"] != self._fingerprint():
            raise ValueError("resume state was saved for a different set of shards")
        if state["seed"] != self.seed:
            raise ValueError(f"resume state has seed {state['seed']}, the dataset {self.seed}")
        rank, world = self.rank_world()
        if (state["rank"], state["world_size"]) != (rank, world):
            raise ValueError(f"resume state is for rank {state['rank']}/{state['world_size']}, this is rank {rank}/{world}")
        self.epoch = int(state["epoch"])
        self._num_workers = state["num_workers"]
        self._consumed = {int(k): int(v) for k, v in state["consumed"].items()}
        self._skip = dict(self._consumed)

    # -- reading -------------------------------------------------------------------------------
    def shards_for(self, rank: int, world_size: int, worker: int = 0, num_workers: int = 1) -> list[_Shard]:
        """The shards one worker of one rank reads this epoch (seeded permutation, then dealt)."""
        if len(self.shards) < world_size:
            raise ValueError(
                f"{len(self.shards)} shards cannot feed {world_size} ranks: write smaller shards "
                "(--samples-per-shard) so that every rank gets at least one"
            )
        order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.shards))
        mine = split_shards_for_rank([self.shards[i] for i in order], rank, world_size)
        return mine[worker::num_workers]

    def _raw(self, shard: _Shard) -> Iterator[tuple[_Shard, str, dict[str, bytes]]]:
        """Undecoded samples of one shard, grouped by key; ShardError if the file is damaged."""
        shard.check_size()
        if self.verify:
            sha = hashlib.sha256()
            with open(shard.path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    sha.update(block)
            if sha.hexdigest() != shard.sha256:
                raise ShardError(f"shard {shard.path}: SHA-256 differs from the index (corrupt copy)")
        count, key, members = 0, None, {}
        try:
            with tarfile.open(shard.path, mode="r|") as tar:
                for m in tar:
                    if not m.isfile():
                        continue
                    k, _, field = m.name.partition(".")
                    if k != key and key is not None:
                        count += 1
                        yield shard, key, members
                        members = {}
                    key = k
                    f = tar.extractfile(m)
                    members[field] = f.read() if f is not None else b""
        except (tarfile.TarError, EOFError, OSError, zlib.error) as err:
            raise ShardError(f"shard {shard.path} is unreadable after {count} samples ({err})") from None
        if key is not None:
            count += 1
            yield shard, key, members
        if count != shard.samples:
            raise ShardError(f"shard {shard.path} holds {count} samples, the index says {shard.samples}")

    def _decode(self, shard: _Shard, key: str, members: Mapping[str, bytes]) -> dict[str, Any] | None:
        """A sample as tensors, or None (counted) when it is corrupt or too short."""
        try:
            arr = {f: np.load(io.BytesIO(members[f]), allow_pickle=False) for f in FIELDS if f.endswith(".npy")}
            json.loads(members["meta.json"])
            x = arr["x.npy"]
            t, _, h, w = x.shape
            valid = np.unpackbits(arr["valid.npy"], axis=-1, count=w).astype(bool)
            dates, fractions, frac_valid = arr["dates.npy"], arr["fractions.npy"], arr["frac_valid.npy"]
            if valid.shape != (t, h, w) or dates.shape != (t,) or fractions.shape[1:] != frac_valid.shape:
                raise ValueError(f"inconsistent shapes x {x.shape}, valid {valid.shape}, dates {dates.shape}")
        except Exception as err:  # any damage to a member: skip this sample, keep the epoch going
            self.stats["corrupt"] += 1
            log.warning("shard %s: sample %r is corrupt and was skipped (%s: %s)", shard.path, key, type(err).__name__, err)
            return None
        if t < self.min_frames:
            self.stats["short"] += 1
            return None
        if self.frames is not None and t > self.frames:
            rng = np.random.default_rng([self.seed, self.epoch, zlib.crc32(f"{shard.path.name}/{key}".encode())])
            keep = np.sort(rng.choice(t, size=self.frames, replace=False))
            x, valid, dates = x[keep], valid[keep], dates[keep]
        fractions = fractions.astype(np.float32)
        total = fractions.sum(0)  # float16 storage rounds: restore sum = 1 on valid cells
        fractions = np.where(frac_valid > 0, fractions / np.where(total > 0, total, 1), 0).astype(np.float32)
        x = x.astype(np.float32)
        if shard.x_dtype == "int16":
            x[x == _INT16_NAN] = np.nan
        self.stats["samples"] += 1
        return {
            "source": shard.source,
            "key": key,
            "x": torch.from_numpy(x),
            "valid": torch.from_numpy(valid),
            "dates": torch.from_numpy(dates.astype(np.int64)),
            "fractions": torch.from_numpy(fractions),
            "frac_valid": torch.from_numpy(frac_valid.astype(bool)),
        }

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if self._skip and self._num_workers not in (None, num_workers):
            raise ValueError(
                f"resume state was saved with {self._num_workers} DataLoader worker stream(s), "
                f"now {num_workers}: resume with the same num_workers"
            )
        rank, world = self.rank_world()
        skip = self._skip.get(worker, 0)
        if info is None:  # iterated in this process: count consumption here
            self._num_workers, self._consumed = num_workers, dict(self._skip)
        shards = self.shards_for(rank, world, worker, num_workers)
        rng = np.random.default_rng([self.seed, self.epoch, rank, world, worker, num_workers])
        raw = (item for shard in shards for item in self._raw(shard))
        for position, (shard, key, members) in enumerate(_shuffle(raw, self.shuffle_buffer, rng), 1):
            if position <= skip:
                continue
            sample = self._decode(shard, key, members)
            if sample is None:
                continue
            if self.transform is not None:
                sample = self.transform(sample)
            sample["_pos"] = torch.tensor([worker, num_workers, position])
            if info is None:
                self._consumed[worker] = position
            yield sample
