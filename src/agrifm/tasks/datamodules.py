"""LightningDataModules for the three kinds of training data, usable from YAML configs.

* :class:`H5DataModule`: the published H5 sample layout (``h5_samples/`` + ``data_lists/`` or ``data_list/``).
* :class:`TableDataModule`: labelled pixel time series in a long table, split by location.
* :class:`ChipDataModule`: GeoTIFF stacks (one or several sources at their native resolution
  over one footprint) cut into chips, labelled by a label raster or by points/polygons
  (sparse labels), split spatially.

Each module owns its *sources*: band lists and normalisation statistics, taken from the sensor
registry, from the YAML (``{bands: [...], mean: [...], std: [...]}``), or computed on the
training split (``compute_stats``). ``source_meta`` is what the CLI hands to the task, so the
statistics used in training travel into the exported checkpoint.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from functools import cached_property
from pathlib import Path
from typing import Any, Union

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader, Dataset

from agrifm.data.chips import ChipDataset, ChipReader, ChipSpec
from agrifm.data.datasets import H5SampleDataset, TableDataset, collate
from agrifm.data.splits import block_groups, split_parts
from agrifm.data.stats import BandStats, band_stats
from agrifm.sensors import Source, get_source, list_sources
from agrifm.errors import InputError

__all__ = ["AgriFMDataModule", "H5DataModule", "TableDataModule", "ChipDataModule", "ChipDataset",
           "source_from_spec", "spatial_split"]

SourceSpec = Union[str, Mapping[str, Any], None]
SourcesArg = Union[Sequence[str], Mapping[str, SourceSpec]]
SPLITS = ("train", "val", "test")
_STAGE_SPLITS = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}


# --------------------------------------------------------------------------- sources


def source_from_spec(key: str, spec: SourceSpec | Source) -> tuple[Source, bool]:
    """A source from a registered name (default: the key itself), a :class:`Source`, or a dict of
    Source fields (``bands`` required; ``name`` defaults to the key). Returns ``(source,
    lacks_stats)``: a dict without ``mean``/``std`` gets placeholders, to be computed."""
    if isinstance(spec, Source):
        return spec, False
    if spec is None or isinstance(spec, str):
        return get_source(spec or key), False
    d = dict(spec)
    if "bands" not in d:
        raise InputError(f"source {key!r}: a source description needs 'bands' (or give the name of a "
                         f"registered source: {list_sources()})")
    d.setdefault("name", key)
    d.setdefault("resolution_m", 0.0)
    d.setdefault("units", "")
    lacks = d.get("mean") is None or d.get("std") is None
    if lacks:
        d["mean"], d["std"] = [0.0] * len(d["bands"]), [1.0] * len(d["bands"])
    try:
        return Source.from_dict(d), lacks
    except TypeError as e:
        raise InputError(f"source {key!r}: {e}") from None


def _spec_items(sources: SourcesArg) -> list[tuple[str, SourceSpec]]:
    if isinstance(sources, str):
        return [(sources, None)]
    if isinstance(sources, Mapping):
        return list(sources.items())
    return [(name, None) for name in sources]


def _checked_stats(key: str, stats: BandStats) -> tuple[list[float], list[float]]:
    """(mean, std) with constant bands' std floored, so normalisation cannot divide by zero."""
    std = stats.std.copy()
    flat = std <= 1e-6 * np.maximum(1.0, np.abs(stats.mean))
    if flat.any():
        rank_zero_warn(f"source {key!r}: band(s) {[b for b, f in zip(stats.bands, flat) if f]} are constant "
                       "on the training split; their std is set to 1")
        std[flat] = 1.0
    return stats.mean.tolist(), std.tolist()


# --------------------------------------------------------------------------- base


