"""Labelled pixel time series from long tables (CSV / Parquet), and splits grouped by location.

A long table has one row per sample and date: ``sample_id``, ``label``, ``date`` and one
numeric column per band (any names); ``longitude``/``latitude`` give coordinates;
``start_date``/``end_date`` and other text columns are ignored. Samples may have different
dates and gaps (missing rows, empty cells): series are kept on their own dates, padded at the
end to the longest one, so fixed-length models and date-aware code read the same arrays.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Union

import numpy as np
from agrifm.errors import AgrifmError

from agrifm.data.splits import split_fractions, split_parts

__all__ = ["OBSERVED", "OBSERVED_STATS", "stored_bands", "SeriesTable", "read_table", "group_ids", "grouped_split", "TableError"]

PathLike = Union[str, os.PathLike]
REQUIRED = ("sample_id", "label", "date")
COORDS = ("longitude", "latitude")
NOT_BANDS = frozenset(REQUIRED + COORDS + ("start_date", "end_date"))
# The derived band of SeriesTable.with_observed: 1 where a frame holds an observation, 0 in a gap.
OBSERVED = "observed"
OBSERVED_STATS = (0.0, 1.0)  # its normalisation (mean, std): the 0/1 band is given as it is


def stored_bands(bands: Sequence[str]) -> list[str]:
    """The bands a file holds: all but the derived :data:`OBSERVED` band."""
    return [b for b in bands if b != OBSERVED]


class TableError(AgrifmError, ValueError):
    """A table that cannot be read as labelled time series (names the file and column)."""


@dataclass
class SeriesTable:
    """Per-sample time series, padded to the longest one.

    ``values[i, :lengths[i]]`` are sample ``i``'s observations on ``dates[i, :lengths[i]]``
    (ascending); NaN in there is a gap, the rest is padding (NaN values, NaT dates).
    ``labels`` index ``class_names``.
    """

    values: np.ndarray  # (N, T_max, C) float32
    dates: np.ndarray  # (N, T_max) datetime64[D]
    lengths: np.ndarray  # (N,) int64
    labels: np.ndarray  # (N,) int64
    class_names: list[str]
    sample_ids: np.ndarray  # (N,)
    bands: tuple[str, ...]
    coords: np.ndarray | None = None  # (N, 2) longitude, latitude
    path: str = ""

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def aligned(self) -> bool:
        """True when every sample has the same dates (a plain (N, T, C) cube)."""
        return bool((self.lengths == self.values.shape[1]).all() and (self.dates == self.dates[:1]).all())

    def subset(self, index: np.ndarray | Sequence[int]) -> "SeriesTable":
        """The samples at ``index`` (class list kept, so label ids stay comparable)."""
        idx = np.asarray(index)
        per_sample = {f.name: getattr(self, f.name)[idx] for f in fields(self)
                      if isinstance(getattr(self, f.name), np.ndarray)}
        return replace(self, **per_sample)

    def with_classes(self, class_names: Sequence[str]) -> "SeriesTable":
        """The same samples with label ids into ``class_names`` (a superset of this table's
        classes), so tables read separately share one id per class."""
        names = [str(c) for c in class_names]
        missing = [c for c in self.class_names if c not in names]
        if missing:
            raise TableError(f"{self.path}: class(es) {missing} not in the class list {names}")
        remap = np.array([names.index(c) for c in self.class_names], dtype=np.int64)
        return replace(self, labels=remap[self.labels], class_names=names)

    def truncated(self, fraction: float) -> "SeriesTable":
        """Early season: every series keeps the first ``ceil(fraction · its length)`` frames (at least one)."""
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        lengths = np.maximum(1, np.ceil(fraction * self.lengths - 1e-9).astype(np.int64))
        t = int(lengths.max()) if len(lengths) else 0
        cut = np.arange(t)[None, :] >= lengths[:, None]  # (N, t): frames past each series' cut
        values = np.where(cut[..., None], np.nan, self.values[:, :t])
        dates = np.where(cut, np.datetime64("NaT"), self.dates[:, :t])
        return replace(self, values=values, dates=dates, lengths=lengths)  # NaN is weak-typed: stays float32

    def concatenated(self, other: "SeriesTable") -> "SeriesTable":
        """This table's rows followed by ``other``'s (one frame grid, band list and class list)."""
        if other.values.shape[1:] != self.values.shape[1:] or other.bands != self.bands:
            raise TableError(f"{other.path or 'table'}: bands {list(other.bands)} x {other.values.shape[1]} frames; "
                             f"expected {list(self.bands)} x {self.values.shape[1]} as in {self.path or 'the other table'}")
        if other.class_names != self.class_names:
            raise TableError(f"{other.path or 'table'}: classes {other.class_names}; expected {self.class_names}")
        top, bottom = self, other
        if (top.coords is None) != (bottom.coords is None):  # coordinates only where both have them
            top, bottom = replace(top, coords=None), replace(bottom, coords=None)
        joined = {f.name: np.concatenate([getattr(top, f.name), getattr(bottom, f.name)]) for f in fields(top)
                  if isinstance(getattr(top, f.name), np.ndarray)}
        return replace(top, **joined)

    def with_observed(self) -> "SeriesTable":
        """This table with one more band, :data:`OBSERVED`: 1.0 where a frame has a value in
        some band, 0.0 in a gap (padding stays NaN). Gap filling turns clouds into plausible
        values; this band tells a model which ones were seen. A no-op where the band is there."""
        if OBSERVED in self.bands:
            return self
        inside = np.arange(self.values.shape[1])[None, :] < self.lengths[:, None]
        seen = np.isfinite(self.values).any(axis=2).astype(self.values.dtype)
        observed = np.where(inside, seen, np.nan).astype(self.values.dtype)
        return replace(self, values=np.concatenate([self.values, observed[..., None]], axis=2),
                       bands=(*self.bands, OBSERVED))

    def varying_gaps(self, index: np.ndarray | Sequence[int] | None = None) -> float:
        """Share of the frames (of the rows ``index``) whose gap/observed state differs from the
        majority of their date: 0 when every series misses the same dates (a missing month of a
        composite) or none, about the cloud cover when clouds differ from series to series."""
        idx = np.arange(len(self)) if index is None else np.asarray(index)
        if len(idx) == 0:
            return 0.0
        inside = np.arange(self.values.shape[1])[None, :] < self.lengths[idx, None]
        gap = ~np.isfinite(self.values[idx]).any(axis=2) & inside
        n = inside.sum(axis=0)
        share = gap.sum(axis=0) / np.maximum(n, 1)
        minority = np.minimum(share, 1.0 - share) * n
        return float(minority.sum() / max(int(inside.sum()), 1))

    def padded(self, frames: int) -> "SeriesTable":
        """The same samples on a grid of ``frames`` (>= the current) columns: the extra ones are
        padding (NaN values, NaT dates), so tables of different lengths can share one model input."""
        extra = frames - self.values.shape[1]
        if extra < 0:
            raise ValueError(f"cannot pad a table of {self.values.shape[1]} frames to {frames}")
        if extra == 0:
            return self
        n, _, c = self.values.shape
        values = np.concatenate([self.values, np.full((n, extra, c), np.nan, self.values.dtype)], axis=1)
        dates = np.concatenate([self.dates, np.full((n, extra), np.datetime64("NaT"), self.dates.dtype)], axis=1)
        return replace(self, values=values, dates=dates)


# --------------------------------------------------------------------------- reading


def _load(path: Path) -> Any:  # -> pandas.DataFrame
    import pandas as pd

    if not path.is_file():
        raise FileNotFoundError(f"table {path} does not exist")
    if path.suffix.lower() in (".parquet", ".pq"):
        return pd.read_parquet(path)
    if path.suffix.lower() in (".csv", ".txt", ".gz"):
        return pd.read_csv(path)
    raise TableError(f"{path}: unknown table format {path.suffix!r} (want .csv or .parquet)")


def _band_columns(df: Any, path: Path, bands: Sequence[str] | None) -> list[str]:
    """Band columns: the given ones (must be numeric), else every numeric non-metadata column.

    A text column whose values are mostly numbers is a band with bad cells: an error, not
    silently dropped.
    """
    import pandas as pd

    def numeric(c: str) -> bool:
        return pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c])

    def bad_cells(c: str) -> str:
        parsed = pd.to_numeric(df[c], errors="coerce")
        rows = np.flatnonzero(parsed.isna() & df[c].notna())
        return f"non-numeric value {df[c].iloc[rows[0]]!r} in row {rows[0] + 2} (of {len(rows)})"

    if bands is not None:
        missing = [b for b in bands if b not in df.columns]
        if missing:
            raise TableError(f"{path}: band column(s) {missing} not found (columns: {list(df.columns)})")
        for b in bands:
            if not numeric(b):
                raise TableError(f"{path}: band column {b!r} is not numeric: {bad_cells(b)}")
        return list(bands)
    cols = [c for c in df.columns if c not in NOT_BANDS]
    for c in cols:
        if not numeric(c) and pd.to_numeric(df[c], errors="coerce").notna().mean() > 0.5:
            raise TableError(f"{path}: column {c!r} looks like a band but has {bad_cells(c)}")
    found = [c for c in cols if numeric(c)]
    if not found:
        raise TableError(f"{path}: no numeric band columns (columns: {list(df.columns)})")
    return found


def _label_ids(labels: Any, path: Path, class_names: Sequence[str] | None) -> tuple[np.ndarray, list[str]]:
    names = [str(v) for v in labels]
    classes = [str(c) for c in (np.unique(labels) if class_names is None else class_names)]
    lookup = {c: i for i, c in enumerate(classes)}
    unknown = sorted(set(names) - lookup.keys())
    if unknown:
        raise TableError(f"{path}: label(s) {unknown} not in the class list {classes}")
    return np.array([lookup[n] for n in names], dtype=np.int64), classes


def _sample_order(df: Any, path: Path) -> tuple[np.ndarray, list[Any], np.ndarray, np.ndarray]:
    """Sample code per row, sample ids, the row order (by sample, then date) and sorted days."""
    import pandas as pd

    dates = pd.to_datetime(df["date"], errors="coerce")
    if dates.isna().any():
        row = int(np.flatnonzero(dates.isna())[0])
        raise TableError(f"{path}: column 'date' has an empty or unparseable value "
                         f"{df['date'].iloc[row]!r} in row {row + 2}")
    codes, uniques = pd.factorize(df["sample_id"], sort=False)
    ids = uniques.tolist()  # Python scalars: errors print 7, not np.int64(7)
    day = dates.to_numpy().astype("datetime64[D]")
    order = np.lexsort((day, codes))
    codes, day = codes[order], day[order]
    dup = np.flatnonzero((codes[1:] == codes[:-1]) & (day[1:] == day[:-1]))
    if dup.size:
        raise TableError(f"{path}: sample {ids[codes[dup[0]]]!r} has date {day[dup[0]]} twice")
    return codes, ids, order, day


def _pad(codes: np.ndarray, rows: np.ndarray, day: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sorted long rows -> ``values (N, T_max, C)``, ``dates (N, T_max)``, ``lengths (N,)``."""
    lengths = np.bincount(codes, minlength=n).astype(np.int64)
    slot = np.arange(len(codes)) - np.repeat(np.cumsum(lengths) - lengths, lengths)  # rank within sample
    values = np.full((n, lengths.max(), rows.shape[1]), np.nan, dtype=np.float32)
    values[codes, slot] = rows
    dates = np.full((n, lengths.max()), np.datetime64("NaT"), dtype="datetime64[D]")
    dates[codes, slot] = day
    return values, dates, lengths


