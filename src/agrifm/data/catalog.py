"""Which file holds which band on which date: the ``(timestamp, band) -> (file, band index)``
table behind a :class:`~agrifm.data.stack.Stack`, built from file names, band descriptions and
date sidecars (the three layouts are described in :mod:`agrifm.data.stack`), with the checks
that every file lies on one grid. Metadata only: no pixel is read here.
"""

from __future__ import annotations

import datetime as _dt
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agrifm.errors import InputError
import rasterio
from affine import Affine
from rasterio.crs import CRS

__all__ = ["PathLike", "RasterInfo", "BandRef", "date_from_name", "list_rasters", "check_grid", "build_catalog",
           "resolve_bands", "assemble", "describe_paths"]

PathLike = str | Path
_RASTER_SUFFIXES = (".tif", ".tiff")
_SIDECARS = ("{stem}.dates.txt", "{stem}_dates.txt", "dates.txt")
_GRID_TOL = 1e-6  # fraction of a pixel for comparing transforms


# --------------------------------------------------------------------------- dates


_NAME_DATE_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"(?<!\d)(\d{4})-(\d{2})-(\d{2})(?!\d)"), "ymd"),
    (re.compile(r"(?<!\d)(\d{4})(\d{2})(\d{2})(?!\d)"), "ymd"),
    (re.compile(r"(?<!\d)(\d{4})-(\d{2})(?![\d-])"), "ym"),
    (re.compile(r"(?<![\dA-Za-z])A?(\d{4})(\d{3})(?!\d)"), "doy"),
)
_ISO_RE = re.compile(r"^\d{4}-\d{2}(-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?Z?)?)?$")


def _make_date(groups: tuple[str, ...], kind: str) -> _dt.date | None:
    year = int(groups[0])
    if not 1900 <= year <= 2200:
        return None
    try:
        if kind == "doy":
            doy = int(groups[1])
            return None if not 1 <= doy <= 366 else _dt.date(year, 1, 1) + _dt.timedelta(doy - 1)
        return _dt.date(year, int(groups[1]), int(groups[2]) if kind == "ymd" else 1)
    except ValueError:
        return None


def date_from_name(name: str) -> tuple[np.datetime64, tuple[int, int]] | None:
    """First date in a file name and its character span, or None.

    Tried in order: ``YYYY-MM-DD``, ``YYYYMMDD``, ``YYYY-MM`` (1st of the month) and
    ``[A]YYYYDOY`` (MODIS style); digit runs that are no valid date are skipped.
    """
    for pattern, kind in _NAME_DATE_PATTERNS:
        for m in pattern.finditer(name):
            d = _make_date(m.groups(), kind)
            if d is not None:
                return np.datetime64(d, "s"), m.span()
    return None


def _parse_timestamp(text: str | None) -> np.datetime64 | None:
    """An ISO date/datetime string (band description, sidecar line) as datetime64[s]."""
    text = (text or "").strip().rstrip("Z")
    if not _ISO_RE.match(text):
        return None
    return np.datetime64(text.replace(" ", "T"), "s")


# --------------------------------------------------------------------------- file metadata


@dataclass(frozen=True)
class RasterInfo:
    """Metadata of one GeoTIFF (no open handle kept: stacks are lazy)."""

    path: Path
    count: int
    descriptions: tuple[str | None, ...]
    scales: tuple[float, ...]
    offsets: tuple[float, ...]
    dtype: str
    nodata: float | None
    crs: CRS | None
    transform: Affine
    width: int
    height: int


def _probe(path: Path) -> RasterInfo:
    try:
        with rasterio.open(path) as src:
            return RasterInfo(
                path=path, count=src.count, descriptions=tuple(src.descriptions),
                scales=tuple(src.scales), offsets=tuple(src.offsets), dtype=src.dtypes[0],
                nodata=src.nodata, crs=src.crs, transform=src.transform,
                width=src.width, height=src.height,
            )
    except rasterio.errors.RasterioError as e:
        raise InputError(f"cannot read raster {path}: {e}") from e


def _same_grid(a: RasterInfo, b: RasterInfo) -> bool:
    tol = _GRID_TOL * min(abs(a.transform.a), abs(a.transform.e))
    return (a.crs == b.crs and (a.width, a.height) == (b.width, b.height)
            and a.transform.almost_equals(b.transform, precision=tol))


