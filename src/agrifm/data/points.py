"""Labelled points and polygons -> training chips and pixel time series.

Samples are read from CSV (``longitude``/``latitude`` or ``x``/``y`` + ``crs``), GeoJSON
(parsed with :mod:`json`) or GeoPackage (only when ``pyogrio`` is installed), transformed
to a stack's CRS and located on its pixel grid. Samples outside the stack are reported (a
warning, or an error with ``on_outside='raise'``) with their count and ids, never dropped
silently.
"""

from __future__ import annotations

import csv
import json
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import rasterio.features
import rasterio.warp
import rasterio.windows
from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window

from agrifm.data.stack import PathLike, Stack, StackArray

__all__ = [
    "Samples", "read_points", "Located", "locate", "encode_labels",
    "Chip", "chips_from_points", "PointSeries", "pixel_series_from_points",
]

OnOutside = Literal["warn", "raise", "ignore"]
_GEOMETRY_TYPES = ("Point", "Polygon", "MultiPolygon")
_XY_COLUMNS = (("longitude", "latitude"), ("lon", "lat"), ("x", "y"))
_GEOGRAPHIC = ("longitude", "lon")


@dataclass
class Samples:
    """Labelled features: GeoJSON geometry dicts (Point/Polygon/MultiPolygon) in ``crs``."""

    ids: list[str]
    labels: list[Any]
    geometries: list[dict[str, Any]]
    crs: CRS
    start: np.ndarray  # datetime64[D], NaT where the file gives no date
    end: np.ndarray
    properties: list[dict[str, Any]] = field(default_factory=list)
    source: str = "<memory>"

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def is_point(self) -> np.ndarray:
        return np.array([g["type"] == "Point" for g in self.geometries], bool)


# --------------------------------------------------------------------------- reading

_Record = tuple[dict[str, Any], dict[str, Any], str]  # geometry, properties, default id