def read_table(
    path: PathLike,
    *,
    bands: Sequence[str] | None = None,
    class_names: Sequence[str] | None = None,
) -> SeriesTable:
    """Read a long table into a :class:`SeriesTable` (samples in order of first appearance).

    ``class_names`` fixes the label ids (e.g. the training classes when reading a test set):
    a label outside it is an error. Each sample must have one label and unique dates.
    """
    import pandas as pd

    path = Path(path)
    df = _load(path)
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise TableError(f"{path}: required column(s) {missing} missing (columns: {list(df.columns)})")
    band_cols = _band_columns(df, path, bands)
    if df["label"].isna().any():
        raise TableError(f"{path}: column 'label' is empty in row {int(np.flatnonzero(df['label'].isna())[0]) + 2}")
    codes, ids, order, day = _sample_order(df, path)
    rows = df[band_cols].to_numpy(dtype=np.float32, na_value=np.nan)[order]
    values, dates, lengths = _pad(codes, rows, day, len(ids))
    first = np.cumsum(lengths) - lengths  # first sorted row of each sample
    labels = df["label"].to_numpy()[order]
    mixed = np.flatnonzero(pd.Series(labels).groupby(codes).nunique().to_numpy() > 1)
    if mixed.size:
        raise TableError(f"{path}: sample {ids[mixed[0]]!r} has more than one label")
    label_ids, classes = _label_ids(labels[first], path, class_names)
    coords = df[list(COORDS)].to_numpy(dtype=np.float64)[order][first] if set(COORDS) <= set(df.columns) else None
    return SeriesTable(values=values, dates=dates, lengths=lengths, labels=label_ids, class_names=classes,
                       sample_ids=np.asarray(ids), bands=tuple(band_cols), coords=coords, path=str(path))


