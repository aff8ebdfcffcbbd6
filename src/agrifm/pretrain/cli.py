"""``agrifm pretrain``: pre-train the shared AgriFM encoder on land-cover-fraction shards.

Leaves in ``--out`` (RUN_DIR): ``model.safetensors`` (our format, task 'pretrain', with the
sources' bands and normalisation), ``encoder_published.pth`` (plain tensors in the published
pre-trained layout: ``backbone.*`` + ``<SRC>_patch_emd.*``), ``metrics.csv`` (step, loss,
val_loss), ``summary.json`` and ``checkpoints/last.ckpt`` (``--resume`` continues from it).

One process: ``agrifm pretrain ...``. Several: ``torchrun --nproc_per_node=N -m agrifm.cli
pretrain ...`` (any number of nodes), or ``srun`` under SLURM; devices and nodes are read from
the launcher's environment. See docs/pretraining.md.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import re
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agrifm.io import atomic_output, write_text_atomic
from agrifm.pretrain.shards import ShardDataset
from agrifm.sensors import Source, get_source
from agrifm.errors import InputError, OutputExistsError, TooLargeError, user_input

__all__ = ["main", "run", "parse_args", "SourceShards", "open_shard_sets", "source_statistics", "describe_source", "model_config",
           "export_outputs"]

PROG = "agrifm pretrain"


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------


@dataclass
class SourceShards:
    """The shard folders of one source (several folders of one source are read as one set)."""

    name: str
    dirs: list[Path]
    bands: list[str]
    class_names: list[str]
    indexes: list[dict[str, Any]]

    @property
    def num_samples(self) -> int:
        return sum(int(i["num_samples"]) for i in self.indexes)


def open_shard_sets(paths: Sequence[str | Path], what: str = "--data") -> dict[str, SourceShards]:
    """Shard folders grouped by source; missing, truncated or inconsistent sets are errors naming them."""
    everything = ShardDataset(paths, shuffle_buffer=0, rank=0, world_size=1)  # reads and checks the indexes
    sets: dict[str, SourceShards] = {}
    for folder in everything.dirs:
        index = everything.indexes[str(folder)]
        name, bands = index["source"], list(index["bands"])
        s = sets.setdefault(name, SourceShards(name, [], bands, list(index["class_names"]), []))
        if bands != s.bands:
            raise InputError(f"{what} {folder}: source {name!r} has bands {bands}, {s.dirs[0]} has {s.bands}")
        s.dirs.append(folder)
        s.indexes.append(index)
    for shard in everything.shards:
        shard.check_size(what)
    return sets


def source_statistics(shards: SourceShards, max_samples: int = 512) -> tuple[list[float], list[float], str]:
    """Per-band (mean, std, origin): the index's ``stats`` when every folder has them, else a pass
    over the first ``max_samples`` samples (valid pixels only). Deterministic, so every rank agrees."""
    from agrifm.data.stats import RunningStats

    stats = [i.get("stats") for i in shards.indexes]
    if len(stats) == 1 and stats[0] and {"mean", "std"} <= set(stats[0]):
        return [float(v) for v in stats[0]["mean"]], [float(v) for v in stats[0]["std"]], "index"
    ds = ShardDataset(shards.dirs, shuffle_buffer=0, frames=None, min_frames=1, rank=0, world_size=1)
    running = RunningStats(len(shards.bands))
    n = 0
    for sample in ds:
        running.update(sample["x"].numpy(), sample["valid"].numpy(), axis=1, what=f"source {shards.name}")
        n += 1
        if n >= max_samples:
            break
    try:
        result = running.result(shards.bands)
    except ValueError as err:
        raise InputError(f"source {shards.name!r} ({shards.dirs[0]}): {err} in the first {n} samples") from None
    return result.mean.tolist(), np.maximum(result.std, 1e-6).tolist(), f"data pass over {n} samples"


def describe_source(shards: SourceShards, mean: Sequence[float], std: Sequence[float]) -> Source:
    """The registered source of that name (with these statistics) when its bands match, else a new one."""
    try:
        known: Source | None = get_source(shards.name)
    except KeyError:
        known = None
    if known is not None and list(known.bands) == shards.bands:
        return Source.from_dict({**known.to_dict(), "name": shards.name, "mean": list(mean), "std": list(std)})
    transform = shards.indexes[0].get("params", {}).get("transform")
    return Source(name=shards.name, bands=tuple(shards.bands), resolution_m=abs(float(transform[0])) if transform else 0.0,
                  units="as stored in the shards", mean=tuple(mean), std=tuple(std),
                  description="pre-training shards " + ", ".join(str(d) for d in shards.dirs))


def model_config(spec: str, *, sources: dict[str, int], num_classes: int, frames: int) -> Any:
    """A preset name or a YAML/JSON file (a config dict, optionally ``preset: NAME`` + overrides)."""
    import yaml

    from agrifm.tasks.base import resolve_model_config

    path = Path(spec)
    if path.suffix.lower() in (".yaml", ".yml", ".json") or path.is_file():
        if not path.is_file():
            raise FileNotFoundError(f"--model {spec}: no such file")
        loaded = yaml.safe_load(path.read_text()) or {}
        model: Any = loaded.get("model", loaded) if isinstance(loaded, dict) else None
        if not isinstance(model, dict):
            raise InputError(f"--model {spec}: expected a mapping of model settings")
    else:
        model = spec
    # Pre-training pools time by a mean; the exported AgriFM must do the same for its head to fit.
    return resolve_model_config(model, sources=sources, num_classes=num_classes, head="fraction",
                                feature_fusion="mean", num_frames=frames)


# ---------------------------------------------------------------------------------------------
# Launch
# ---------------------------------------------------------------------------------------------


def _leading_int(text: str) -> int:
    """SLURM's per-node counts read "4" or "4(x2)"."""
    m = re.match(r"\s*(\d+)", text)
    return int(m.group(1)) if m else 1


