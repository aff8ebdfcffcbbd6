"""Lightning pieces of pre-training: the task, the source-mixing training stream, validation batches.

* :class:`PretrainTask` - L1 to the land-cover fractions on valid cells, an EMA *mean teacher*
  whose predictions are blended into the targets, AdamW + warm-up cosine, FSDP2 sharding hook.
* :class:`SourceMixer` - endless training batches, one source per batch, the source of batch
  ``i`` drawn from a generator seeded by ``(seed, i)`` so every rank picks the same source at
  the same step (the shared backbone then sees the same graph on all ranks). Each source's
  :class:`~agrifm.pretrain.shards.ShardDataset` starts a new epoch (``set_epoch``) when its pass
  ends; positions are resumable (:class:`StreamState` puts every rank's state in the checkpoint).
* :class:`ValidationBatches` - every rank reads the validation set, keeps every world-th batch
  and pads with zero-weight batches, so all ranks run the same number of forward passes (DDP
  and FSDP2 need that) and each sample counts exactly once.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Mapping
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, default_collate

from agrifm.data.timeseries import prepare_source
from agrifm.models.config import ModelConfig
from agrifm.pretrain.metrics_log import MetricsLog
from agrifm.pretrain.model import PretrainModel, ema_update, fraction_ce, fraction_l1
from agrifm.pretrain.shards import ShardDataset
from agrifm.sensors import Source
from agrifm.runtime import rank_world
from agrifm.tasks.optim import adamw_warmup_cosine
from agrifm.errors import InputError

__all__ = ["PretrainTask", "SourceMixer", "ValidationBatches", "StreamState", "PrepareSample", "MetricsLog",
           "predict_fractions", "shard_dataset", "rank_world", "gather_objects"]

Batch = dict[str, Any]


def gather_objects(obj: Any) -> list[Any]:
    """``obj`` of every rank, in rank order (``[obj]`` without a process group)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    world = dist.get_world_size()
    if world == 1:
        return [obj]
    out: list[Any] = [None] * world
    dist.all_gather_object(out, obj)
    return out


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


class PrepareSample:
    """ShardDataset transform: gap-fill and normalise ``x`` (agrifm.data.timeseries), keep tensors only.

    It also attaches ``_skips`` = (short, corrupt) samples the dataset skipped since the previous
    sample: the dataset's counters live in whichever process iterates (a DataLoader worker), so
    this is how the main process gets the counts. Set ``dataset`` after building the dataset.
    """

    def __init__(self, source: Source) -> None:
        self.source = source
        self.dataset: ShardDataset | None = None
        self._seen = (0, 0)

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        dates = sample["dates"].numpy().astype("datetime64[D]")
        x, _ = prepare_source(sample["x"].numpy(), sample["valid"].numpy(), self.source, dates=dates)
        stats = self.dataset.stats if self.dataset is not None else {}
        now = (stats.get("short", 0), stats.get("corrupt", 0))
        skips = torch.tensor([now[0] - self._seen[0], now[1] - self._seen[1]])
        self._seen = now
        return {"x": x, "dates": sample["dates"], "fractions": sample["fractions"],
                "frac_valid": sample["frac_valid"], "_skips": skips}


def shard_dataset(dirs: Any, source: Source, frames: int, *, train: bool = False, shuffle_buffer: int = 1000,
                  seed: int = 0) -> ShardDataset:
    """Model-ready samples of one source's shards (``frames`` drawn per series, shorter ones skipped).

    Training sets are split over ranks and shuffled; evaluation sets (``train=False``) are read
    whole by every rank in a fixed order (see :class:`ValidationBatches`).
    """
    prep = PrepareSample(source)
    kw: dict[str, Any] = (dict(shuffle_buffer=shuffle_buffer, seed=seed) if train
                          else dict(shuffle_buffer=0, seed=0, rank=0, world_size=1))
    ds = ShardDataset(dirs, frames=frames, min_frames=frames, transform=prep, **kw)
    prep.dataset = ds
    return ds


def _loader(dataset: ShardDataset, batch_size: int, num_workers: int, drop_last: bool) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=default_collate,
                      drop_last=drop_last, pin_memory=torch.cuda.is_available(), persistent_workers=False)


