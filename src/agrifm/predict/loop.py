"""The mapping loop: batches of windows read in a worker thread while the model runs, dense or
per-pixel predictors, blending into blocks and saving each block once complete."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
import torch.nn.functional as F

from agrifm.data.timeseries import days_since_epoch
from agrifm.errors import InputError
from agrifm.predict.blocks import BlockStore
from agrifm.predict.cog import encode_layers
from agrifm.predict.sources import Predictor, Reader
from agrifm.predict.tiling import Accumulator, Block, Tile, TileGrid, blend_weights, ring

__all__ = ["Dated", "predictor_device", "run_blocks"]

T = TypeVar("T")


def _prefetch(items: Iterator[T]) -> Iterator[T]:
    """Produce the next item in a worker thread while the caller consumes this one (I/O vs model)."""
    end = object()
    with ThreadPoolExecutor(1, thread_name_prefix="agrifm-read") as pool:
        fut = pool.submit(next, items, end)
        while (item := fut.result()) is not end:
            fut = pool.submit(next, items, end)
            yield item  # type: ignore[misc]


def _as_probs(p: Any, shape: tuple[int, ...], what: str) -> torch.Tensor:
    if not isinstance(p, torch.Tensor) or tuple(p.shape[:len(shape)]) != shape:
        got = tuple(p.shape) if isinstance(p, torch.Tensor) else type(p).__name__
        raise InputError(f"{what} predictor returned {got}, expected probabilities of shape {shape}...")
    return p.detach().float().cpu()


def _run_dense(predictor: Predictor, inputs: Mapping[str, torch.Tensor], keep: np.ndarray,
               num_classes: int, window: int, device: torch.device) -> np.ndarray:
    """Probabilities ``(n, K, window, window)`` of the windows in ``keep``."""
    idx = torch.from_numpy(keep)
    x = {k: v[idx].to(device) for k, v in inputs.items()}
    with torch.inference_mode():
        p = _as_probs(predictor(x), (len(keep), num_classes), "dense")
    if p.ndim != 4:
        raise InputError(f"dense predictor returned shape {tuple(p.shape)}, expected (B, K, h, w)")
    if p.shape[-2:] != (window, window):
        p = F.interpolate(p, size=(window, window), mode="bilinear", align_corners=False, antialias=True)
    return p.numpy()


def _pixels(x: torch.Tensor, window: int) -> torch.Tensor:
    """``(B, T, C, h, w)`` -> one series per output pixel ``(B * window * window, T, C)`` (nearest)."""
    b, t, c, h, w = x.shape
    if (h, w) != (window, window):
        x = F.interpolate(x.flatten(1, 2), size=(window, window), mode="nearest").unflatten(1, (t, c))
    return x.permute(0, 3, 4, 1, 2).reshape(-1, t, c)


def _run_point(predictor: Predictor, inputs: Mapping[str, torch.Tensor], keep: np.ndarray, valid: torch.Tensor,
               num_classes: int, window: int, device: torch.device, chunk: int) -> np.ndarray:
    """Per-pixel probabilities of the valid pixels of the windows in ``keep``, ``(n, K, window, window)``."""
    idx = torch.from_numpy(keep)
    series = {k: _pixels(v[idx], window) for k, v in inputs.items()}
    sel = valid[idx].reshape(-1).nonzero().squeeze(1)
    out = torch.zeros(len(keep) * window * window, num_classes)
    for s in range(0, len(sel), chunk):
        ids = sel[s:s + chunk]
        x = {k: v[ids][..., None, None].to(device) for k, v in series.items()}
        with torch.inference_mode():
            out[ids] = _as_probs(predictor(x), (len(ids), num_classes), "point")[:, :num_classes]
    return out.reshape(len(keep), window, window, num_classes).permute(0, 3, 1, 2).numpy()


@dataclass
class _Job:
    block: Block
    tiles: list[Tile]
    last: bool  # last batch of its block


def _jobs(tg: TileGrid, blocks: Iterable[Block], batch_size: int) -> Iterator[_Job]:
    for block in blocks:
        tiles = tg.tiles(block)
        starts = range(0, len(tiles), batch_size) if tiles else [0]
        for s in starts:
            yield _Job(block, tiles[s:s + batch_size], s + batch_size >= len(tiles))


def _load(readers: Sequence[Reader], job: _Job) -> tuple[_Job, dict[str, torch.Tensor], torch.Tensor]:
    if not job.tiles:
        return job, {}, torch.zeros(0, 0, 0, dtype=torch.bool)
    inputs, valid = {}, None
    for r in readers:
        inputs[r.name], v = r.load(job.tiles)
        valid = v if valid is None else valid & v  # a pixel a source never observed is nodata
    assert valid is not None
    return job, inputs, valid


class Dated:
    """A predictor that also takes the frames' acquisition dates (date-encoding models)."""

    def __init__(self, inner: Predictor, dates: Mapping[str, np.ndarray]) -> None:
        self.inner = inner
        self.dates = {k: torch.from_numpy(days_since_epoch(v)) for k, v in dates.items()}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def __call__(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.inner(inputs, dates={k: self.dates[k] for k in inputs})


def predictor_device(predictor: Predictor, device: str | torch.device | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    d = getattr(predictor, "device", None)
    return torch.device(d) if d is not None else torch.device("cpu")


def _predict(predictor: Predictor, inputs: Mapping[str, torch.Tensor], valid: torch.Tensor, *, window: int,
             device: torch.device, point_batch: int) -> list[np.ndarray | None]:
    """Per window: probabilities ``(K, window, window)``, or None where no pixel is valid (model skipped)."""
    out: list[np.ndarray | None] = [None] * len(valid)
    keep = np.flatnonzero(valid.flatten(1).any(1).numpy()) if len(valid) else np.zeros(0, np.int64)
    if len(keep):
        k = len(predictor.class_names)
        if predictor.kind == "point":
            probs = _run_point(predictor, inputs, keep, valid, k, window, device, point_batch)
        else:
            probs = _run_dense(predictor, inputs, keep, k, window, device)
        for j, i in enumerate(keep):
            out[i] = probs[j]
    return out


def _save_block(store: BlockStore, tg: TileGrid, block: Block, acc: Accumulator, probabilities: bool) -> None:
    """Encode the block's final core; keep the rest (shared with neighbours) as partial sums."""
    core = tg.core(block)
    store.save(block, core, encode_layers(*acc.result(core), probabilities), [acc.partial(r) for r in ring(acc.rect, core)])


def run_blocks(predictor: Predictor, readers: Sequence[Reader], tg: TileGrid, blocks: Sequence[Block],
                store: BlockStore, *, batch_size: int, probabilities: bool, device: torch.device,
                point_batch: int, progress: bool) -> int:
    """Predict ``blocks``, saving each as soon as it is complete; returns the windows run.

    Reads for the next batch run in a worker thread while the model runs on this one.
    """
    from agrifm.progress import progress_bar

    weights = blend_weights(tg.window, tg.overlap)
    total = sum(len(tg.tiles(b)) for b in blocks)
    acc: Accumulator | None = None
    with progress_bar(total, "predict", "win", enabled=progress) as bar:
        for job, inputs, valid in _prefetch(_load(readers, j) for j in _jobs(tg, blocks, batch_size)):
            acc = acc or Accumulator(tg.footprint(job.block), len(predictor.class_names), weights)
            probs = _predict(predictor, inputs, valid, window=tg.window, device=device, point_batch=point_batch)
            for tile, p, v in zip(job.tiles, probs, valid.numpy()):
                acc.add(tile, p, v)
            bar.update(len(job.tiles))
            if job.last:
                _save_block(store, tg, job.block, acc, probabilities)
                acc = None
    return total