def cluster_layout(devices: str | None, num_nodes: int | None) -> tuple[int | str, int]:
    """(devices per node, nodes): flags first, else torchrun's or SLURM's environment, else one."""
    env = os.environ
    dev: int | str = "auto"
    nodes = 1
    if "LOCAL_WORLD_SIZE" in env and "WORLD_SIZE" in env:  # torchrun
        dev = int(env["LOCAL_WORLD_SIZE"])
        nodes = max(1, int(env["WORLD_SIZE"]) // dev)
    elif "SLURM_NTASKS_PER_NODE" in env and "SLURM_NNODES" in env:
        dev, nodes = _leading_int(env["SLURM_NTASKS_PER_NODE"]), int(env["SLURM_NNODES"])
    if devices is not None:
        dev = devices if devices == "auto" else int(devices)
    return dev, num_nodes or nodes


def _processes(devices: int | str, nodes: int) -> int:
    if devices == "auto":
        return (torch.cuda.device_count() or 1) * nodes
    return int(devices) * nodes


def _strategy(name: str, processes: int, multi_source: bool) -> Any:
    if name == "fsdp2":
        from lightning.pytorch.strategies import ModelParallelStrategy

        return ModelParallelStrategy(data_parallel_size=processes, tensor_parallel_size=1)
    if processes == 1:
        return "auto"
    from lightning.pytorch.strategies import DDPStrategy

    # Batches hold one source, so the other sources' patch embeddings get no gradient that step.
    return DDPStrategy(find_unused_parameters=multi_source)


def _progress_bar() -> Any:
    from lightning.pytorch.callbacks import TQDMProgressBar

    class StepBar(TQDMProgressBar):
        """Counts towards max_steps (the stream is endless, so Lightning knows no epoch length)."""

        @property
        def total_train_batches(self) -> int | float:
            return self.trainer.max_steps * self.trainer.accumulate_grad_batches

    return StepBar()


# ---------------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------------


def full_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """CPU state dict; under FSDP2 the gathered full tensors on rank 0 (a collective: call on every rank)."""
    if any(hasattr(p, "full_tensor") for p in module.parameters()):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k: v.detach().cpu() for k, v in module.state_dict().items()}


