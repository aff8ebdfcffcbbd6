"""Write samples into tar shards (``webdataset.TarWriter``) and the folder's ``index.json``."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import webdataset as wds

from agrifm.io import atomic_output, write_text_atomic
from agrifm.pretrain.landcover import CLASSES
from agrifm.pretrain.shards.index import _INT16_NAN, FIELDS, FORMAT, INDEX_NAME, X_DTYPES, ShardError

_F16_MAX = float(np.finfo(np.float16).max)


class _HashingFile:
    """Write-only file wrapper that hashes what passes through (no second read of the shard)."""

    def __init__(self, f: Any) -> None:
        self.f, self.sha, self.size = f, hashlib.sha256(), 0

    def write(self, b: bytes) -> int:
        self.sha.update(b)
        self.size += len(b)
        return self.f.write(b)


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
        self._tar: wds.TarWriter | None = None
        self._file: Any = None
        self._open: ExitStack | None = None  # the shard's temporary file (io.atomic_output)
        self._hash: _HashingFile | None = None
        self._keys: set[str] = set()
        self._closed = False

    # -- shards ------------------------------------------------------------------------------
    def _shard_name(self) -> str:
        return f"{self.prefix}-{len(self.shards):06d}.tar"

    def _open_shard(self) -> None:
        self._open = ExitStack()
        tmp = self._open.enter_context(atomic_output(self.out_dir / self._shard_name()))
        self._file = self._open.enter_context(open(tmp, "wb"))
        self._hash = _HashingFile(self._file)
        # empty owner, fixed mode and mtime: the bytes depend on the samples only (reproducible)
        self._tar = wds.TarWriter(self._hash, user="", group="", mode=0o644, mtime=0)
        self._open.callback(self._tar.close)  # on abort too, before the file closes
        self._keys = set()

    def _finish_shard(self) -> None:
        assert self._tar is not None and self._hash is not None and self._open is not None
        self._tar.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._open.close()  # closes the file, then renames it onto the shard's name
        self.shards.append(
            {"name": self._shard_name(), "samples": len(self._keys), "bytes": self._hash.size,
             "sha256": self._hash.sha.hexdigest()}
        )
        self._tar = self._open = self._hash = None

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
            "x.npy": self._encode_x(x, key),
            "valid.npy": np.packbits(valid, axis=-1),
            "dates.npy": days.astype(np.int32),
            "fractions.npy": np.where(frac_valid, fractions, 0).astype(np.float16),
            "frac_valid.npy": frac_valid.astype(np.uint8),
            "meta.json": json.dumps(record, default=_json_default).encode(),
        }
        for field in FIELDS:  # one write per field: members in FIELDS order (TarWriter sorts a sample's)
            self._tar.write({"__key__": key, field: members[field]})
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
        if self._open is not None:  # leave the temporary file's context as on an error: deleted
            self._open.__exit__(ShardError, ShardError("aborted"), None)
            self._tar = self._open = self._hash = None
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
