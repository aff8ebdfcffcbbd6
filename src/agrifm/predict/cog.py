"""Cloud-Optimized GeoTIFF outputs, written block by block and published atomically.

A :class:`CogWriter` streams windows into a tiled temporary GTiff in the destination folder
(so the scene never sits in memory), converts it with GDAL's COG driver (DEFLATE, internal
tiles, nearest/average overviews) to a second temporary file, and only :meth:`commit`
renames that onto the final path. An error before the commit removes every temporary file,
so a path that exists is always a complete product.

A class map also gets GDAL category names and a raster attribute table (value, class name,
colour). A COG cannot hold them, so they go where GDAL keeps such metadata for any GeoTIFF:
the ``MAP.tif.aux.xml`` sidecar (GDAL's PAM file, read by ``gdalinfo``, QGIS and rasterio).
It is written atomically just before the map itself is published.
"""

from __future__ import annotations

import json
import os
from xml.sax.saxutils import escape
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from agrifm.io import temp_beside, write_text_atomic

__all__ = ["NODATA", "PROB_SCALE", "CogWriter", "class_map_meta", "encode_layers", "layer_meta", "write_cog",
           "tag_value", "aux_xml_path", "categories_aux_xml", "read_categories"]

NODATA = 255
PROB_SCALE = 254  # probability p is stored as round(p * 254); 255 is nodata
COG_BLOCKSIZE = 512


def tag_value(value: Any) -> str:
    """GeoTIFF tags are strings: keep strings, JSON-encode everything else."""
    return value if isinstance(value, str) else json.dumps(value, default=str)


def _unlink(path: Path | None) -> None:
    if path is not None:
        path.unlink(missing_ok=True)