def check_grid(rasters: Sequence[RasterInfo], what: str = "stack") -> RasterInfo:
    """All files of a stack must share one grid; the error names the first two that differ."""
    first = rasters[0]
    for r in rasters[1:]:
        if not _same_grid(first, r):
            raise InputError(
                f"{what}: {r.path} and {first.path} are on different grids: "
                f"{r.crs} {r.width}x{r.height} {tuple(r.transform)[:6]} vs "
                f"{first.crs} {first.width}x{first.height} {tuple(first.transform)[:6]}"
            )
    return first


def list_rasters(path: PathLike | Sequence[PathLike]) -> list[Path]:
    if isinstance(path, (str, Path)):
        p = Path(path)
        if p.is_dir():
            files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in _RASTER_SUFFIXES)
            if not files:
                raise FileNotFoundError(f"no GeoTIFF (*.tif, *.tiff) in folder {p}")
            return files
        paths = [p]
    else:
        paths = [Path(f) for f in path]
        if not paths:
            raise InputError("open_stack: empty list of files")
    for f in paths:
        if not f.is_file():
            raise FileNotFoundError(f"raster {f} does not exist")
    return paths


# --------------------------------------------------------------------------- catalogue

BandRef = tuple[RasterInfo, int]  # file, 1-based band index


@dataclass
class _Catalog:
    """Every (timestamp, band) found in a set of files, and where it is stored."""

    entries: dict[np.datetime64, dict[str, BandRef]]
    dated_bands: list[str]   # bands from layouts (a)/(b), in order of appearance
    series: dict[str, RasterInfo]  # layout (c) files by band name (stem)
    origin: str

    def add(self, when: np.datetime64, band: str, ref: BandRef) -> None:
        slot = self.entries.setdefault(when, {})
        if band in slot:
            raise InputError(
                f"{self.origin}: band {band!r} at {when} is stored twice: "
                f"{slot[band][0].path} and {ref[0].path}"
            )
        slot[band] = ref

    def bands(self) -> list[str]:
        return list(dict.fromkeys(self.dated_bands + list(self.series)))

    def files(self, band: str) -> list[str]:
        return sorted({ref[0].path.name for slot in self.entries.values()
                       for b, ref in slot.items() if b == band})


def _tokens(text: str) -> list[str]:
    return [t for t in re.split(r"[_\-.\s]+", text) if t]


def _single_band_names(named: list[tuple[RasterInfo, list[str]]], bands: Sequence[str] | None) -> list[str]:
    """Band names of layout (a) files: the name tokens that differ between the files.

    With only one band (nothing differs), fall back to the band description, then a
    one-element ``bands=``, then the last name token.
    """
    token_lists = [t for _, t in named]
    pre = 0
    while all(len(t) > pre for t in token_lists) and len({t[pre] for t in token_lists}) == 1:
        pre += 1
    suf = 0
    while (all(len(t) > pre + suf for t in token_lists)
           and len({t[len(t) - 1 - suf] for t in token_lists}) == 1):
        suf += 1
    names = []
    for raster, toks in named:
        rest = toks[pre:len(toks) - suf]
        if rest:
            names.append("_".join(rest))
        elif raster.descriptions[0]:
            names.append(raster.descriptions[0])
        elif bands is not None and len(bands) == 1:
            names.append(bands[0])
        elif toks:
            names.append(toks[-1])
        else:
            raise InputError(f"cannot tell the band of {raster.path}: no band name in the file name "
                             "or description; pass bands=[NAME]")
    return names


def _multi_band_names(r: RasterInfo, bands: Sequence[str] | None) -> list[str]:
    """Band names of a layout (b) file: its descriptions, else the caller's ``bands=``."""
    if all(r.descriptions):
        return list(r.descriptions)  # type: ignore[arg-type]
    if bands is not None and len(bands) == r.count:
        return list(bands)
    raise InputError(f"{r.path} has {r.count} bands without descriptions; pass bands= with "
                     f"{r.count} names in file order")


