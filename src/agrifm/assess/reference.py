"""The labelled reference sample: read it, bring it to the map's grid, and match its labels.

Reading reuses :func:`agrifm.data.points.read_points` (CSV with ``longitude,latitude`` in WGS84
or ``x,y`` in the map's CRS, GeoPackage, GeoJSON). Points are reprojected to the map's CRS;
points outside the map or on nodata are listed and skipped, duplicate points (two on one
pixel) are listed and all but the first dropped; none of it is silent.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agrifm.assess.maps import ClassMap
from agrifm.errors import AgrifmError

__all__ = ["Reference", "read_reference", "class_key"]


@dataclass
class Reference:
    """Usable sample units: map class value and reference class key of each, plus what was skipped."""

    ids: list[str]
    map_values: np.ndarray
    labels: list[str]           # reference class keys: map class names, or values as strings
    n_read: int
    outside: list[str] = field(default_factory=list)
    nodata: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def class_key(label: Any, cmap: ClassMap) -> str:
    """A label as a class key: the map's class name for a name or an integer value, else itself."""
    if isinstance(label, (float, np.floating)) and float(label).is_integer():
        label = int(label)
    text = str(label).strip()
    if text in cmap.names.values():
        return text
    try:
        return cmap.name(int(text))
    except ValueError:
        return text


def _csv_needs_map_crs(path: Path) -> bool:
    with open(path, newline="") as f:
        header = {c.strip().lower() for c in next(csv.reader(f), [])}
    return not ({"longitude", "latitude"} <= header or {"lon", "lat"} <= header)


def _read(path: Path, cmap: ClassMap, label_column: str) -> Any:
    from agrifm.data.points import read_points

    crs = cmap.crs if path.suffix.lower() == ".csv" and path.is_file() and _csv_needs_map_crs(path) else None
    try:
        return read_points(path, crs=crs, label_col=label_column)
    except (ValueError, FileNotFoundError, ImportError, KeyError) as err:
        msg = str(err) if str(path) in str(err) else f"{path}: {err}"
        hint = " (label every point: a skipped point would bias the sample)" if "has no" in msg and "value" in msg else ""
        raise AgrifmError(f"--reference {msg}{hint}") from None


def _pixel_state(cmap: ClassMap, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Class value and validity (not nodata) of the pixels ``(rows, cols)``, one small read each."""
    import rasterio
    from rasterio.windows import Window

    values = np.zeros(len(rows), np.int64)
    valid = np.zeros(len(rows), bool)
    with rasterio.open(cmap.path) as src:
        for i, (r, c) in enumerate(zip(rows.tolist(), cols.tolist())):
            win = Window(c, r, 1, 1)
            values[i] = int(src.read(1, window=win)[0, 0])
            valid[i] = bool(src.read_masks(1, window=win)[0, 0])
    return values, valid


def _listing(ids: list[str], limit: int = 20) -> str:
    return ", ".join(ids[:limit]) + (f" ... ({len(ids) - limit} more)" if len(ids) > limit else "")


def read_reference(path: str | Path, cmap: ClassMap, label_column: str = "label") -> Reference:
    """Read, reproject, locate and de-duplicate the reference sample of ``cmap``."""
    import rasterio.warp

    path = Path(path)
    samples = _read(path, cmap, label_column)
    not_points = [i for i, g in zip(samples.ids, samples.geometries) if g["type"] != "Point"]
    if not_points:
        raise AgrifmError(f"--reference {path}: samples {_listing(not_points)} are not points; "
                          "the sample units of a stratified random sample are pixels (points)")
    xs = [g["coordinates"][0] for g in samples.geometries]
    ys = [g["coordinates"][1] for g in samples.geometries]
    if samples.crs != cmap.crs:
        xs, ys = rasterio.warp.transform(samples.crs, cmap.crs, xs, ys)
    cols_f, rows_f = ~cmap.transform @ (np.asarray(xs, float), np.asarray(ys, float))
    finite = np.isfinite(rows_f) & np.isfinite(cols_f)
    rows = np.floor(np.where(finite, rows_f, -1)).astype(np.int64)
    cols = np.floor(np.where(finite, cols_f, -1)).astype(np.int64)
    inside = finite & (rows >= 0) & (rows < cmap.height) & (cols >= 0) & (cols < cmap.width)
    ids = list(samples.ids)
    ref = Reference(ids=[], map_values=np.zeros(0, np.int64), labels=[], n_read=len(ids))
    ref.outside = [ids[i] for i in np.flatnonzero(~inside)]
    keep = np.flatnonzero(inside)
    values, valid = _pixel_state(cmap, rows[keep], cols[keep])
    ref.nodata = [ids[i] for i in keep[~valid]]
    keep, values = keep[valid], values[valid]
    seen: dict[tuple[int, int], int] = {}
    first = np.ones(len(keep), bool)
    for j, i in enumerate(keep.tolist()):
        rc = (int(rows[i]), int(cols[i]))
        if rc in seen:
            first[j] = False
            other = seen[rc]
            same = class_key(samples.labels[i], cmap) == class_key(samples.labels[other], cmap)
            ref.duplicates.append(f"{ids[i]} (pixel of {ids[other]}, {'same' if same else 'different'} label)")
        else:
            seen[rc] = i
    keep, values = keep[first], values[first]
    ref.ids = [ids[i] for i in keep]
    ref.map_values = values
    ref.labels = [class_key(samples.labels[i], cmap) for i in keep]
    for what, listed in (("outside the map", ref.outside), ("on nodata pixels", ref.nodata)):
        if listed:
            ref.notes.append(f"{len(listed)} of {ref.n_read} reference points lie {what} and were skipped: {_listing(listed)}")
    if ref.duplicates:
        ref.notes.append(f"{len(ref.duplicates)} reference points fall on a pixel already sampled and were dropped "
                         f"(first kept): {_listing(ref.duplicates)}")
    if not ref.ids:
        raise AgrifmError(f"--reference {path}: none of its {ref.n_read} points is usable on --map {cmap.path} "
                          f"({len(ref.outside)} outside, {len(ref.nodata)} on nodata, {len(ref.duplicates)} duplicates)")
    return ref