class _SourceStream:
    """Batches of one source across epochs; ``next()`` -> (epoch, batch)."""

    def __init__(self, name: str, dataset: ShardDataset, batch_size: int, num_workers: int) -> None:
        self.name, self.dataset, self.batch_size, self.num_workers = name, dataset, batch_size, num_workers
        self._it: Iterator[Batch] | None = None

    def _pass(self) -> Iterator[Batch]:
        # Iterate a shallow copy: a dataset iterated in this process (num_workers=0) counts what it
        # *yields* as consumed, which would include batches Lightning prefetched but never trained
        # on. The copy keeps that count to itself; ``mark_consumed`` records what was trained.
        return iter(_loader(copy.copy(self.dataset), self.batch_size, self.num_workers, drop_last=True))

    def restart(self) -> None:
        """Drop a running iterator (and its prefetched batches); the next pass resumes after the consumed ones."""
        self._it = None
        self.dataset.load_state_dict(self.dataset.state_dict())

    def close(self) -> None:
        """Stop the DataLoader workers now (in this process), not whenever garbage collection runs."""
        self._it = None

    def next(self) -> tuple[int, Batch]:
        for fresh in (False, True):
            if self._it is None:
                self._it = self._pass()
            try:
                return self.dataset.epoch, next(self._it)
            except StopIteration:
                self._it = None
                if fresh:
                    break
                self.dataset.set_epoch(self.dataset.epoch + 1)
        rank, world = self.dataset.rank_world()
        raise InputError(
            f"source {self.name!r}: rank {rank}/{world} got no full batch of {self.batch_size} in a whole epoch "
            f"({self.dataset.num_samples} samples in {len(self.dataset.shards)} shards, stats {self.dataset.stats}); "
            "use a smaller --batch-size, fewer processes, or more/smaller shards"
            + (f"; {self.dataset.stats['short']} series were shorter than --frames" if self.dataset.stats.get("short") else "")
        )


class SourceMixer(IterableDataset):
    """Endless training batches mixing sources across steps (see the module docstring).

    Sources are drawn in proportion to their sample counts, so every source's epoch takes about
    as long. Batches carry ``source``, ``_epoch`` and ``_index`` so :meth:`mark_consumed` can keep
    a resumable position that ignores batches prefetched but not trained on.
    """

    def __init__(self, datasets: Mapping[str, ShardDataset], batch_size: int, *, num_workers: int = 0, seed: int = 0) -> None:
        super().__init__()
        if not datasets:
            raise InputError("no training sources")
        self.streams = {n: _SourceStream(n, ds, batch_size, num_workers) for n, ds in datasets.items()}
        counts = np.array([ds.num_samples for ds in datasets.values()], dtype=np.float64)
        self.weights = counts / counts.sum()
        self.seed = seed
        self.index = 0  # next batch index to train on
        self.samples = dict.fromkeys(self.streams, 0)
        self.skips = {n: {"short": 0, "corrupt": 0} for n in self.streams}

    def source_of(self, i: int) -> str:
        names = list(self.streams)
        if len(names) == 1:
            return names[0]
        return names[int(np.random.default_rng([self.seed, i]).choice(len(names), p=self.weights))]

    def __iter__(self) -> Iterator[Batch]:
        for s in self.streams.values():
            s.restart()
        i = self.index
        while True:
            name = self.source_of(i)
            epoch, batch = self.streams[name].next()
            yield {**batch, "source": name, "_epoch": epoch, "_index": i}
            i += 1

    def close(self) -> None:
        for s in self.streams.values():
            s.close()

    def mark_consumed(self, batch: Batch) -> None:
        """Record a batch as trained on (call after its step)."""
        name = batch["source"]
        ds = self.streams[name].dataset
        if int(batch["_epoch"]) == ds.epoch:  # a batch of an epoch already left behind needs no record
            ds.mark_consumed({"_pos": batch["_pos"].cpu()})
        self.index = int(batch["_index"]) + 1
        short, corrupt = (int(v) for v in batch["_skips"].sum(0).tolist())
        self.samples[name] += int(batch["_pos"].shape[0])
        self.skips[name]["short"] += short
        self.skips[name]["corrupt"] += corrupt

    def state_dict(self) -> dict[str, Any]:
        return {"index": self.index, "samples": dict(self.samples), "skips": copy.deepcopy(self.skips),
                "sources": {n: s.dataset.state_dict() for n, s in self.streams.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if set(state["sources"]) != set(self.streams):
            raise InputError(f"resume state has sources {sorted(state['sources'])}, this run {sorted(self.streams)}")
        self.index = int(state["index"])
        self.samples = dict(state["samples"])
        self.skips = copy.deepcopy(state["skips"])
        for n, s in self.streams.items():
            s.dataset.load_state_dict(state["sources"][n])


class ValidationBatches(IterableDataset):
    """Rank-balanced validation batches (see the module docstring); datasets must be built with rank=0, world_size=1."""

    def __init__(self, datasets: Mapping[str, ShardDataset], batch_size: int, *, num_workers: int = 0) -> None:
        super().__init__()
        self.datasets, self.batch_size, self.num_workers = dict(datasets), batch_size, num_workers

    def __iter__(self) -> Iterator[Batch]:
        rank, world = rank_world()
        for name, ds in self.datasets.items():
            mine, total, last = 0, 0, None
            for j, batch in enumerate(_loader(ds, self.batch_size, self.num_workers, drop_last=False)):
                total, last = j + 1, batch
                if j % world == rank:
                    mine += 1
                    yield {**batch, "source": name, "_weight": 1.0}
            for _ in range(math.ceil(total / world) - mine):
                yield {**last, "source": name, "_weight": 0.0}


def predict_fractions(model: PretrainModel, batch: Batch) -> torch.Tensor:
    """The model's fractions on the batch's cell grid."""
    return model(batch["source"], batch["x"], batch["dates"], tuple(batch["fractions"].shape[-2:]))


def rng_state() -> dict[str, Any]:
    """Every random stream a training step draws from in this process: torch (CPU, CUDA), numpy, Python."""
    import random

    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": random.getstate(),  # plain types: loads with weights_only
            "numpy": [kind, torch.from_numpy(np.asarray(keys, np.int64)), int(pos), int(has_gauss), float(cached)],
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: Mapping[str, Any]) -> None:
    import random

    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, np.int64).astype(np.uint32), pos, has_gauss, cached))
    random.setstate(state["python"])
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