def save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> Path:
    """A plain tensor dict for ``torch.load(weights_only=True)``, written beside ``path`` then renamed."""
    with atomic_output(path) as tmp:
        torch.save({k: v.contiguous() for k, v in tensors.items()}, tmp)
    return path


def export_outputs(model: torch.nn.Module, run: Path, sources: dict[str, Source], class_names: Sequence[str],
                   frames: int, extra: dict[str, Any]) -> None:
    """``model.safetensors`` + ``encoder_published.pth`` (rank 0 writes; every rank must call)."""
    from agrifm.checkpoint import save_model
    from agrifm.pretrain.model import published_state_dict, to_agrifm
    from agrifm.runtime import rank_world

    state = full_state_dict(model)
    if rank_world()[0] != 0:
        return
    cfg = copy.deepcopy(model.config)
    cfg.use_checkpoint = False
    save_model(to_agrifm(state, cfg), run / "model.safetensors", task="pretrain", sources=sources,
               class_names=class_names, frames=frames, extra=extra)
    save_tensors(published_state_dict(state, list(cfg.sources), cfg.window_size), run / "encoder_published.pth")


def _summary(mixer: Any, datasets: dict[str, ShardDataset]) -> dict[str, Any]:
    """Per-rank samples, skips and assigned shards, gathered to every rank."""
    from agrifm.pretrain.task import gather_objects
    from agrifm.runtime import rank_world

    rank, world = rank_world()
    mine = {
        "rank": rank,
        "samples": dict(mixer.samples),
        "skipped": mixer.skips,
        "epoch": {n: ds.epoch for n, ds in datasets.items()},
        "shards": {n: [s.path.name for s in ds.shards_for(rank, world)] for n, ds in datasets.items()},
    }
    ranks = gather_objects(mine)
    total = {k: sum(r["skipped"][n][k] for r in ranks for n in r["skipped"]) for k in ("short", "corrupt")}
    return {"ranks": ranks, "samples": sum(sum(r["samples"].values()) for r in ranks), "skipped": total}


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Pre-train the shared AgriFM encoder on land-cover-fraction shards.")
    p.add_argument("--data", action="append", required=True, metavar="SHARDS",
                   help="shard folder (or a parent of per-source folders); repeatable")
    p.add_argument("--val-data", action="append", metavar="SHARDS", help="validation shard folder; repeatable")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run folder (outputs, checkpoints)")
    p.add_argument("--model", default="base-vt", metavar="PRESET|YAML",
                   help="model preset or config file (base-vt: the published backbone)")
    p.add_argument("--max-steps", type=int, default=1000, help="optimiser steps")
    p.add_argument("--batch-size", type=int, default=8, help="samples per process and micro-batch")
    p.add_argument("--accumulate", type=int, default=1, metavar="N", help="micro-batches per optimiser step")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--warmup-steps", type=int, default=1000, help="linear warm-up (capped at 10%% of the steps)")
    p.add_argument("--frames", type=int, default=16, help="frames drawn from each series; shorter series are skipped")
    p.add_argument("--ema-momentum", type=float, default=0.999, help="teacher = m * teacher + (1 - m) * student")
    p.add_argument("--teacher-weight", type=float, default=0.2, help="target = (1 - w) * product + w * teacher")
    p.add_argument("--teacher-warmup", type=int, default=None, metavar="STEPS", help="w ramps from 0 over these steps (20%% of the run)")
    p.add_argument("--ce-weight", type=float, default=0.0, help="add this x soft cross-entropy to the L1 loss (0: L1 only)")
    p.add_argument("--ce-decay", type=int, default=0, metavar="STEPS",
                   help="the CE weight falls linearly to 0 at this step, so training ends on L1 (0: constant)")
    p.add_argument("--precision", default="auto", help="auto (bf16-mixed on GPU, 32-true on CPU) or a Lightning precision")
    p.add_argument("--strategy", choices=["auto", "ddp", "fsdp2"], default="auto", help="ddp (auto) or fsdp2 (sharded, for big backbones)")
    p.add_argument("--devices", default=None, help="processes per node (default: from torchrun/SLURM, else auto)")
    p.add_argument("--num-nodes", type=int, default=None, help="nodes (default: from torchrun/SLURM, else 1)")
    p.add_argument("--activation-checkpointing", action="store_true", help="recompute block activations in backward (less memory)")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers per source and process")
    p.add_argument("--shuffle-buffer", type=int, default=1000, help="samples in the streaming shuffle buffer (0: off)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=10, help="steps per metrics.csv row")
    p.add_argument("--val-every", type=int, default=500, help="steps between validations")
    p.add_argument("--ckpt-every", type=int, default=500, help="steps between checkpoints")
    p.add_argument("--stats-samples", type=int, default=512, help="samples read for normalisation when the index has none")
    p.add_argument("--resume", action="store_true", help="continue RUN_DIR/checkpoints/last.ckpt")
    p.add_argument("--overwrite", action="store_true", help="start afresh in a RUN_DIR that holds a run")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _check_args(a: argparse.Namespace) -> None:
    for name in ("max_steps", "batch_size", "accumulate", "frames", "log_every", "val_every", "ckpt_every", "stats_samples"):
        if getattr(a, name) < 1:
            raise InputError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(a, name)}")
    if a.workers < 0 or a.shuffle_buffer < 0:
        raise InputError("--workers and --shuffle-buffer must be >= 0")