class AgriFMDataModule(L.LightningDataModule):
    """Sources + statistics, frame count and loaders shared by every datamodule.

    Subclasses implement ``_dataset(split)`` and ``_train_arrays(key)`` (or ``_train_stats``).

    Args:
        sources: registered names, or ``{key: name | {bands, mean, std, ...}}``; the first
            source is the reference (labels and outputs are on its grid).
        frames: frames per source and sample (random when training, evenly spaced otherwise);
            None keeps all.
        compute_stats: True (every source) or a list of source keys whose statistics are computed
            on the training split; sources described without mean/std are always computed.
    """

    def __init__(self, sources: SourcesArg, *, frames: int | None = None, batch_size: int = 4,
                 num_workers: int = 0, compute_stats: bool | list[str] = False, seed: int = 0) -> None:
        super().__init__()
        if batch_size < 1 or num_workers < 0 or (frames is not None and frames < 1):
            raise InputError(f"data: batch_size must be >= 1 (got {batch_size}), num_workers >= 0 (got {num_workers}) "
                             f"and frames >= 1 or null (got {frames})")
        self.source_specs = sources
        self.frames = frames
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.compute_stats = compute_stats
        self.seed = seed
        self._datasets: dict[str, Dataset | None] = {}

    # -- sources
    @cached_property
    def base_sources(self) -> dict[str, tuple[Source, bool]]:
        """Sources as described (bands known), before any statistics are computed."""
        items = _spec_items(self.source_specs)
        if not items:
            raise InputError(f"{type(self).__name__}: no sources given")
        return {key: source_from_spec(key, spec) for key, spec in items}

    @cached_property
    def sources(self) -> dict[str, Source]:
        """``{key: Source}`` with the statistics used for normalisation."""
        asked = self.compute_stats if isinstance(self.compute_stats, list) else []
        unknown = sorted(set(asked) - set(self.base_sources))
        if unknown:
            raise InputError(f"compute_stats names unknown source(s) {unknown}; sources: {list(self.base_sources)}")
        out = {}
        for key, (src, lacks) in self.base_sources.items():
            wanted = self.compute_stats is True or (isinstance(self.compute_stats, list) and key in self.compute_stats)
            if lacks or wanted:
                mean, std = _checked_stats(key, self._train_stats(key, src))
                src = src.with_stats(mean, std)
                rank_zero_info(f"source {key!r}: statistics from the training split: "
                               f"mean {np.round(mean, 4).tolist()}, std {np.round(std, 4).tolist()}")
            out[key] = src
        return out

    @property
    def source_meta(self) -> dict[str, dict[str, Any]]:
        """Plain-dict sources for the task (they end up in the exported checkpoint)."""
        return {k: s.to_dict() for k, s in self.sources.items()}

    @property
    def reference(self) -> str:
        return next(iter(self.base_sources))

    def _train_stats(self, key: str, source: Source) -> BandStats:
        return band_stats(self._train_arrays(key), bands=list(source.bands), axis=1)

    def _train_arrays(self, key: str) -> Any:
        raise NotImplementedError(f"{type(self).__name__} cannot compute statistics of source {key!r}")

    # -- datasets and loaders
    def _dataset(self, split: str) -> Dataset | None:
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        for split in _STAGE_SPLITS.get(stage or "", SPLITS):
            self.dataset(split)

    def dataset(self, split: str) -> Dataset | None:
        """The dataset of ``split`` (built once; None when the split is not configured)."""
        if split not in self._datasets:
            self._datasets[split] = self._dataset(split)
        return self._datasets[split]

    def _loader(self, split: str, shuffle: bool = False) -> DataLoader | list:
        ds = self.dataset(split)
        if ds is None or len(ds) == 0:  # type: ignore[arg-type]
            if split == "val":
                rank_zero_warn(f"{type(self).__name__}: no validation samples; validation is skipped")
                return []
            raise InputError(f"{type(self).__name__}: the {split!r} split has no samples")
        return DataLoader(ds, batch_size=self.batch_size, shuffle=shuffle, num_workers=self.num_workers,
                          collate_fn=collate, persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)  # type: ignore[return-value]

    def val_dataloader(self) -> DataLoader | list:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")  # type: ignore[return-value]