def _series_dates(r: RasterInfo, dates: Sequence[str] | None) -> np.ndarray | None:
    """Timestamps of a layout (c) file (one band per date), or None if it is not one."""
    if dates is not None:
        if len(dates) != r.count:
            return None
        parsed = [_parse_timestamp(str(d)) for d in dates]
        if any(p is None for p in parsed):
            raise InputError(f"dates= holds a value that is not an ISO date: {list(dates)}")
        return np.array(parsed, dtype="datetime64[s]")
    parsed = [_parse_timestamp(d) for d in r.descriptions]
    if all(p is not None for p in parsed):
        return np.array(parsed, dtype="datetime64[s]")
    for pattern in _SIDECARS:
        sidecar = r.path.parent / pattern.format(stem=r.path.stem)
        if sidecar.is_file():
            lines = [ln for ln in sidecar.read_text().splitlines() if ln.strip()]
            parsed = [_parse_timestamp(ln) for ln in lines]
            if len(parsed) == r.count and all(p is not None for p in parsed):
                return np.array(parsed, dtype="datetime64[s]")
    return None


def build_catalog(paths: list[Path], origin: str, bands: Sequence[str] | None,
             dates: Sequence[str] | None) -> _Catalog:
    cat = _Catalog(entries={}, dated_bands=[], series={}, origin=origin)
    single: list[tuple[RasterInfo, np.datetime64, list[str]]] = []
    undated: list[RasterInfo] = []
    for path in paths:
        raster = _probe(path)
        found = date_from_name(path.stem)
        if found is None:
            undated.append(raster)
            continue
        when, (a, b) = found
        if raster.count == 1:
            single.append((raster, when, _tokens(path.stem[:a] + "_" + path.stem[b:])))
        else:
            for i, name in enumerate(_multi_band_names(raster, bands), start=1):
                cat.add(when, name, (raster, i))
                cat.dated_bands.append(name)
    if single:
        names = _single_band_names([(r, t) for r, _, t in single], bands)
        for (raster, when, _), name in zip(single, names):
            cat.add(when, name, (raster, 1))
            cat.dated_bands.append(name)
    for raster in undated:
        stamps = _series_dates(raster, dates)
        if stamps is None:
            continue
        cat.series[raster.path.stem] = raster
        for i, when in enumerate(stamps, start=1):
            cat.add(when, raster.path.stem, (raster, i))
    cat.dated_bands = list(dict.fromkeys(cat.dated_bands))
    if not cat.entries:
        raise InputError(
            f"{origin}: no dated raster found (dates are read from file names like "
            "NAME_2021-03-01.tif / NAME_20210301.tif / NAME_2021-03.tif, or, for files whose bands "
            "are dates, from band descriptions, a dates.txt sidecar or dates=)"
        )
    return cat


def resolve_bands(cat: _Catalog, bands: Sequence[str] | None,
                   band_map: dict[str, str] | None) -> list[tuple[str, str]]:
    """(output name, stored name) per selected band.

    ``band_map`` is a fallback: ``{'B8A': 'B08'}`` reads B08 for B8A only when no B8A is stored.
    """
    present = cat.bands()
    if bands is None:
        if len(cat.series) > 1 or (cat.series and cat.dated_bands):
            raise InputError(
                f"{cat.origin} holds several candidate bands: per-date files with "
                f"{cat.dated_bands} and per-band time-series files {sorted(cat.series)}; "
                "pass bands= to choose"
            )
        return [(b, b) for b in present]
    out = []
    for b in bands:
        stored = b if b in present else (band_map or {}).get(b, b)
        if stored not in present:
            via = f" (band_map gives {stored!r})" if stored != b else ""
            raise InputError(f"band {b!r}{via} not found in {cat.origin}; bands present: {present}")
        out.append((b, stored))
    return out


def assemble(cat: _Catalog, stored: list[str]) -> tuple[np.ndarray, list[list[BandRef]]]:
    """Frames (sorted timestamps) where any selected band exists; each must have all of them."""
    frames = sorted(t for t, slot in cat.entries.items() if any(b in slot for b in stored))
    refs = []
    for t in frames:
        slot = cat.entries[t]
        missing = [b for b in stored if b not in slot]
        if missing:
            have = {b: ref[0].path.name for b, ref in slot.items()}
            raise InputError(
                f"{cat.origin}: band(s) {missing} missing for date {t}; stored there: {have}; "
                f"{missing[0]!r} is in {cat.files(missing[0])[:5]}"
            )
        refs.append([slot[b] for b in stored])
    return np.array(frames, dtype="datetime64[s]"), refs


def describe_paths(path: PathLike | Sequence[PathLike]) -> str:
    if isinstance(path, (str, Path)):
        return str(path)
    names = [str(p) for p in path]
    return f"[{', '.join(names[:3])}{', ...' if len(names) > 3 else ''}] ({len(names)} files)"