def _datasets(sets: dict[str, SourceShards], sources: dict[str, Source], a: argparse.Namespace, *, train: bool) -> dict[str, ShardDataset]:
    from agrifm.pretrain.task import shard_dataset

    return {n: shard_dataset(s.dirs, sources[n], a.frames, train=train, shuffle_buffer=a.shuffle_buffer, seed=a.seed)
            for n, s in sets.items()}


def _run_dir(a: argparse.Namespace) -> tuple[Path, Path]:
    """(RUN_DIR, its last checkpoint), refusing to resume nothing or to overwrite a run silently."""
    out = Path(a.out)
    last = out / "checkpoints" / "last.ckpt"
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file, not a run folder")
    if a.resume and not last.exists():
        raise FileNotFoundError(f"--resume: {last} does not exist (nothing to resume in {out})")
    held = [p for p in (last, *(out / n for n in RUN_OUTPUTS)) if p.exists()]
    if not a.resume and not a.overwrite and held:
        raise OutputExistsError(f"{out} holds a run ({held[0]}): pass --resume to continue it or --overwrite to start afresh")
    return out, last


RUN_OUTPUTS = ("model.safetensors", "encoder_published.pth", "summary.json", "metrics.csv")


def memory_estimate(cfg: Any, train_sets: dict[str, SourceShards], batch_size: int, frames: int,
                    checkpointing: bool) -> int:
    """A lower bound of the bytes one training step keeps for backward: the batch and the
    backbone's activations (about 12 floats per token and channel per block)."""
    from agrifm.models.config import level_shapes

    total = 0
    for s in train_sets.values():
        chip = max(int(i.get("chip_size") or 0) for i in s.indexes) or 128
        data = batch_size * frames * (len(s.bands) + 1) * chip * chip * 4
        acts = 0
        for i, ((_, d), depth) in enumerate(zip(level_shapes(cfg, frames), cfg.depths)):
            tokens = d * math.ceil(chip / (cfg.patch_size[1] * 2**i)) * math.ceil(chip / (cfg.patch_size[2] * 2**i))
            acts += tokens * cfg.embed_dim * 2**i * 12 * (1 if checkpointing else depth)
        total = max(total, data + batch_size * acts * 4)
    return total


