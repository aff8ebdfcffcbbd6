"""The published AgriFM sample format: one HDF5 file per sample, split lists beside them.

Layout of a dataset root::

    h5_samples/<name>.h5      one sample: a dataset per source (T, C, H, W), `label` (H, W), extras
    data_lists/<split>.txt    one sample name per line (train / val / test); the release's
                              configs call the folder data_list/, which is read as well

In a file, dates and band names may be stored per dataset (`dates`, `bands` attributes) or
at file level (`dates_<SRC>`, and `dates` for the main source); both are read, the dataset's
own attribute winning. Files written by the published code carry neither, so both are optional.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np

from agrifm.data.timeseries import as_dates
from agrifm.io import atomic_output
from agrifm.errors import AgrifmError

__all__ = [
    "H5SampleError",
    "H5Sample",
    "read_h5_sample",
    "write_h5_sample",
    "h5_sources",
    "read_split",
    "sample_paths",
    "PASTIS_VOID",
    "SPLIT_FOLDERS",
]

PathLike = Union[str, os.PathLike]
SplitLike = Union[str, os.PathLike, Sequence[str], None]
LABEL_KEY = "label"
# PASTIS's void label. Not ignored by default (other data sets use 19 as a class): PASTIS-like
# data pass ``ignore_values=[PASTIS_VOID]`` to the dataset / data module.
PASTIS_VOID = 19
SPLIT_FOLDERS = ("data_lists", "data_list")  # ours, and the name in the release's configs


class H5SampleError(AgrifmError, ValueError):
    """A sample file that cannot be read as asked (names the file and the key)."""


@dataclass
class H5Sample:
    """One sample as stored: physical values, NaN where invalid."""

    name: str
    inputs: dict[str, np.ndarray]  # source -> (T, C, H, W) float32
    dates: dict[str, np.ndarray]  # source -> (T,) datetime64[D]; all NaT when the file has none
    bands: dict[str, tuple[str, ...] | None]  # source -> band names in channel order, if known
    label: np.ndarray | None = None  # (H, W) int64
    extra: dict[str, np.ndarray] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- reading


def _open(path: Path):  # -> h5py.File
    import h5py

    if not path.is_file():
        raise FileNotFoundError(f"H5 sample {path} does not exist")
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise H5SampleError(f"{path}: not a readable HDF5 file ({e})") from None


def _read(f: Any, path: Path, key: str) -> np.ndarray:
    """Read dataset ``key`` fully, turning missing keys and damaged data into errors naming both."""
    if key not in f:
        raise H5SampleError(f"{path}: no dataset {key!r} (has {sorted(f.keys())})")
    try:
        return f[key][()]
    except (OSError, KeyError, ValueError, TypeError) as e:
        raise H5SampleError(f"{path}: cannot read dataset {key!r} ({e})") from None


def _strings(values: Any) -> tuple[str, ...]:
    return tuple(v.decode() if isinstance(v, bytes) else str(v) for v in np.atleast_1d(values))


def _source_keys(f: Any) -> list[str]:
    """Datasets shaped like a source, (T, C, H, W)."""
    return [k for k in f if getattr(f[k], "ndim", 0) == 4]


def _main_source(names: Sequence[str]) -> str | None:
    """The source whose dates the file attribute ``dates`` holds: ``S2``, else the first by name."""
    return "S2" if "S2" in names else min(names, default=None)


def _source_dates(f: Any, key: str, t: int, main: bool) -> np.ndarray:
    """Dates of source ``key``: dataset attr, else file attr ``dates_<key>``, else ``dates`` if ``main``."""
    places = [(f[key].attrs, "dates"), (f.attrs, f"dates_{key}")] + [(f.attrs, "dates")] * main
    for attrs, name in places:
        if name in attrs and len(np.atleast_1d(attrs[name])) == t:
            return as_dates(_strings(attrs[name]))
    return np.full(t, np.datetime64("NaT"), dtype="datetime64[D]")


def _select_bands(x: np.ndarray, stored: tuple[str, ...] | None, want: Sequence[str], path: Path,
                  key: str) -> np.ndarray:
    """Reorder channels of ``x`` to ``want`` by name (files without names must match in count)."""
    if stored is None:
        if x.shape[1] != len(want):
            raise H5SampleError(f"{path}: dataset {key!r} has {x.shape[1]} bands {x.shape} and no "
                                f"band names, but {len(want)} bands {list(want)} were asked for")
        return x
    missing = [b for b in want if b not in stored]
    if missing:
        raise H5SampleError(f"{path}: dataset {key!r} lacks band(s) {missing} (has {list(stored)})")
    order = [stored.index(b) for b in want]
    return x if order == list(range(len(stored))) else x[:, order]


def _read_source(f: Any, path: Path, key: str, want: Sequence[str] | None
                 ) -> tuple[np.ndarray, tuple[str, ...] | None]:
    """One source as float32 ``(T, C, H, W)`` (channels in ``want`` order if given) and its band names."""
    x = _read(f, path, key)
    if x.ndim != 4:
        raise H5SampleError(f"{path}: dataset {key!r} has shape {x.shape}, expected (T, C, H, W)")
    stored = _strings(f[key].attrs["bands"]) if "bands" in f[key].attrs else None
    if stored is not None and len(stored) != x.shape[1]:
        raise H5SampleError(f"{path}: dataset {key!r} has {x.shape[1]} bands but {len(stored)} band names")
    if want is not None:
        x, stored = _select_bands(x, stored, want, path, key), tuple(want)
    return x.astype(np.float32, copy=False), stored


def read_h5_sample(
    path: PathLike,
    sources: Sequence[str] | None = None,
    *,
    bands: Mapping[str, Sequence[str]] | None = None,
    label_key: str | None = LABEL_KEY,
    extra: Sequence[str] = (),
) -> H5Sample:
    """Read one sample file.

    ``sources`` are the dataset keys to read (default: every 4-D dataset). ``bands`` maps a
    source to the band names wanted, in order: channels are reordered by the stored names
    (e.g. the PASTIS file order B05..B08 -> the released weights' B08-fourth order).
    ``label_key=None`` reads no label; ``extra`` names further layers (e.g. ``instance``).
    """
    path = Path(path)
    with _open(path) as f:
        stored_sources = _source_keys(f)
        keys = list(sources) if sources is not None else stored_sources
        out = H5Sample(name=path.stem, inputs={}, dates={}, bands={},
                       attrs={k: f.attrs[k] for k in f.attrs})
        for key in keys:
            x, out.bands[key] = _read_source(f, path, key, (bands or {}).get(key))
            out.inputs[key] = x
            out.dates[key] = _source_dates(f, key, x.shape[0], key == _main_source(stored_sources))
        if label_key is not None:
            out.label = _read(f, path, label_key).astype(np.int64, copy=False)
        out.extra = {k: _read(f, path, k) for k in extra}
    return out


def h5_sources(path: PathLike) -> dict[str, tuple[int, ...]]:
    """The 4-D datasets (sources) of a sample file and their shapes, without reading data."""
    path = Path(path)
    with _open(path) as f:
        return {k: f[k].shape for k in _source_keys(f)}


# --------------------------------------------------------------------------- writing


def _check_source(name: str, x: np.ndarray, dates: Any, bands: Any) -> None:
    if x.ndim != 4:
        raise ValueError(f"source {name!r}: expected (T, C, H, W), got shape {x.shape}")
    if dates is not None and len(dates) != x.shape[0]:
        raise ValueError(f"source {name!r}: {len(dates)} dates for {x.shape[0]} frames {x.shape}")
    if bands is not None and len(bands) != x.shape[1]:
        raise ValueError(f"source {name!r}: {len(bands)} band names for {x.shape[1]} bands {x.shape}")


def write_h5_sample(
    path: PathLike,
    inputs: Mapping[str, np.ndarray],
    label: np.ndarray | None = None,
    *,
    dates: Mapping[str, Any] | None = None,
    bands: Mapping[str, Sequence[str]] | None = None,
    extra: Mapping[str, np.ndarray] | None = None,
    attrs: Mapping[str, Any] | None = None,
    label_key: str = LABEL_KEY,
    compression: str | None = "gzip",
) -> Path:
    """Write one sample atomically in the published layout (readable by the published code).

    Each source is stored as float32 ``(T, C, H, W)`` with ``dates`` (ISO) and ``bands``
    attributes; dates are also written as file attributes ``dates_<SRC>``, and ``dates`` holds
    those of ``S2`` (else the first source by name), as in the published files.
    """
    import h5py

    dates, bands = dates or {}, bands or {}
    arrays = {k: np.asarray(v, dtype=np.float32) for k, v in inputs.items()}
    for k, x in arrays.items():
        _check_source(k, x, dates.get(k), bands.get(k))
    iso = {k: np.datetime_as_string(as_dates(d), unit="D").astype(object) for k, d in dates.items()}
    text = h5py.string_dtype()
    with atomic_output(path) as tmp, h5py.File(tmp, "w") as f:
        for k, x in arrays.items():
            ds = f.create_dataset(k, data=x, compression=compression)
            if k in iso:
                ds.attrs["dates"] = np.array(iso[k], dtype=text)
                f.attrs[f"dates_{k}"] = np.array(iso[k], dtype=text)
            if k in bands:
                ds.attrs["bands"] = np.array(list(bands[k]), dtype=text)
        main = _main_source(list(iso))
        if main is not None:
            f.attrs["dates"] = np.array(iso[main], dtype=text)
        if label is not None:
            f.create_dataset(label_key, data=np.asarray(label, dtype=np.int64), compression=compression)
        for k, v in (extra or {}).items():
            f.create_dataset(k, data=np.asarray(v), compression=compression)
        for k, v in (attrs or {}).items():
            f.attrs[k] = v
    return Path(path)


# --------------------------------------------------------------------------- split lists


def read_split(path: PathLike) -> list[str]:
    """Sample names of a split file: one per line; blank lines and ``#`` comments skipped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"split list {path} does not exist")
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [Path(n).stem if n.endswith(".h5") else n for n in lines if n]


def _sample_dir(root: Path) -> Path:
    return root / "h5_samples" if (root / "h5_samples").is_dir() else root


def sample_paths(root: PathLike, split: SplitLike = None) -> list[Path]:
    """Files of a split.

    ``root`` is a dataset folder (with ``h5_samples/`` and ``data_lists/`` or ``data_list/``) or a
    folder of ``.h5`` files; ``split`` is a split name (``'train'`` -> ``data_lists/train.txt``), a
    split file, a list of sample names, or None for every file. Missing files are an error
    naming the split.
    """
    root = Path(root)
    folder = _sample_dir(root)
    if split is None:
        files = sorted(folder.glob("*.h5"))
        if not files:
            raise FileNotFoundError(f"no .h5 samples in {folder}")
        return files
    if isinstance(split, (str, os.PathLike)):
        named = [root / folder / f"{split}.txt" for folder in SPLIT_FOLDERS]
        split_file = next((p for p in named if p.is_file()), Path(split))
        names, where = read_split(split_file), str(split_file)
    else:
        names, where = list(split), "the given names"
    files = [folder / f"{n}.h5" for n in names]
    missing = [str(p) for p in files if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} sample(s) listed in {where} are missing: {missing[:5]}")
    return files