# --------------------------------------------------------------------------- H5


class H5DataModule(AgriFMDataModule):
    """Samples in the published H5 layout; splits from ``data_lists/<name>.txt`` (or ``data_list/``).

    ``sources`` are H5 dataset keys (e.g. ``[S2]`` or ``{S2: S2, S1A: {bands: [VV, VH, VV/VH]}}``);
    label values in ``ignore_values`` become -1 (none by default; PASTIS: ``[19]``). For field boundaries read the
    instance ids: ``label_key: instance`` with ``ignore_values: []``.
    """

    def __init__(self, root: str, sources: SourcesArg = ("S2",), *, label_key: str = "label",
                 ignore_values: Sequence[int] = (), frames: int | None = None, batch_size: int = 4,
                 num_workers: int = 0, train_split: str = "train", val_split: str | None = "val",
                 test_split: str | None = "test", compute_stats: bool | list[str] = False, seed: int = 0) -> None:
        super().__init__(sources, frames=frames, batch_size=batch_size, num_workers=num_workers,
                         compute_stats=compute_stats, seed=seed)
        self.root = Path(root)
        self.label_key = label_key
        self.ignore_values = list(ignore_values)
        self.split_names = {"train": train_split, "val": val_split, "test": test_split}

    def _train_stats(self, key: str, source: Source) -> BandStats:
        return band_stats(self.root, source=key, bands=list(source.bands), split=self.split_names["train"])

    def _dataset(self, split: str) -> Dataset | None:
        name = self.split_names[split]
        if name is None:
            return None
        return H5SampleDataset(self.root, name, self.sources, label_key=self.label_key,
                               ignore_values=self.ignore_values, frames=self.frames, train=split == "train",
                               seed=self.seed)


# --------------------------------------------------------------------------- tables


class TableDataModule(AgriFMDataModule):
    """Pixel time series of a long table (``agrifm.data.tables``) for point classification.

    Validation/test parts are drawn by location groups (``tables.grouped_split``), so no place
    is on two sides; ``test_path`` gives a separate test table instead. Items are
    ``(T, C, 1, 1)`` inputs with a scalar label (use ``ClassificationTask``).
    """

    def __init__(self, path: str, source: SourceSpec = "MOD13Q1", *, class_names: Sequence[str] | None = None,
                 val_fraction: float = 0.2, test_fraction: float = 0.0, test_path: str | None = None,
                 frames: int | None = None, batch_size: int = 32, num_workers: int = 0, noise_std: float = 0.0,
                 drop_frames: float = 0.0, compute_stats: bool | list[str] = False, seed: int = 0) -> None:
        key = source if isinstance(source, str) else str((source or {}).get("name", "table"))
        super().__init__({key: source}, frames=frames, batch_size=batch_size, num_workers=num_workers,
                         compute_stats=compute_stats, seed=seed)
        self.path, self.test_path, self.noise_std, self.drop_frames = Path(path), test_path, noise_std, drop_frames
        self.given_class_names = list(class_names) if class_names is not None else None
        self.fractions = {"train": 1.0 - val_fraction - test_fraction, "val": val_fraction,
                          "test": 0.0 if test_path else test_fraction}
        if min(self.fractions.values()) < 0:
            raise InputError(f"val_fraction {val_fraction} + test_fraction {test_fraction} exceed 1")

    @cached_property
    def table(self) -> Any:
        return _read_for(self.path, self.base_sources[self.reference][0], self.given_class_names)

    @property
    def class_names(self) -> list[str]:
        return list(self.table.class_names)

    @cached_property
    def parts(self) -> dict[str, np.ndarray]:
        from agrifm.data.tables import grouped_split

        names = [k for k, f in self.fractions.items() if f > 0]
        split = grouped_split(self.table, [self.fractions[k] for k in names], seed=self.seed)
        out = {k: np.zeros(0, np.int64) for k in SPLITS}
        out.update(zip(names, split))
        rank_zero_info(f"{self.path.name}: {', '.join(f'{k} {len(v)}' for k, v in out.items())} samples "
                       "(grouped by location)")
        return out

    def _train_stats(self, key: str, source: Source) -> BandStats:
        from agrifm.data.tables import OBSERVED, OBSERVED_STATS

        stats = band_stats(self.table.subset(self.parts["train"]), bands=list(source.bands))
        if OBSERVED in source.bands:  # the 0/1 band is given as it is (as PointFitConfig.observed_channel)
            i = source.bands.index(OBSERVED)
            stats.mean[i], stats.std[i] = OBSERVED_STATS
        return stats

    def _dataset(self, split: str) -> Dataset | None:
        src = self.sources[self.reference]
        if split == "test" and self.test_path:
            test = _read_for(self.test_path, src, self.class_names)
            return TableDataset(test, src, frames=self.frames, seed=self.seed)
        return TableDataset(self.table, src, self.parts[split], frames=self.frames, train=split == "train",
                            noise_std=self.noise_std, drop_frames=self.drop_frames, seed=self.seed)