def _check_memory(a: argparse.Namespace, cfg: Any, train_sets: dict[str, SourceShards]) -> None:
    from agrifm.predict.checks import available_memory

    need = memory_estimate(cfg, train_sets, a.batch_size, a.frames, a.activation_checkpointing)
    gpu = torch.cuda.is_available() and a.devices != "0"
    have = torch.cuda.get_device_properties(0).total_memory if gpu else available_memory()
    if need > have:
        raise TooLargeError(f"--batch-size {a.batch_size} with --frames {a.frames} needs at least {need / 2**30:.1f} GiB "
                            f"per step, {have / 2**30:.1f} GiB of {'GPU' if gpu else ''} memory "
                            f"{'exist' if gpu else 'are available'}: use a smaller --batch-size (with --accumulate) "
                            "or fewer --frames, or --activation-checkpointing")


def _inputs(a: argparse.Namespace) -> tuple[dict[str, SourceShards], dict[str, SourceShards], list[str]]:
    """Training and validation shard sets by source, and their (common) class names."""
    train_sets = open_shard_sets(a.data, "--data")
    val_sets = open_shard_sets(a.val_data, "--val-data") if a.val_data else {}
    class_names = next(iter(train_sets.values())).class_names
    for what, sets in (("--data", train_sets), ("--val-data", val_sets)):
        for s in sets.values():
            if s.class_names != class_names:
                raise InputError(f"{what} {s.dirs[0]}: class names {s.class_names} differ from {class_names}")
    unknown = sorted(set(val_sets) - set(train_sets))
    if unknown:
        raise InputError(f"--val-data has source(s) {unknown} that no --data set trains ({sorted(train_sets)})")
    return train_sets, val_sets, class_names


def _trainer(a: argparse.Namespace, out: Path, callbacks: list[Any], *, multi_source: bool, validate: bool) -> Any:
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    from agrifm.pretrain.metrics_log import MetricsLog
    from agrifm.tasks.callbacks import AtomicCheckpointIO

    devices, nodes = cluster_layout(a.devices, a.num_nodes)
    checkpoints = ModelCheckpoint(dirpath=out / "checkpoints", save_last=True, save_top_k=0, every_n_train_steps=a.ckpt_every)
    from agrifm.progress import lightning_progress  # a bar on a terminal, a line per 10 % of the steps in a log

    bar, lines = lightning_progress(not a.quiet, "pretrain", by="step")
    return L.Trainer(
        accelerator="auto", devices=devices, num_nodes=nodes,
        strategy=_strategy(a.strategy, _processes(devices, nodes), multi_source), precision=a.precision,
        max_steps=a.max_steps, accumulate_grad_batches=a.accumulate,
        val_check_interval=a.val_every * a.accumulate if validate else None, check_val_every_n_epoch=None,
        limit_val_batches=1.0 if validate else 0, num_sanity_val_steps=0, logger=MetricsLog(out / "metrics.csv"),
        callbacks=[*callbacks, checkpoints] + ([_progress_bar()] if bar else lines),
        enable_progress_bar=bar, enable_model_summary=False, use_distributed_sampler=False,
        default_root_dir=str(out), plugins=[AtomicCheckpointIO()],  # a killed save keeps the last checkpoint
    )


