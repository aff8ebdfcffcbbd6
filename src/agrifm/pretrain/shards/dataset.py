"""Stream samples from tar shards: per-epoch shard order, rank and worker split, shuffle, resume
(the guarantees are in :mod:`agrifm.pretrain.shards`)."""

from __future__ import annotations

import hashlib
import logging
import random
import tarfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import IterableDataset, get_worker_info
from webdataset.autodecode import basichandlers
from webdataset.tariterators import group_by_keys, tar_file_expander

from agrifm.pretrain.shards.index import (
    _INT16_NAN,
    FIELDS,
    FORMAT,
    ShardError,
    _load_index,
    _Shard,
    resolve_shard_dirs,
    split_shards_for_rank,
)
from agrifm.runtime import rank_world

log = logging.getLogger("agrifm.pretrain.shards")


def _seed(*parts: int) -> int:
    """One integer seed from several (python's ``random.Random`` takes no tuples)."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


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
            return rank_world(self._rank or 0, self._world or 1)
        return rank_world()

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
        count = 0
        try:
            with open(shard.path, "rb") as stream:
                files = tar_file_expander([{"url": str(shard.path), "stream": stream}])
                for sample in group_by_keys(files):
                    count += 1
                    yield shard, sample["__key__"], sample
        except (tarfile.TarError, EOFError, OSError, ValueError, zlib.error) as err:
            raise ShardError(f"shard {shard.path} is unreadable after {count} samples ({err.args[0]})") from None
        if count != shard.samples:
            raise ShardError(f"shard {shard.path} holds {count} samples, the index says {shard.samples}")

    def _decode(self, shard: _Shard, key: str, members: Mapping[str, bytes]) -> dict[str, Any] | None:
        """A sample as tensors, or None (counted) when it is corrupt or too short."""
        try:
            arr = {f: basichandlers(f, members[f]) for f in FIELDS}  # npy without pickles, json
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
        rng = random.Random(_seed(self.seed, self.epoch, rank, world, worker, num_workers))
        raw = (item for shard in shards for item in self._raw(shard))
        shuffled = wds.shuffle(self.shuffle_buffer, initial=self.shuffle_buffer, rng=rng)(raw)
        for position, (shard, key, members) in enumerate(shuffled, 1):
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

