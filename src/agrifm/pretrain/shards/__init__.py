"""Tar shards of pre-training samples: a writer, and a streaming, resumable loader.

Why tar shards: tens of millions of small samples cannot live as individual files (inode
limits, metadata storms on shared file systems, slow listing). A shard is a plain tar (readable
with any tool, streamable from object storage) in the WebDataset layout - ``<key>.<field>``
members, one group per sample - written with ``webdataset.TarWriter`` and read with its tar
iterators (shards written before agrifm used webdataset have the same bytes and still read):

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

from agrifm.pretrain.shards.dataset import ShardDataset
from agrifm.pretrain.shards.index import (
    FIELDS,
    FORMAT,
    INDEX_NAME,
    X_DTYPES,
    ShardError,
    resolve_shard_dirs,
    split_shards_for_rank,
)
from agrifm.pretrain.shards.writer import ShardWriter

__all__ = [
    "FORMAT",
    "INDEX_NAME",
    "FIELDS",
    "X_DTYPES",
    "ShardError",
    "ShardWriter",
    "ShardDataset",
    "split_shards_for_rank",
    "resolve_shard_dirs",
]