def read_points(path: PathLike, *, crs: CRS | str | None = None, x_col: str | None = None,
                y_col: str | None = None, label_col: str = "label", id_col: str = "id",
                layer: str | None = None) -> Samples:
    """Read labelled samples from ``.csv``, ``.geojson``/``.json`` or ``.gpkg``.

    ``crs`` is the coordinates' CRS: default WGS84 for lon/lat columns and GeoJSON (or the
    GeoJSON's legacy ``crs`` member); required for ``x``/``y`` columns.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"samples file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        records, file_crs = _csv_records(path, crs, x_col, y_col)
    elif suffix in (".geojson", ".json"):
        records, file_crs = _geojson_records(path)
    elif suffix == ".gpkg":
        records, file_crs = _gpkg_records(path, layer)
    else:
        raise ValueError(f"{path}: unsupported samples format {suffix!r} (use .csv, .geojson, .gpkg)")
    return _build_samples(records, CRS.from_user_input(crs or file_crs), str(path), label_col, id_col)


def _csv_records(path: Path, crs: CRS | str | None, x_col: str | None,
                 y_col: str | None) -> tuple[list[_Record], CRS | str | None]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        columns = list(reader.fieldnames or [])
    if x_col is None or y_col is None:
        lower = {c.lower(): c for c in columns}
        pair = next((p for p in _XY_COLUMNS if p[0] in lower and p[1] in lower), None)
        if pair is None:
            raise ValueError(f"{path}: no coordinate columns (longitude/latitude, lon/lat or x/y) "
                             f"among {columns}; pass x_col=, y_col=")
        x_col, y_col = lower[pair[0]], lower[pair[1]]
    geographic = x_col.lower() in _GEOGRAPHIC
    if crs is None and not geographic:
        raise ValueError(f"{path}: coordinates in columns {x_col!r}/{y_col!r} need crs= (e.g. 'EPSG:32631')")
    records = []
    for i, row in enumerate(rows):
        try:
            xy = [float(row[x_col]), float(row[y_col])]
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path}: row {i + 2} has no numeric {x_col}/{y_col}: {row}") from e
        records.append(({"type": "Point", "coordinates": xy}, row, str(i)))
    return records, crs or "EPSG:4326"


def _geojson_records(path: Path) -> tuple[list[_Record], str]:
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
    features = doc.get("features") if doc.get("type") == "FeatureCollection" else [doc]
    if not features or any(f.get("type") != "Feature" for f in features):
        raise ValueError(f"{path}: expected a GeoJSON FeatureCollection of Features")
    file_crs = ((doc.get("crs") or {}).get("properties") or {}).get("name", "EPSG:4326")
    records = [(f.get("geometry") or {}, f.get("properties") or {}, str(f.get("id", i)))
               for i, f in enumerate(features)]
    return records, file_crs


def _gpkg_records(path: Path, layer: str | None) -> tuple[list[_Record], Any]:
    try:
        from pyogrio.raw import read as ogr_read
    except ImportError as e:
        raise ImportError(f"reading {path} needs the optional package pyogrio "
                          "(pip install pyogrio), or export the layer to GeoJSON or CSV") from e
    meta, fids, geometries, fields = ogr_read(path, layer=layer, return_fids=True)
    names = list(meta["fields"])
    records = []
    for i, wkb in enumerate(geometries):
        props = {n: fields[j][i] for j, n in enumerate(names)}
        records.append((wkb_geometry(bytes(wkb)), props, str(fids[i])))
    return records, meta["crs"]


def _parse_day(value: Any) -> np.datetime64:
    text = str(value).strip() if value is not None else ""
    try:
        return np.datetime64(text[:10], "D") if text else np.datetime64("NaT", "D")
    except ValueError:
        raise ValueError(f"{value!r} is not an ISO date (YYYY-MM-DD)") from None


def _build_samples(records: list[_Record], crs: CRS, source: str, label_col: str,
                   id_col: str) -> Samples:
    """Validate and flatten records (MultiPoints become one sample per point)."""
    if not records:
        raise ValueError(f"{source} holds no samples")
    ids, labels, geoms, props_out, start, end = [], [], [], [], [], []
    for geom, props, default_id in records:
        fid = str(props.get(id_col, default_id))
        if label_col not in props or props[label_col] in (None, ""):
            raise ValueError(f"{source}: sample {fid!r} has no {label_col!r} value; fields: {sorted(props)}")
        kind = geom.get("type")
        parts = ([{"type": "Point", "coordinates": c} for c in geom["coordinates"]]
                 if kind == "MultiPoint" else [geom])
        if kind not in _GEOMETRY_TYPES + ("MultiPoint",):
            raise ValueError(f"{source}: sample {fid!r} has geometry {kind!r}; supported: "
                             f"{list(_GEOMETRY_TYPES) + ['MultiPoint']}")
        for k, part in enumerate(parts):
            ids.append(fid if len(parts) == 1 else f"{fid}:{k}")
            labels.append(props[label_col])
            geoms.append(part)
            props_out.append(dict(props))
            start.append(_parse_day(props.get("start_date", props.get("date"))))
            end.append(_parse_day(props.get("end_date", props.get("date"))))
    return Samples(ids=ids, labels=labels, geometries=geoms, crs=crs,
                   start=np.array(start, "datetime64[D]"), end=np.array(end, "datetime64[D]"),
                   properties=props_out, source=source)


def wkb_geometry(buf: bytes) -> dict[str, Any]:
    """GeoJSON dict of a WKB geometry (ISO or extended WKB), 2D (Z and M dropped), by shapely."""
    import shapely

    return json.loads(shapely.to_geojson(shapely.force_2d(shapely.from_wkb(buf))))


# --------------------------------------------------------------------------- locating


@dataclass
class Located:
    """Samples on a stack's pixel grid.

    ``rows``/``cols`` is the anchor pixel (the point's pixel, a polygon's bounding-box
    centre); ``boxes`` the pixel bounding box ``(row0, col0, row1, col1)`` (exclusive end).
    """

    rows: np.ndarray
    cols: np.ndarray
    boxes: np.ndarray
    inside: np.ndarray
    geometries: list[dict[str, Any]]
    outside_ids: list[str]


def _coords(geom: dict[str, Any]) -> np.ndarray:
    """All vertices of a Point/Polygon/MultiPolygon as an (n, 2) array."""
    if geom["type"] == "Point":
        return np.asarray(geom["coordinates"], float).reshape(1, 2)
    polys = geom["coordinates"] if geom["type"] == "MultiPolygon" else [geom["coordinates"]]
    return np.concatenate([np.asarray(ring, float).reshape(-1, 2) for poly in polys for ring in poly])


def _to_crs(samples: Samples, crs: CRS) -> list[dict[str, Any]]:
    """Geometries in ``crs``; points are transformed in one batch."""
    if samples.crs == crs:
        return samples.geometries
    out = list(samples.geometries)
    pts = [i for i, g in enumerate(out) if g["type"] == "Point"]
    if pts:
        xs, ys = rasterio.warp.transform(samples.crs, crs, [out[i]["coordinates"][0] for i in pts],
                                         [out[i]["coordinates"][1] for i in pts])
        for i, x, y in zip(pts, xs, ys):
            out[i] = {"type": "Point", "coordinates": [x, y]}
    for i, g in enumerate(out):
        if g["type"] != "Point":
            out[i] = rasterio.warp.transform_geom(samples.crs, crs, g)
    return out


def locate(stack: Stack, samples: Samples, *, on_outside: OnOutside = "warn") -> Located:
    """Transform samples to ``stack``'s CRS and find their pixels (floor of the inverse transform).

    WGS84 lon/lat to the MODIS sinusoidal sphere is PROJ's ballpark transform (coordinates
    taken as-is on the sphere), which reproduces the row/col of MODIS sample tables.
    """
    geoms = _to_crs(samples, stack.crs)
    inv = ~stack.transform
    boxes = np.zeros((len(geoms), 4))
    for i, g in enumerate(geoms):
        cols, rows = inv @ _coords(g).T
        if g["type"] == "Point":
            r, c = np.floor(rows[0]), np.floor(cols[0])
            boxes[i] = (r, c, r + 1, c + 1)
        else:
            boxes[i] = (np.floor(rows.min()), np.floor(cols.min()), np.ceil(rows.max()), np.ceil(cols.max()))
    boxes = boxes.astype(np.int64)
    inside = ((boxes[:, 2] > 0) & (boxes[:, 0] < stack.height)
              & (boxes[:, 3] > 0) & (boxes[:, 1] < stack.width))
    outside = [samples.ids[i] for i in np.flatnonzero(~inside)]
    if outside and on_outside != "ignore":
        msg = (f"{len(outside)} of {len(samples)} samples of {samples.source} lie outside stack "
               f"{stack.path} ({stack.height}x{stack.width} px): ids {outside[:20]}"
               f"{' ...' if len(outside) > 20 else ''}")
        if on_outside == "raise":
            raise ValueError(msg)
        warnings.warn(msg, stacklevel=2)
    return Located(rows=(boxes[:, 0] + boxes[:, 2] - 1) // 2, cols=(boxes[:, 1] + boxes[:, 3] - 1) // 2,
                   boxes=boxes, inside=inside, geometries=geoms, outside_ids=outside)


def encode_labels(labels: Sequence[Any], *, class_names: Sequence[str] | None = None,
                  label_map: Mapping[Any, int] | None = None) -> np.ndarray:
    """Class ids (int64) of labels: index in ``class_names``, ``label_map[label]``, or the
    label itself when it is an integer. Unknown labels are an error listing them."""
    if class_names is not None and label_map is not None:
        raise ValueError("pass class_names= or label_map=, not both")
    if class_names is not None:
        lookup = {str(n): i for i, n in enumerate(class_names)}
    elif label_map is not None:
        lookup = {str(k): int(v) for k, v in label_map.items()}
    else:
        try:
            return np.array([int(str(v)) for v in labels], np.int64)
        except ValueError:
            raise ValueError(f"labels are not integers ({sorted({str(v) for v in labels})}); "
                             "pass class_names= or label_map=") from None
    unknown = sorted({str(v) for v in labels} - lookup.keys())
    if unknown:
        raise ValueError(f"labels {unknown} are not in the class list {sorted(lookup)}")
    return np.array([lookup[str(v)] for v in labels], np.int64)


# --------------------------------------------------------------------------- chips


@dataclass
class Chip:
    """A ``chip_size`` square of a stack with a sparse label raster (-1 = unlabelled)."""

    x: StackArray
    label: np.ndarray
    window: Window
    ids: list[str]


def _group(rows: np.ndarray, cols: np.ndarray, radius: int | None) -> list[np.ndarray]:
    """Greedy grouping: each seed (in row, col order) takes the ungrouped anchors within
    ``radius`` pixels (Chebyshev) of it. ``radius=None``: one group per anchor."""
    order = np.lexsort((cols, rows))
    if radius is None:
        return [np.array([i]) for i in order]
    free = np.ones(len(rows), bool)
    groups = []
    for seed in order:
        if not free[seed]:
            continue
        near = free & (np.abs(rows - rows[seed]) <= radius) & (np.abs(cols - cols[seed]) <= radius)
        groups.append(np.flatnonzero(near))
        free &= ~near
    return groups


def _label_raster(window: Window, loc: Located, class_ids: np.ndarray, transform: Affine,
                  ignore_index: int) -> tuple[np.ndarray, list[int]]:
    """Labels of every sample touching ``window``: polygons rasterized, then points on top;
    a pixel claimed by points of different classes becomes ``ignore_index``."""
    r0, c0, h, w = int(window.row_off), int(window.col_off), int(window.height), int(window.width)
    b = loc.boxes
    touches = (b[:, 2] > r0) & (b[:, 0] < r0 + h) & (b[:, 3] > c0) & (b[:, 1] < c0 + w)
    hit = np.flatnonzero(loc.inside & touches)
    polys = [(loc.geometries[i], int(class_ids[i])) for i in hit if loc.geometries[i]["type"] != "Point"]
    label = np.full((h, w), ignore_index, np.int64)
    if polys:
        label[:] = rasterio.features.rasterize(
            polys, out_shape=(h, w), transform=rasterio.windows.transform(window, transform),
            fill=ignore_index, dtype="int32")
    claimed: dict[tuple[int, int], int] = {}
    for i in hit:
        if loc.geometries[i]["type"] == "Point":
            rc = (int(b[i, 0]) - r0, int(b[i, 1]) - c0)
            k = int(class_ids[i])
            claimed[rc] = k if claimed.get(rc, k) == k else ignore_index
    for (r, c), k in claimed.items():
        label[r, c] = k
    return label, [int(i) for i in hit]


def chips_from_points(stack: Stack, samples: Samples, *, chip_size: int,
                      class_names: Sequence[str] | None = None,
                      label_map: Mapping[Any, int] | None = None, ignore_index: int = -1,
                      group_radius: int | None = None, bands: Sequence[str] | None = None,
                      until: str | np.datetime64 | None = None,
                      on_outside: OnOutside = "warn") -> list[Chip]:
    """Chips centred on samples, with every sample falling in a chip labelled in it.

    ``group_radius=None``: one chip per sample. ``group_radius=r`` (pixels): samples within
    ``r`` px of a seed share one chip centred on them, so dense clusters do not yield many
    near-identical chips; ``r`` may be at most ``(chip_size - 1) // 2`` so a group fits.
    Polygons are anchored at their bounding-box centre and clipped to the chip.
    """
    if chip_size < 1:
        raise ValueError(f"chip_size must be positive, got {chip_size}")
    if group_radius is not None and not 0 <= group_radius <= (chip_size - 1) // 2:
        raise ValueError(f"group_radius={group_radius} must be in 0..{(chip_size - 1) // 2} "
                         f"for chip_size={chip_size}")
    class_ids = encode_labels(samples.labels, class_names=class_names, label_map=label_map)
    loc = locate(stack, samples, on_outside=on_outside)
    inside = np.flatnonzero(loc.inside)
    windows = []
    for g in _group(loc.rows[inside], loc.cols[inside], group_radius):
        rows, cols = loc.rows[inside[g]], loc.cols[inside[g]]
        centre_r, centre_c = (rows.min() + rows.max()) // 2, (cols.min() + cols.max()) // 2
        windows.append(Window(int(centre_c) - chip_size // 2, int(centre_r) - chip_size // 2,
                              chip_size, chip_size))
    if not windows:
        return []
    arrays = stack.read_many(windows, bands=bands, until=until)
    chips = []
    for window, x in zip(windows, arrays):
        label, hit = _label_raster(window, loc, class_ids, stack.transform, ignore_index)
        chips.append(Chip(x=x, label=label, window=window, ids=[samples.ids[i] for i in hit]))
    return chips


# --------------------------------------------------------------------------- pixel series


@dataclass
class PointSeries:
    """Per-point time series: ``data`` (N, T, C) float32 (NaN = invalid), ``valid`` (N, T)."""

    data: np.ndarray
    valid: np.ndarray
    dates: np.ndarray
    bands: list[str]
    ids: list[str]
    labels: list[Any]
    inside: np.ndarray


def pixel_series_from_points(stack: Stack, samples: Samples, *, bands: Sequence[str] | None = None,
                             until: str | np.datetime64 | None = None,
                             on_outside: OnOutside = "warn") -> PointSeries:
    """The time series of each point's pixel; points outside the stack get all-invalid rows
    (and are reported), so rows stay aligned with ``samples``."""
    polys = [samples.ids[i] for i in np.flatnonzero(~samples.is_point)]
    if polys:
        raise ValueError(f"{samples.source}: pixel series need points; samples {polys[:10]} are "
                         "polygons (use chips_from_points)")
    loc = locate(stack, samples, on_outside=on_outside)
    rows, cols = loc.rows, loc.cols
    r0, c0 = int(rows.min()), int(cols.min())
    h, w = int(rows.max()) - r0 + 1, int(cols.max()) - c0 + 1
    if h * w <= max(4096, 64 * len(rows)):  # one read of the bounding window
        block = stack.read(Window(c0, r0, w, h), bands=bands, until=until)
        data = block.data[:, :, rows - r0, cols - c0].transpose(2, 0, 1)
        valid = block.valid[:, rows - r0, cols - c0].T
        dates, names = block.dates, block.bands
    else:  # scattered points: one 1x1 read per point, each file opened once
        blocks = stack.read_many([Window(int(c), int(r), 1, 1) for r, c in zip(rows, cols)],
                                 bands=bands, until=until)
        data = np.stack([b.data[:, :, 0, 0] for b in blocks])
        valid = np.stack([b.valid[:, 0, 0] for b in blocks])
        dates, names = blocks[0].dates, blocks[0].bands
    return PointSeries(data=np.ascontiguousarray(data), valid=np.ascontiguousarray(valid),
                       dates=dates, bands=names, ids=list(samples.ids), labels=list(samples.labels),
                       inside=loc.inside)
