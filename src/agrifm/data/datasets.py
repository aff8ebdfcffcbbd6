"""Torch datasets over H5 samples and tables, yielding model-ready dicts.

Every item is ``{"inputs": {src: FloatTensor (T, C, H, W)}, "label": LongTensor (H, W) or (),
"dates": {src: LongTensor (T,) days since 1970-01-01, int64 min where the file has no dates},
"nodata": {src: BoolTensor (H, W)}, "id": str}``; :func:`collate` stacks items into batches
with a leading ``B`` axis.
Inputs are gap-filled and normalised with each source's statistics (agrifm.data.timeseries).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from agrifm.data.h5 import PathLike, SplitLike, read_h5_sample, sample_paths
from agrifm.data.tables import OBSERVED, SeriesTable
from agrifm.data.timeseries import days_since_epoch, fixed_frames, prepare_source, sample_frames
from agrifm.sensors import Source, get_source
from agrifm.errors import InputError

__all__ = ["H5SampleDataset", "TableDataset", "collate"]

Item = dict[str, Any]


class _FrameChooser:
    """Frame indices per item: random ``frames`` of a series when training, evenly spaced otherwise.

    The random generator is re-seeded from ``(seed, torch.initial_seed())``, which differs per
    DataLoader worker and epoch, so workers do not draw the same frames and runs repeat under
    ``torch.manual_seed``.
    """

    def __init__(self, frames: int | None, train: bool, seed: int) -> None:
        self.frames, self.train, self.seed = frames, train, seed
        self._rng: np.random.Generator | None = None
        self._key: int | None = None

    @property
    def rng(self) -> np.random.Generator:
        key = torch.initial_seed()
        if self._rng is None or key != self._key:
            self._rng, self._key = np.random.default_rng([self.seed, key % 2**63]), key
        return self._rng

    def __call__(self, t: int) -> np.ndarray | None:
        if self.frames is None:
            return None
        if self.train and t > self.frames:
            return sample_frames(t, self.frames, self.rng)
        return fixed_frames(t, self.frames)


def _resolve_sources(sources: Mapping[str, Source] | Sequence[str]) -> dict[str, Source]:
    """``{key: Source}``; plain names are looked up in the sensor registry."""
    if isinstance(sources, Mapping):
        return dict(sources)
    return {name: get_source(name) for name in sources}


def held_to(series: np.ndarray, dates: np.ndarray, frames: int) -> tuple[np.ndarray, np.ndarray]:
    """``series`` (T, ...) and its ``dates`` (T,) continued to ``frames`` by repeating the last
    frame and date (the scene engine holds a cut season the same way, ``predict.sources``)."""
    held = np.minimum(np.arange(frames), len(series) - 1)
    return series[held], dates[held]


def _dates_tensor(dates: np.ndarray, frames: np.ndarray | None) -> torch.Tensor:
    d = dates if frames is None else dates[frames]
    return torch.from_numpy(days_since_epoch(d))


class H5SampleDataset(Dataset):
    """Dense samples in the published AgriFM H5 layout (see :mod:`agrifm.data.h5`).

    ``sources`` maps H5 dataset keys to :class:`~agrifm.sensors.Source` (or lists registered
    names); channels are reordered to each source's band order by the stored band names.
    Label values in ``ignore_values`` become -1 (none by default; PASTIS: ``[19]``, its void). ``frames`` fixes the
    number of frames per source (see :class:`_FrameChooser`); None keeps all.
    """

    def __init__(
        self,
        root: PathLike,
        split: SplitLike = None,
        sources: Mapping[str, Source] | Sequence[str] = ("S2",),
        *,
        label_key: str = "label",
        ignore_values: Sequence[int] = (),
        frames: int | None = None,
        train: bool = False,
        seed: int = 0,
    ) -> None:
        self.root = Path(root)
        self.files = sample_paths(self.root, split)
        self.sources = _resolve_sources(sources)
        self.label_key = label_key
        self.ignore_values = np.asarray(ignore_values, dtype=np.int64)
        self.choose = _FrameChooser(frames, train, seed)
        classes = self.root / "classes.json"
        self.class_names: list[str] | None = json.loads(classes.read_text()) if classes.is_file() else None

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> Item:
        sample = read_h5_sample(self.files[index], list(self.sources), label_key=self.label_key,
                                bands={k: s.bands for k, s in self.sources.items()})
        item: Item = {"inputs": {}, "dates": {}, "nodata": {}, "id": sample.name}
        for key, source in self.sources.items():
            x, dates = sample.inputs[key], sample.dates[key]
            frames = self.choose(x.shape[0])
            item["inputs"][key], item["nodata"][key] = prepare_source(
                x, None, source, frames=frames, dates=None if np.isnat(dates).any() else dates)
            item["dates"][key] = _dates_tensor(dates, frames)
        label = np.where(np.isin(sample.label, self.ignore_values), -1, sample.label)
        item["label"] = torch.from_numpy(label)
        return item


class TableDataset(Dataset):
    """Point time series of a :class:`SeriesTable` as ``(T, C, 1, 1)`` inputs with a scalar label.

    Columns are matched to ``source.bands`` by name. Augmentations, applied only when ``train``:
    ``noise_std`` adds Gaussian noise to the normalised inputs; ``drop_frames`` blanks frames
    before gap filling (as clouds would) until about that share of each series is missing, so a
    model trained on clean series learns from interpolated stretches like those of cloudy scenes.
    With ``frames=None`` items keep their own length, so batching needs equal-length series.
    ``hold``: series shorter than this many frames are continued to it by repeating their last
    frame and date, as the baselines see a cut season: models whose temporal
    fusion concatenates frames (``feature_fusion="cat"``) need every frame in its place, where
    ``frames`` would spread a short series over the whole grid.
    """

    def __init__(
        self,
        table: SeriesTable,
        source: Source,
        indices: Sequence[int] | np.ndarray | None = None,
        *,
        frames: int | None = None,
        train: bool = False,
        noise_std: float = 0.0,
        drop_frames: float = 0.0,
        seed: int = 0,
        hold: int | None = None,
    ) -> None:
        if not 0.0 <= drop_frames < 1.0:
            raise InputError(f"drop_frames {drop_frames}: expected a probability in [0, 1)")
        missing = [b for b in source.bands if b not in table.bands]
        if missing:
            raise InputError(f"source {source.name!r}: band(s) {missing} not in table {table.path} "
                             f"(bands {list(table.bands)})")
        self.table, self.source = table, source
        self.columns = [table.bands.index(b) for b in source.bands]
        # Frame dropout counts observations in the value bands only; the derived 0/1 band is set to 0.
        self._observed = source.bands.index(OBSERVED) if OBSERVED in source.bands else None
        self._values = slice(None) if self._observed is None else [i for i in range(source.num_bands) if i != self._observed]
        self.indices = np.arange(len(table)) if indices is None else np.asarray(indices)
        self.noise_std = noise_std if train else 0.0
        self.drop_frames = drop_frames if train else 0.0
        self.choose = _FrameChooser(frames, train, seed)
        self.hold = hold

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Item:
        i = int(self.indices[index])
        n = int(self.table.lengths[i])
        dates = self.table.dates[i, :n]
        series = self.table.values[i, :n][:, self.columns, None, None]  # (T, C) -> (T, C, 1, 1)
        if self.drop_frames > 0:
            series = self._blank_frames(series)
        if self.hold is not None and n < self.hold:
            series, dates, n = *held_to(series, dates, self.hold), self.hold
        frames = self.choose(n)
        x, nodata = prepare_source(series, None, self.source, frames=frames, dates=dates)
        if self.noise_std > 0:
            x = x + self.noise_std * torch.from_numpy(self.choose.rng.standard_normal(x.shape, dtype=np.float32))
        name = self.source.name
        return {"inputs": {name: x}, "label": torch.tensor(self.table.labels[i]),
                "dates": {name: _dates_tensor(dates, frames)}, "nodata": {name: nodata},
                "id": str(self.table.sample_ids[i])}

    def _blank_frames(self, series: np.ndarray) -> np.ndarray:
        """A copy with observed frames blanked (NaN) until about ``drop_frames`` of the series is
        missing: a clean (composited, smoothed) series loses that share, one already that cloudy
        loses nothing. A band keeps at least two observations (interpolation needs them)."""
        finite = np.isfinite(series[:, self._values])
        seen = finite.any(axis=(1, 2, 3))
        observed = seen.mean()
        p = (self.drop_frames - (1.0 - observed)) / max(observed, 1e-9)
        if p <= 0:
            return series
        drop = seen & (self.choose.rng.random(len(series)) < p)
        if not drop.any() or (finite[~drop].sum(axis=0) < np.minimum(2, finite.sum(axis=0))).any():
            return series
        series = series.copy()
        series[drop] = np.nan
        if self._observed is not None:  # a blanked frame is a gap: never interpolate the mask
            series[drop, self._observed] = 0.0
        return series


def collate(batch: Sequence[Item]) -> Item:
    """Stack items (nested dicts of tensors, strings) along a new batch axis.

    Tensors that differ in shape are an error naming the key and the shapes (e.g. sources
    with different frame counts: set ``frames``).
    """
    return _collate(batch, "batch")


def _collate(values: Sequence[Any], key: str) -> Any:
    first = values[0]
    if isinstance(first, Mapping):
        return {k: _collate([v[k] for v in values], f"{key}.{k}") for k in first}
    if isinstance(first, torch.Tensor):
        shapes = {tuple(v.shape) for v in values}
        if len(shapes) > 1:
            raise InputError(f"collate: {key!r} has different shapes in one batch {sorted(shapes)}")
        return torch.stack(list(values))
    return list(values)