def _read_for(path: Any, source: Source, class_names: list[str] | None) -> Any:
    """The table's columns of ``source``; the derived observation band (a model fitted with
    ``observed_channel``) is computed from the table's gaps, not read."""
    from agrifm.data.tables import OBSERVED, read_table, stored_bands

    table = read_table(path, bands=stored_bands(source.bands), class_names=class_names)
    return table.with_observed() if OBSERVED in source.bands else table


# --------------------------------------------------------------------------- chips


def spatial_split(rows: np.ndarray, cols: np.ndarray, block: int, fractions: Sequence[float],
                  seed: int = 0) -> np.ndarray:
    """Part index per item: items are grouped in ``block`` x ``block`` px cells, which are dealt
    to the parts (:func:`agrifm.data.splits.split_parts`), so neighbouring chips/points
    (spatially autocorrelated) stay on one side."""
    return split_parts(block_groups(rows, cols, block), fractions, seed=seed)


class ChipDataModule(AgriFMDataModule):
    """Chips of GeoTIFF stacks labelled by a label raster or by points/polygons, split spatially.

    Args:
        stacks: ``{source key: folder | file | [files]}`` (``data.stack.open_stack``); the first
            source (in ``sources`` order, else ``stacks`` order) is the reference grid.
        sources: as in :class:`AgriFMDataModule`; default: the stack keys as registered names.
        band_map: per source, bands to substitute (``{S2: {B8A: B08}}``).
        labels: label raster on the reference grid (band ``label_band``); values in
            ``ignore_values`` or nodata are unlabelled; ``label_map`` maps raw values to class ids
            (unmapped values become unlabelled).
        points: labelled points/polygons (``.csv``/``.geojson``/``.gpkg``); chips are centred on
            them and only their pixels are labelled (sparse labels). ``class_names`` maps label
            strings to ids (default: sorted distinct labels).
        chip_size, stride: chip side and step in reference pixels (tiles beyond the raster edge
            are NaN-padded, i.e. nodata); ``group_radius`` groups nearby points into one chip.
        split_block: side (reference px) of the cells that go to one split as a whole.
        val_fraction, test_fraction: shares of chips (raster) or samples (points).
        until: last date read (early-season models).
    """

    def __init__(self, stacks: Mapping[str, str | list[str]], sources: SourcesArg | None = None, *,
                 band_map: Mapping[str, Mapping[str, str]] | None = None, labels: str | None = None,
                 label_band: int = 1, label_map: Mapping[int, int] | None = None, ignore_values: Sequence[int] = (),
                 points: str | None = None, class_names: Sequence[str] | None = None, chip_size: int = 64,
                 stride: int | None = None, group_radius: int | None = None, split_block: int = 256,
                 val_fraction: float = 0.2, test_fraction: float = 0.0, until: str | None = None,
                 resampling: str = "average", frames: int | None = None, batch_size: int = 4,
                 num_workers: int = 0, compute_stats: bool | list[str] = False, seed: int = 0) -> None:
        super().__init__(sources if sources is not None else list(stacks), frames=frames, batch_size=batch_size,
                         num_workers=num_workers, compute_stats=compute_stats, seed=seed)
        if (labels is None) == (points is None):
            raise InputError("ChipDataModule needs exactly one of labels= (a label raster) or points= (samples)")
        missing = [k for k in self.base_sources if k not in stacks]
        if missing:
            raise InputError(f"sources {missing} have no entry in stacks= (stacks: {list(stacks)})")
        self.stack_paths, self.band_map = dict(stacks), {k: dict(v) for k, v in (band_map or {}).items()}
        self.labels, self.label_band, self.ignore_values = labels, label_band, list(ignore_values)
        self.label_map = {int(k): int(v) for k, v in (label_map or {}).items()} or None
        self.points, self.given_class_names = points, list(class_names) if class_names is not None else None
        self.chip_size, self.stride, self.group_radius = chip_size, stride or chip_size, group_radius
        self.split_block, self.until, self.resampling = split_block, until, resampling
        self.fractions = {"train": 1.0 - val_fraction - test_fraction, "val": val_fraction, "test": test_fraction}
        if min(self.fractions.values()) < 0:
            raise InputError(f"val_fraction {val_fraction} + test_fraction {test_fraction} exceed 1")

    # -- stacks and chips
    @cached_property
    def stacks(self) -> dict[str, Any]:
        from agrifm.data.stack import open_stack

        return {key: open_stack(self.stack_paths[key], bands=list(src.bands), band_map=self.band_map.get(key))
                for key, (src, _) in self.base_sources.items()}

    @cached_property
    def chips(self) -> dict[str, list[ChipSpec]]:
        chips = self._point_chips() if self.points else self._raster_chips()
        rank_zero_info(f"chips of {self.chip_size} px: " + ", ".join(f"{k} {len(v)}" for k, v in chips.items()))
        return chips

    @cached_property
    def reader(self) -> ChipReader:
        """Fixed per-source shapes, taken from the first chip, so every batch stacks."""
        ref = self.stacks[self.reference]
        first = next((c for split in SPLITS for c in self.chips[split]), None)
        if first is None:
            raise InputError(f"no chip with a labelled pixel in {self.labels or self.points} over {ref.path}")
        probe = ChipReader(self.stacks, {}, self.until, self.resampling).read(replace(first, ref=None))
        return ChipReader(self.stacks, {k: a.data.shape[-2:] for k, a in probe.items()}, self.until, self.resampling)

    def _split_parts(self, rows: np.ndarray, cols: np.ndarray) -> dict[str, np.ndarray]:
        """Indices of the items of each split (only splits with a positive fraction get any)."""
        names = [k for k, f in self.fractions.items() if f > 0]
        part = spatial_split(rows, cols, self.split_block, [self.fractions[k] for k in names], self.seed)
        out = {k: np.zeros(0, np.int64) for k in SPLITS}
        out.update({k: np.flatnonzero(part == i) for i, k in enumerate(names)})
        return out

    def _label_array(self) -> np.ndarray:
        """The label raster as class ids (-1 = unlabelled), checked to lie on the reference grid."""
        import rasterio

        ref = self.stacks[self.reference]
        with rasterio.open(self.labels) as src:
            if src.crs != ref.crs or (src.height, src.width) != (ref.height, ref.width) or \
                    not src.transform.almost_equals(ref.transform, precision=1e-6 * ref.res[0]):
                raise InputError(f"label raster {self.labels} ({src.crs}, {src.height}x{src.width}, "
                                 f"{tuple(src.transform)[:6]}) is not on the grid of source {self.reference!r} "
                                 f"{ref.path} ({ref.crs}, {ref.height}x{ref.width}, {tuple(ref.transform)[:6]})")
            raw = src.read(self.label_band, masked=True)
        values, ok = raw.data.astype(np.int64), ~np.ma.getmaskarray(raw)
        ok &= ~np.isin(values, self.ignore_values)
        label = np.full(values.shape, -1, np.int64)
        if self.label_map is None:
            label[ok] = values[ok]
        else:
            for k, v in self.label_map.items():
                label[ok & (values == k)] = v
        return label

    def _raster_chips(self) -> dict[str, list[ChipSpec]]:
        from rasterio.windows import Window

        label = self._label_array()
        h, w, size = *label.shape, self.chip_size
        padded = np.full((h + size, w + size), -1, np.int64)
        padded[:h, :w] = label
        tiles = [(r, c) for r in range(0, h, self.stride) for c in range(0, w, self.stride)
                 if (padded[r:r + size, c:c + size] >= 0).any()]
        rows, cols = (np.array([t[i] + size // 2 for t in tiles], np.int64) for i in (0, 1))
        parts = self._split_parts(rows, cols) if tiles else {k: np.zeros(0, np.int64) for k in SPLITS}
        return {k: [ChipSpec(Window(tiles[i][1], tiles[i][0], size, size),
                             padded[tiles[i][0]:tiles[i][0] + size, tiles[i][1]:tiles[i][1] + size].copy(),
                             f"r{tiles[i][0]}_c{tiles[i][1]}") for i in idx]
                for k, idx in parts.items()}

    @cached_property
    def _samples(self) -> Any:
        from agrifm.data.points import read_points

        return read_points(self.points)

    @property
    def class_names(self) -> list[str] | None:
        """Class names of point labels (given, or their sorted distinct values); None for label rasters."""
        if self.given_class_names is not None or not self.points:
            return self.given_class_names
        labels = sorted({str(v) for v in self._samples.labels})
        return None if all(v.lstrip("-").isdigit() for v in labels) else labels

    def _point_chips(self) -> dict[str, list[ChipSpec]]:
        from agrifm.data.points import chips_from_points, locate

        ref, samples = self.stacks[self.reference], self._samples
        loc = locate(ref, samples, on_outside="warn")
        inside = np.flatnonzero(loc.inside)
        parts = self._split_parts(loc.rows[inside], loc.cols[inside])
        out = {}
        for split, idx in parts.items():
            chips = chips_from_points(ref, _subset(samples, inside[idx]), chip_size=self.chip_size,
                                      class_names=self.class_names, group_radius=self.group_radius,
                                      until=self.until, on_outside="ignore") if len(idx) else []
            out[split] = [ChipSpec(c.window, c.label, f"{split}{i}:{','.join(c.ids[:4])}", c.x)
                          for i, c in enumerate(chips)]
        return out

    # -- datasets and statistics
    def _train_arrays(self, key: str) -> Any:
        return ((a.data, a.valid) for a in (self.reader.read(c)[key] for c in self.chips["train"]))

    def _dataset(self, split: str) -> Dataset | None:
        return ChipDataset(self.reader, self.chips[split], self.sources, frames=self.frames,
                           train=split == "train", seed=self.seed)


def _subset(samples: Any, index: np.ndarray) -> Any:
    """The samples at ``index`` (a ``data.points.Samples``)."""
    idx = [int(i) for i in index]
    props = [samples.properties[i] for i in idx] if samples.properties else []
    return replace(samples, ids=[samples.ids[i] for i in idx], labels=[samples.labels[i] for i in idx],
                   geometries=[samples.geometries[i] for i in idx], start=samples.start[idx],
                   end=samples.end[idx], properties=props)
