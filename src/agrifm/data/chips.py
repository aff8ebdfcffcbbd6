"""Chips of GeoTIFF stacks as model-ready items: a window of the reference stack, the same
footprint of every other source at its own resolution, fixed shapes for batching."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from agrifm.data.datasets import _dates_tensor, _FrameChooser
from agrifm.data.timeseries import prepare_source
from agrifm.sensors import Source

__all__ = ["ChipSpec", "ChipReader", "ChipDataset"]


@dataclass
class ChipSpec:
    """One chip: a window of the reference grid, its labels, and (points) the reference block read already."""

    window: Any  # rasterio Window
    label: np.ndarray  # (H, W) int64, -1 = unlabelled
    name: str
    ref: Any = None  # StackArray or None


@dataclass
class ChipReader:
    """Reads a chip of every source: the reference over the window, the others over its footprint
    at their native resolution (``align.paired_windows``), cropped / NaN-padded to fixed shapes
    (footprint edges rounded to a coarse grid may differ by a pixel between chips)."""

    stacks: dict[str, Any]  # key -> Stack, reference first
    shapes: dict[str, tuple[int, int]]
    until: str | None = None
    resampling: str = "average"

    def read(self, spec: ChipSpec) -> dict[str, Any]:
        from agrifm.data.align import paired_windows

        keys = list(self.stacks)
        ref = spec.ref if spec.ref is not None else self.stacks[keys[0]].read(spec.window, until=self.until)
        others = {k: self.stacks[k] for k in keys[1:]}
        out = {keys[0]: ref}
        if others:
            out.update(paired_windows(self.stacks[keys[0]], spec.window, others, until=self.until,
                                      resampling=self.resampling))  # type: ignore[arg-type]
        return {k: _fit_shape(a, self.shapes.get(k)) for k, a in out.items()}


def _fit_shape(a: Any, shape: tuple[int, int] | None) -> Any:
    """Crop or NaN-pad (bottom/right) a StackArray to ``shape``."""
    if shape is None or a.data.shape[-2:] == tuple(shape):
        return a
    h, w = shape
    data = np.full((*a.data.shape[:2], h, w), np.nan, np.float32)
    valid = np.zeros((a.valid.shape[0], h, w), bool)
    hh, ww = min(h, a.data.shape[2]), min(w, a.data.shape[3])
    data[..., :hh, :ww] = a.data[..., :hh, :ww]
    valid[:, :hh, :ww] = a.valid[:, :hh, :ww]
    return replace(a, data=data, valid=valid)


class ChipDataset(Dataset):
    """Model-ready items (the datasets' dict format) from chips of one or several stacks."""

    def __init__(self, reader: ChipReader, chips: Sequence[ChipSpec], sources: Mapping[str, Source], *,
                 frames: int | None = None, train: bool = False, seed: int = 0) -> None:
        self.reader, self.chips, self.sources = reader, list(chips), dict(sources)
        self.choose = _FrameChooser(frames, train, seed)

    def __len__(self) -> int:
        return len(self.chips)

    def __getitem__(self, index: int) -> dict[str, Any]:
        spec = self.chips[index]
        arrays = self.reader.read(spec)
        item: dict[str, Any] = {"inputs": {}, "dates": {}, "nodata": {}, "label": torch.from_numpy(spec.label),
                                "id": spec.name}
        for key, source in self.sources.items():
            a = arrays[key]
            frames = self.choose(a.data.shape[0])
            item["inputs"][key], item["nodata"][key] = prepare_source(a.data, a.valid, source, frames=frames,
                                                                      dates=a.dates)
            item["dates"][key] = _dates_tensor(a.dates, frames)
        return item