class CogWriter:
    """Write a raster block by block, then publish it as a COG with :meth:`finish` + :meth:`commit`.

    ``colormap`` maps values to RGB(A) (band 1 only); ``descriptions``/``scales`` are per band;
    ``tags`` are dataset tags (non-strings JSON-encoded); ``categories`` (class name per value
    0, 1, ...) are written with the colours as GDAL category names + attribute table in the
    ``.aux.xml`` sidecar.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        count: int,
        width: int,
        height: int,
        crs: Any,
        transform: Any,
        dtype: str = "uint8",
        nodata: float | None = NODATA,
        colormap: Mapping[int, Sequence[int]] | None = None,
        descriptions: Sequence[str] | None = None,
        scales: Sequence[float] | None = None,
        tags: Mapping[str, Any] | None = None,
        resampling: str = "nearest",
        categories: Sequence[str] | None = None,
    ) -> None:
        self.path = Path(path)
        self.resampling = resampling
        self._profile = dict(
            driver="GTiff", count=count, width=width, height=height, crs=crs, transform=transform,
            dtype=dtype, nodata=nodata, tiled=True, blockxsize=COG_BLOCKSIZE, blockysize=COG_BLOCKSIZE,
            compress="deflate", bigtiff="if_safer",
        )
        self._colormap, self._descriptions, self._scales = colormap, descriptions, scales
        self._tags = {k: tag_value(v) for k, v in (tags or {}).items()}
        self._categories = list(categories) if categories is not None else None
        self._gtiff: Path | None = None
        self._cog: Path | None = None
        self._ds: Any = None

    def __enter__(self) -> "CogWriter":
        import rasterio

        if not self.path.parent.is_dir():
            raise FileNotFoundError(f"output folder {self.path.parent} does not exist")
        self._gtiff = temp_beside(self.path, ".part.tif")
        self._ds = rasterio.open(self._gtiff, "w", **self._profile)
        if self._colormap is not None:  # libtiff wants the palette before any pixel is written
            self._ds.write_colormap(
                1, {int(k): tuple(int(x) for x in v) for k, v in self._colormap.items()})
        return self

    def write(self, array: np.ndarray, row: int, col: int) -> None:
        """Write ``array`` ``(count, h, w)`` or ``(h, w)`` with its top-left at ``(row, col)``."""
        from rasterio.windows import Window

        a = array[None] if array.ndim == 2 else array
        self._ds.write(a, window=Window(col, row, a.shape[-1], a.shape[-2]))

    def finish(self) -> Path:
        """Set the metadata, close, and convert to a temporary COG (not yet published)."""
        import rasterio.shutil

        ds = self._ds
        for i, d in enumerate(self._descriptions or (), start=1):
            ds.set_band_description(i, d)
        if self._scales is not None:
            ds.scales = tuple(float(s) for s in self._scales)
        if self._tags:
            ds.update_tags(**self._tags)
        ds.close()
        self._ds = None
        self._cog = temp_beside(self.path, ".cog.tif")
        rasterio.shutil.copy(
            self._gtiff, self._cog, driver="COG", BLOCKSIZE=COG_BLOCKSIZE, COMPRESS="DEFLATE",
            OVERVIEW_RESAMPLING=self.resampling.upper(), BIGTIFF="IF_SAFER",
        )
        _unlink(self._gtiff)
        self._gtiff = None
        return self._cog

    def commit(self) -> Path:
        """Atomically move the finished COG onto the final path."""
        if self._cog is None:
            raise RuntimeError(f"{self.path}: commit() before finish()")
        aux = aux_xml_path(self.path)
        if self._categories is not None:
            write_text_atomic(aux, categories_aux_xml(self._categories, self._colormap or {}))
        else:
            aux.unlink(missing_ok=True)  # a replaced class map's names would now lie
        os.replace(self._cog, self.path)
        self._cog = None
        return self.path

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._ds is not None:
            self._ds.close()
        _unlink(self._gtiff)
        _unlink(self._cog)  # finished but never committed: an error happened elsewhere


def class_map_meta(class_names: Sequence[str], class_colors: Sequence[Sequence[int]]) -> dict[str, Any]:
    """CogWriter keywords of a class map: colour table, band description, CLASS_NAMES tag."""
    if len(class_names) != len(class_colors):
        raise ValueError(f"{len(class_names)} class names but {len(class_colors)} colours")
    if len(class_names) > NODATA:
        raise ValueError(f"{len(class_names)} classes do not fit a uint8 map with nodata {NODATA}")
    cmap = {i: (*map(int, c[:3]), 255) for i, c in enumerate(class_colors)}
    cmap[NODATA] = (0, 0, 0, 0)
    return dict(colormap=cmap, descriptions=["class"], tags={"CLASS_NAMES": list(class_names)},
                categories=list(class_names))


def aux_xml_path(path: str | os.PathLike[str]) -> Path:
    """GDAL's PAM sidecar of a raster: ``MAP.tif`` -> ``MAP.tif.aux.xml``."""
    p = Path(path)
    return p.with_name(p.name + ".aux.xml")


# GDAL enums: field types (GFT_*) and usages (GFU_*) of a raster attribute table.
_GFT_INTEGER, _GFT_STRING = 0, 2
_GFU_NAME, _GFU_MINMAX, _GFU_RED, _GFU_GREEN, _GFU_BLUE, _GFU_ALPHA = 2, 5, 6, 7, 8, 9