class StreamState(L.Callback):
    """Marks trained batches consumed; saves every rank's stream position and random state in
    the checkpoint, so a resumed run draws the same batches, frames and drop-path masks.

    Runs before ModelCheckpoint (Lightning orders checkpoint callbacks last), so a checkpoint
    written at a step includes that step's batches and its metrics row. The random state is
    put back just before the first resumed step (after the data loader, which draws a seed
    from torch's generator when it starts, has started).
    """

    def __init__(self, mixer: SourceMixer) -> None:
        self.mixer = mixer
        self._pending_rng: dict[str, Any] | None = None

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Batch, batch_idx: int) -> None:
        if self._pending_rng is not None:
            set_rng_state(self._pending_rng)
            self._pending_rng = None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Batch, batch_idx: int) -> None:
        self.mixer.mark_consumed(batch)
        record = getattr(pl_module, "record_step", None)
        if record is not None:  # the step's metrics row, before ModelCheckpoint saves this step
            record()

    def state_dict(self) -> dict[str, Any]:
        return {"ranks": gather_objects(self.mixer.state_dict()), "rng": gather_objects(rng_state())}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        rank, world = rank_world()
        ranks = state_dict["ranks"]
        if len(ranks) != world:
            raise InputError(f"the checkpoint was written by {len(ranks)} processes, this run has {world}: "
                             "resume with the same number of processes (the shard assignment depends on it)")
        self.mixer.load_state_dict(ranks[rank])
        rngs = state_dict.get("rng")  # absent in checkpoints of earlier versions
        self._pending_rng = rngs[rank] if rngs and len(rngs) == world else None


# ---------------------------------------------------------------------------------------------
# Task
# ---------------------------------------------------------------------------------------------