# --------------------------------------------------------------------------- grouped splits


def _components(keys: Sequence[np.ndarray]) -> np.ndarray:
    """Connected components of samples linked by sharing any key: ids ``0..G-1`` (vectorised)."""
    n = len(keys[0])
    comp = np.arange(n)
    while True:
        before = comp
        for k in keys:  # propagate the smallest member id through every key value
            low = np.full(k.max() + 1, n)
            np.minimum.at(low, k, comp)
            comp = low[k]
        comp = comp[comp]  # pointer jumping speeds up long chains
        if np.array_equal(comp, before):
            return np.unique(comp, return_inverse=True)[1]


def group_ids(table: SeriesTable, *, decimals: int = 4) -> np.ndarray:
    """Group id per sample: samples sharing coordinates (rounded to ``decimals``) or having
    byte-identical series belong together (same place, or one pixel seen twice), transitively.
    """
    rows = np.ascontiguousarray(table.values).reshape(len(table), -1)
    keys = [np.unique(rows.view(np.dtype((np.void, rows.dtype.itemsize * rows.shape[1]))).ravel(),
                      return_inverse=True)[1]]
    if table.coords is not None:
        keys.append(np.unique(np.round(table.coords, decimals), axis=0, return_inverse=True)[1].ravel())
    return _components(keys)


def grouped_split(
    table: SeriesTable,
    fractions: float | Sequence[float] = (0.8, 0.2),
    *,
    seed: int = 0,
    stratify: bool = True,
    groups: np.ndarray | None = None,
) -> tuple[np.ndarray, ...]:
    """Split sample indices so that no group (see :func:`group_ids`) is on two sides.

    ``fractions`` per part (a float ``f`` means ``(1 - f, f)``); stratified by the groups'
    majority labels when ``stratify``; the rule is :func:`agrifm.data.splits.split_parts`'s.
    Returns one sorted index array per part.
    """
    groups = group_ids(table) if groups is None else np.asarray(groups)
    part = split_parts(groups, fractions, seed=seed, labels=table.labels if stratify else None)
    return tuple(np.flatnonzero(part == k) for k in range(len(split_fractions(fractions))))