def run(a: argparse.Namespace, callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """Train and export; returns the summary (also written to RUN_DIR/summary.json).

    ``a`` are parsed command-line options (:func:`parse_args`); ``callbacks`` extra Lightning callbacks.
    """
    import lightning as L
    from torch.utils.data import DataLoader

    from agrifm.pretrain.task import PretrainTask, SourceMixer, StreamState, ValidationBatches
    from agrifm.runtime import rank_world, trainer_precision

    _check_args(a)
    out, last = _run_dir(a)
    train_sets, val_sets, class_names = _inputs(a)
    cfg = model_config(a.model, sources={n: len(s.bands) for n, s in train_sets.items()}, num_classes=len(class_names),
                       frames=a.frames)
    _check_memory(a, cfg, train_sets)
    norm = {n: source_statistics(s, a.stats_samples) for n, s in train_sets.items()}
    sources = {n: describe_source(s, *norm[n][:2]) for n, s in train_sets.items()}
    a.precision = trainer_precision(a.precision)

    L.seed_everything(a.seed, workers=True, verbose=False)
    task = PretrainTask(
        cfg.to_dict(), lr=a.lr, weight_decay=a.weight_decay, warmup_steps=a.warmup_steps, ema_momentum=a.ema_momentum,
        teacher_weight=a.teacher_weight, teacher_warmup=a.max_steps // 5 if a.teacher_warmup is None else a.teacher_warmup,
        ce_weight=a.ce_weight, ce_decay=a.ce_decay, checkpointing=a.activation_checkpointing, log_every=a.log_every,
    )
    train_ds = _datasets(train_sets, sources, a, train=True)
    mixer = SourceMixer(train_ds, a.batch_size, num_workers=a.workers, seed=a.seed)
    val = None
    if val_sets:
        batches = ValidationBatches(_datasets(val_sets, sources, a, train=False), a.batch_size, num_workers=a.workers)
        val = DataLoader(batches, batch_size=None)
    trainer = _trainer(a, out, [StreamState(mixer), *callbacks], multi_source=len(train_sets) > 1, validate=val is not None)
    started = time.time()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        warnings.filterwarnings("ignore", ".*`max_epochs` was not set.*")
        try:
            trainer.fit(task, DataLoader(mixer, batch_size=None), val, ckpt_path=str(last) if a.resume else None)
        finally:
            mixer.close()
        if val is not None and trainer.global_step % a.val_every:  # the final weights are always validated
            trainer.validate(task, val, verbose=False)
    trainer.save_checkpoint(last, weights_only=False)
    summary = _summary(mixer, train_ds)
    summary.update({
        "steps": int(trainer.global_step), "processes": rank_world()[1],
        "global_batch": a.batch_size * rank_world()[1] * a.accumulate, "loss": task.last_loss,
        "val_loss": task.last_val_loss, "seconds": round(time.time() - started, 1),
        "normalisation": {n: v[2] for n, v in norm.items()}, "precision": a.precision, "strategy": a.strategy,
        "data": [str(d) for s in train_sets.values() for d in s.dirs],
    })
    settings = {"frames": a.frames, "ema_momentum": a.ema_momentum, "teacher_weight": a.teacher_weight,
                "ce_weight": a.ce_weight, "ce_decay": a.ce_decay, "samples": summary["samples"]}
    extra = {"pretrain": {k: summary[k] for k in ("steps", "global_batch", "loss", "val_loss", "normalisation", "data")} | settings}
    export_outputs(task.model, out, sources, class_names, a.frames, extra)
    if rank_world()[0] == 0:
        write_text_atomic(out / "summary.json", json.dumps(summary, indent=1), fsync=True)
        if (out / "metrics.csv").is_file():  # loss curves beside metrics.csv
            from agrifm.tasks.plots import curves_from_csv

            curves_from_csv(out / "metrics.csv", out / "loss_curves.png", title=f"agrifm pretrain: {out.name}", x="step")
    return summary


def _report(summary: dict[str, Any], out: str) -> None:
    sk = summary["skipped"]
    print(f"{PROG}: {summary['steps']} steps, {summary['samples']} samples on {summary['processes']} process(es) "
          f"(global batch {summary['global_batch']}) in {summary['seconds']} s; final loss {summary['loss']:.4f}"
          + (f", val_loss {summary['val_loss']:.4f}" if summary["val_loss"] == summary["val_loss"] else ""))
    print(f"  skipped sample reads: {sk['short']} shorter than the frames asked for, {sk['corrupt']} corrupt")
    print(f"  outputs: {out}/model.safetensors, {out}/encoder_published.pth, {out}/metrics.csv")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    return _parser().parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``agrifm pretrain``."""
    a = parse_args(argv)
    with user_input():  # the dispatcher prints it (agrifm.cli.report_error)
        summary = run(a)
    from agrifm.runtime import rank_world

    if rank_world()[0] == 0:
        _report(summary, a.out)
    _shutdown_process_group()
    return 0


def _shutdown_process_group() -> None:
    """Leave together: a rank exiting while gloo still talks to it aborts the other (SIGABRT)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    raise SystemExit(main())