class PretrainTask(L.LightningModule):
    """Land-cover-fraction pre-training of :class:`~agrifm.pretrain.model.PretrainModel`.

    Targets: ``(1 - w) * product + w * teacher`` where the teacher is an EMA of the student
    (``ema_momentum``) and ``w`` ramps linearly from 0 to ``teacher_weight`` over
    ``teacher_warmup`` optimiser steps (the product's fractions are noisy and coarse; the
    teacher's smoother predictions regularise them once it has learned something). The loss is
    normalised by the *global* number of valid cells of the step's batch (all ranks), so a run
    on N processes computes the same gradient as one process with the same global batch.
    ``ce_weight`` adds a soft cross-entropy term (0: L1 only, the published loss); with
    ``ce_decay`` > 0 its weight falls linearly to 0 at that step, so the run *ends* on the L1
    objective (CE to learn, then L1 to sharpen). The logged ``loss`` is the L1 part either way.
    """

    def __init__(
        self,
        model: Mapping[str, Any],
        lr: float = 1e-4,
        weight_decay: float = 0.05,
        warmup_steps: int = 1000,
        min_lr: float = 1e-6,
        ema_momentum: float = 0.999,
        teacher_weight: float = 0.2,
        teacher_warmup: int = 1000,
        ce_weight: float = 0.0,
        ce_decay: int = 0,
        checkpointing: bool = False,
        log_every: int = 10,
    ) -> None:
        super().__init__()
        if not 0.0 <= ema_momentum <= 1.0:
            raise InputError(f"ema_momentum must be in [0, 1], got {ema_momentum}")
        if not 0.0 <= teacher_weight <= 1.0:
            raise InputError(f"teacher_weight must be in [0, 1], got {teacher_weight}")
        self.save_hyperparameters()
        self.model = PretrainModel(ModelConfig.from_dict(dict(model)))
        self.model.set_checkpointing(checkpointing)
        self.teacher = copy.deepcopy(self.model).requires_grad_(False)
        self._acc: torch.Tensor | None = None  # global (L1 sum, cells) since the last metrics row
        self._val: torch.Tensor | None = None
        self._row_step = -1
        self.last_loss = float("nan")
        self.last_val_loss = float("nan")

    # -- modes and sharding -----------------------------------------------------------------------
    def train(self, mode: bool = True) -> "PretrainTask":
        super().train(mode)
        self.teacher.eval()  # no drop-path in the teacher
        return self

    def configure_model(self) -> None:
        """FSDP2 (ModelParallelStrategy): shard every backbone block, then the rest, of student and teacher."""
        if self.device_mesh is None or getattr(self, "_sharded", False):
            return
        from torch.distributed.fsdp import fully_shard

        mesh = self.device_mesh["data_parallel"]
        for m in (self.model, self.teacher):
            for layer in m.backbone.layers:
                for block in layer.blocks:
                    fully_shard(block, mesh=mesh)
            fully_shard(m, mesh=mesh)
        self._sharded = True

    # -- steps ------------------------------------------------------------------------------------
    def teacher_weight_at(self, step: int) -> float:
        hp = self.hparams
        if hp.teacher_weight <= 0:
            return 0.0
        return hp.teacher_weight * (min(1.0, step / hp.teacher_warmup) if hp.teacher_warmup > 0 else 1.0)

    def ce_weight_at(self, step: int) -> float:
        hp = self.hparams
        if hp.ce_weight <= 0 or hp.ce_decay <= 0:
            return max(hp.ce_weight, 0.0)
        return hp.ce_weight * max(0.0, 1.0 - step / hp.ce_decay)

    def transfer_batch_to_device(self, batch: Batch, device: torch.device, dataloader_idx: int) -> Batch:
        """Bookkeeping entries (``_pos``, ``_skips``...) stay on the CPU: reading them back would sync the GPU."""
        meta = {k: v for k, v in batch.items() if k.startswith("_")}
        rest = super().transfer_batch_to_device({k: v for k, v in batch.items() if k not in meta}, device, dataloader_idx)
        return {**rest, **meta}

    def _global_sum(self, t: torch.Tensor) -> torch.Tensor:
        return self.trainer.strategy.reduce(t.detach().clone(), reduce_op="sum")

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        pred = predict_fractions(self.model, batch)
        target = batch["fractions"]
        w = self.teacher_weight_at(self.global_step)
        if w > 0:
            with torch.no_grad():
                target = (1.0 - w) * target + w * predict_fractions(self.teacher, batch).float()
        l1, cells = fraction_l1(pred, target, batch["frac_valid"])
        objective = l1
        ce_weight = self.ce_weight_at(self.global_step)
        if ce_weight > 0:
            objective = l1 + ce_weight * fraction_ce(pred, target, batch["frac_valid"])
        total = self._global_sum(torch.stack([l1, cells]))
        loss = objective * self.trainer.world_size / total[1].clamp_min(1.0)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {loss.item()} at step {self.global_step} (source {batch['source']!r})")
        self._acc = total if self._acc is None else self._acc + total
        # progress bar only: the logger gets the metrics rows (record_step), not every step
        self.log("loss", total[0] / total[1].clamp_min(1.0), prog_bar=True, logger=False, on_step=True, on_epoch=False,
                 batch_size=int(batch["x"].shape[0]))
        self.log("w", w, prog_bar=True, logger=False, on_step=True, on_epoch=False)
        return loss

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        if hasattr(self.teacher, "reshard"):  # FSDP2 keeps a root's parameters gathered after a forward without backward
            self.teacher.reshard()
        ema_update(self.teacher, self.model, self.hparams.ema_momentum)

    def on_train_start(self) -> None:
        for logger in self.loggers:
            if isinstance(logger, MetricsLog):
                logger.resume(self.global_step)  # rows after the checkpoint's step are about to be redone
        self._row_step = self.global_step

    def on_train_batch_end(self, outputs: Any, batch: Batch, batch_idx: int) -> None:
        self.record_step()

    def record_step(self) -> None:
        """The metrics row of a finished optimiser step (once per step; StreamState calls it
        before a checkpoint of that step is written)."""
        step = self.global_step
        if step == self._row_step or self._acc is None:
            return  # inside an accumulation window
        if step % self.hparams.log_every == 0 or step >= (self.trainer.max_steps or 0):
            self.last_loss = float(self._acc[0] / self._acc[1].clamp_min(1.0))
            self._acc = None
            self._log_row(step, loss=self.last_loss)
        self._row_step = step

    def on_validation_epoch_start(self) -> None:
        self._val = None

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        pred = predict_fractions(self.model, batch)
        l1, cells = fraction_l1(pred, batch["fractions"], batch["frac_valid"])
        # Per-class sum and sum of squares of the predictions over valid cells: their spread
        # tells a model that learned something from one that collapsed to a constant.
        p = pred.detach().float().permute(0, 2, 3, 1)[batch["frac_valid"]]
        stats = torch.cat([torch.stack([l1.detach(), cells]), p.sum(0), p.square().sum(0)]) * float(batch["_weight"])
        self._val = stats if self._val is None else self._val + stats

    def on_validation_epoch_end(self) -> None:
        if self._val is None:
            return
        total = self._global_sum(self._val)
        if total[1] <= 0:
            return
        self.last_val_loss = float(total[0] / total[1])
        k = (total.numel() - 2) // 2
        mean = total[2:2 + k] / total[1]
        spread = float((total[2 + k:] / total[1] - mean.square()).clamp_min(0).sqrt().max())
        if spread < 1e-3 and total[1] > 1:
            from lightning.pytorch.utilities import rank_zero_warn

            rank_zero_warn(
                f"pretrain: at step {self.global_step} the predicted fractions are the same for every validation "
                f"cell (largest per-class std {spread:.1e}): the model has collapsed to a constant, as pure L1 does "
                "on products dominated by one class. Add --ce-weight 1 (docs/pretraining.md, 'Loss').")
        self.log("val_loss", self.last_val_loss, prog_bar=True, logger=False)
        self._log_row(self.global_step, val_loss=self.last_val_loss)
        for logger in self.loggers:
            logger.save()

    def _log_row(self, step: int, **values: float) -> None:
        """The metrics row of ``step`` to the Trainer's loggers (:class:`MetricsLog`: metrics.csv);
        loggers write on rank 0 only."""
        for logger in self.loggers:
            logger.log_metrics(values, step=step)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        for logger in self.loggers:  # the rows up to this step are on disk before its checkpoint is
            logger.save()

    # -- optimiser --------------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        hp = self.hparams
        total = int(self.trainer.max_steps) if self.trainer.max_steps and self.trainer.max_steps > 0 else 10_000
        return adamw_warmup_cosine(self.model, lr=hp.lr, weight_decay=hp.weight_decay, warmup_steps=hp.warmup_steps,
                                   min_lr=hp.min_lr, total_steps=total)