def categories_aux_xml(class_names: Sequence[str], colormap: Mapping[int, Sequence[int]]) -> str:
    """A PAM ``.aux.xml`` for band 1: category names and a thematic attribute table.

    The table has one row per class value: ``Value``, ``Class``, ``Red``, ``Green``, ``Blue``,
    ``Alpha`` (colours from ``colormap``, grey where it has none).
    """
    fields = [("Value", _GFT_INTEGER, _GFU_MINMAX), ("Class", _GFT_STRING, _GFU_NAME),
              ("Red", _GFT_INTEGER, _GFU_RED), ("Green", _GFT_INTEGER, _GFU_GREEN),
              ("Blue", _GFT_INTEGER, _GFU_BLUE), ("Alpha", _GFT_INTEGER, _GFU_ALPHA)]
    lines = ['<PAMDataset>', '  <PAMRasterBand band="1">', '    <CategoryNames>']
    lines += [f"      <Category>{escape(str(n))}</Category>" for n in class_names]
    lines += ['    </CategoryNames>', '    <GDALRasterAttributeTable tableType="thematic">']
    lines += [f'      <FieldDefn index="{i}"><Name>{n}</Name><Type>{t}</Type><Usage>{u}</Usage></FieldDefn>'
              for i, (n, t, u) in enumerate(fields)]
    for value, name in enumerate(class_names):
        rgba = [*map(int, colormap.get(value, (128, 128, 128))[:3]), 255]
        cells = [str(value), escape(str(name)), *map(str, rgba)]
        lines.append(f'      <Row index="{value}">' + "".join(f"<F>{c}</F>" for c in cells) + "</Row>")
    lines += ['    </GDALRasterAttributeTable>', '  </PAMRasterBand>', '</PAMDataset>', '']
    return "\n".join(lines)


def read_categories(path: str | os.PathLike[str]) -> list[str]:
    """GDAL category names of band 1 (from the ``.aux.xml`` sidecar); empty when there are none."""
    import xml.etree.ElementTree as ET

    aux = aux_xml_path(path)
    if not aux.is_file():
        return []
    band = ET.parse(aux).getroot().find("PAMRasterBand[@band='1']")
    names = band.find("CategoryNames") if band is not None else None
    return [c.text or "" for c in names.findall("Category")] if names is not None else []


def write_cog(path: str | os.PathLike[str], array: np.ndarray, **meta: Any) -> Path:
    """Write an in-memory ``(count, h, w)``/``(h, w)`` array as a COG (small rasters, tests)."""
    a = array[None] if array.ndim == 2 else array
    with CogWriter(path, count=a.shape[0], height=a.shape[1], width=a.shape[2],
                   dtype=str(a.dtype), **meta) as w:
        w.write(a, 0, 0)
        w.finish()
        return w.commit()


def encode_layers(probs: np.ndarray, valid: np.ndarray, with_probs: bool) -> dict[str, np.ndarray]:
    """Probabilities ``(K, h, w)`` -> uint8 layers (255 = nodata where not ``valid``).

    ``map``: the arg-max class; with ``with_probs`` also ``probs`` (p x 254, K bands) and
    ``confidence`` (largest p in percent, 0-100).
    """
    out = {"map": np.where(valid, probs.argmax(0), NODATA).astype(np.uint8)}
    if with_probs:
        p = np.rint(probs * PROB_SCALE).astype(np.uint8)
        p[:, ~valid] = NODATA
        conf = np.rint(probs.max(0, initial=0.0) * 100).astype(np.uint8)
        conf[~valid] = NODATA
        out.update(probs=p, confidence=conf)
    return out


def layer_meta(layer: str, class_names: Sequence[str], class_colors: Sequence[Sequence[int]],
               tags: Mapping[str, Any]) -> dict[str, Any]:
    """CogWriter keywords of one :func:`encode_layers` layer, its encoding documented in tags."""
    names, k = list(class_names), len(class_names)
    if layer == "map":
        meta = class_map_meta(names, class_colors)
        return dict(meta, count=1, resampling="nearest", tags={**tags, **meta["tags"]})
    if layer == "probs":
        return dict(count=k, resampling="average", descriptions=names, scales=[1 / PROB_SCALE] * k,
                    tags={**tags, "CLASS_NAMES": names,
                          "PROBABILITY_ENCODING": f"probability = value / {PROB_SCALE} (GDAL scale); {NODATA} = nodata"})
    if layer == "confidence":
        return dict(count=1, resampling="average", descriptions=["confidence"],
                    tags={**tags, "CONFIDENCE_ENCODING": f"largest class probability in percent (0-100); "
                                                         f"{NODATA} = nodata"})
    raise ValueError(f"unknown output layer {layer!r} (map, probs, confidence)")
