"""A class map as the strata of an accuracy assessment: grid, pixel area, class names, and the
pixel count of every class, read in row strips so a large map never loads whole."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agrifm.errors import AgrifmError

__all__ = ["ClassMap", "open_class_map", "parse_classes_file"]

_STRIP_PIXELS = 1 << 22  # pixels per strip read (~4 M)


@dataclass
class ClassMap:
    """What the assessment needs of a class map (the raster stays on disk)."""

    path: Path
    crs: Any
    transform: Any
    width: int
    height: int
    pixel_area_ha: float
    names: dict[int, str]  # class value -> name, from the map's CLASS_NAMES tag or --classes

    def strips(self) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """``(row0, values, valid)`` for consecutive row strips; ``valid`` is False on nodata."""
        import rasterio
        from rasterio.windows import Window

        rows = max(1, _STRIP_PIXELS // max(self.width, 1))
        with rasterio.open(self.path) as src:
            for r0 in range(0, self.height, rows):
                win = Window(0, r0, self.width, min(rows, self.height - r0))
                yield r0, src.read(1, window=win), src.read_masks(1, window=win) > 0

    def class_counts(self) -> dict[int, int]:
        """Valid (non-nodata) pixels per class value, ascending values."""
        total: dict[int, int] = {}
        for _, values, valid in self.strips():
            v, c = np.unique(values[valid], return_counts=True)
            for value, count in zip(v.tolist(), c.tolist()):
                total[int(value)] = total.get(int(value), 0) + int(count)
        return dict(sorted(total.items()))

    def name(self, value: int) -> str:
        """The class's name, or its value as a string when no name is known."""
        return self.names.get(int(value), str(int(value)))


def parse_classes_file(path: str | Path) -> dict[int, str]:
    """``--classes NAMES.json``: a list (index = class value) or an object ``{"value": "name"}``."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise AgrifmError(f"--classes {path}: cannot read a JSON list or object of class names ({err})") from None
    if isinstance(doc, list):
        return {i: str(n) for i, n in enumerate(doc)}
    if isinstance(doc, dict):
        try:
            return {int(k): str(v) for k, v in doc.items()}
        except ValueError:
            raise AgrifmError(f"--classes {path}: object keys must be integer class values, got {list(doc)[:5]}") from None
    raise AgrifmError(f"--classes {path}: expected a JSON list or object of class names")


def _names_from_tags(tags: dict[str, str]) -> dict[int, str]:
    raw = tags.get("CLASS_NAMES")
    if not raw:
        return {}
    try:
        names = json.loads(raw)
    except json.JSONDecodeError:
        names = [n.strip() for n in raw.split(",")]
    return {i: str(n) for i, n in enumerate(names)} if isinstance(names, list) else {}


def open_class_map(path: str | Path, classes: str | Path | None = None) -> ClassMap:
    """Open ``path`` (single-band integer GeoTIFF in a projected CRS) and its class names."""
    import rasterio

    path = Path(path)
    if not path.is_file():
        raise AgrifmError(f"--map {path} does not exist")
    try:
        src = rasterio.open(path)
    except rasterio.RasterioIOError as err:
        raise AgrifmError(f"--map {path}: not a raster rasterio can read ({err})") from None
    with src:
        if not np.issubdtype(np.dtype(src.dtypes[0]), np.integer):
            raise AgrifmError(f"--map {path}: band 1 is {src.dtypes[0]}; a class map has integer class values")
        if src.crs is None:
            raise AgrifmError(f"--map {path} has no CRS; areas need a projected CRS")
        if not src.crs.is_projected:
            raise AgrifmError(f"--map {path} is in a geographic CRS ({src.crs.to_string()}): pixel areas in "
                              "degrees are not areas; reproject the map to an (equal-area) projected CRS")
        t = src.transform
        unit = src.crs.linear_units_factor[1]  # metres per CRS unit
        pixel_area_ha = abs(t.a * t.e - t.b * t.d) * unit**2 / 10_000.0
        names = parse_classes_file(classes) if classes else _names_from_tags(src.tags())
        return ClassMap(path=path, crs=src.crs, transform=t, width=src.width, height=src.height,
                        pixel_area_ha=float(pixel_area_ha), names=names)
