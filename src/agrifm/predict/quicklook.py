"""PNG quicklook of a class map: the map in its class colours, a legend, a title.

Reads a decimated view (via the COG overviews) so large scenes cost little memory; small
scenes are drawn with nearest-neighbour upscaling so every pixel stays a crisp square.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from agrifm.io import atomic_output
from agrifm.predict.cog import NODATA

__all__ = ["write_quicklook"]

NODATA_RGB = (0.85, 0.85, 0.85)


def _read_map(path: Path, max_size: int) -> tuple[np.ndarray, dict]:
    """Class map decimated to at most ``max_size`` px a side, plus names/colours/geometry."""
    import rasterio
    from rasterio.enums import Resampling

    with rasterio.open(path) as ds:
        scale = max(1.0, max(ds.width, ds.height) / max_size)
        shape = (max(1, round(ds.height / scale)), max(1, round(ds.width / scale)))
        arr = ds.read(1, out_shape=shape, resampling=Resampling.nearest)
        try:
            cmap = ds.colormap(1)
        except ValueError:
            cmap = {}
        info = dict(
            names=json.loads(ds.tags().get("CLASS_NAMES", "[]")),
            colors=[cmap[i][:3] for i in sorted(k for k in cmap if k != NODATA)],
            size=(ds.width, ds.height), res=ds.res, crs=ds.crs,
        )
    return arr, info


def _geometry(info: dict) -> str:
    """'50 x 48 px, 10 m, EPSG:32631' (rows x cols; metres spelled out when projected)."""
    width, height = info["size"]
    crs = info["crs"]
    if crs is None:
        return f"{height} x {width} px"
    unit = "m" if crs.is_projected and crs.linear_units in ("metre", "meter") else crs.linear_units or ""
    name = f"EPSG:{crs.to_epsg()}" if crs.to_epsg() else short_crs_name(crs)
    return f"{height} x {width} px, {info['res'][0]:g} {unit}, {name}".replace(" , ", ", ")


def _legend(arr: np.ndarray, names: Sequence[str], colors: Sequence[Sequence[int]]) -> list:
    """Legend handles for the classes present (all when none is), with their area share."""
    from matplotlib.patches import Patch

    counts = np.bincount(arr.ravel(), minlength=256)
    total = max(1, int(counts.sum()))
    present = [k for k in range(len(names)) if counts[k]] or list(range(len(names)))
    handles = [Patch(facecolor=np.asarray(colors[k][:3]) / 255, edgecolor="0.3", linewidth=0.5,
                     label=f"{names[k]}  ({100 * counts[k] / total:.1f} %)") for k in present]
    if counts[NODATA]:
        handles.append(Patch(facecolor=NODATA_RGB, edgecolor="0.3", linewidth=0.5,
                             label=f"no data  ({100 * counts[NODATA] / total:.1f} %)"))
    return handles


def _draw_points(ax, points: Sequence[tuple[int, int, bool]], scale: float) -> list:
    """Reference points on the map (white: the map agrees, red: it does not); legend handles."""
    from matplotlib.lines import Line2D

    handles = []
    for agree, colour, label in ((True, "white", "point, map agrees"), (False, "red", "point, map disagrees")):
        sel = [(r, c) for r, c, a in points if bool(a) == agree]
        if sel:
            rows, cols = np.asarray(sel, dtype=float).T
            ax.scatter((cols + 0.5) * scale - 0.5, (rows + 0.5) * scale - 0.5, s=28, c=colour, edgecolors="black",
                       linewidths=0.8, marker="o" if agree else "X", zorder=3)
            handles.append(Line2D([], [], marker="o" if agree else "X", linestyle="", markerfacecolor=colour,
                                  markeredgecolor="black", label=f"{label} ({len(sel)})"))
    return handles


def _scale_bar(ax, info: dict, scale: float) -> None:
    """A scale bar (1-2-5 x 10^n m or km, about a fifth of the width) on projected maps in metres."""
    crs = info["crs"]
    if crs is None or not crs.is_projected or crs.linear_units not in ("metre", "meter"):
        return
    from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

    px_m = info["res"][0] / scale  # metres per drawn pixel
    target = info["size"][0] * info["res"][0] / 5
    length = max(v * 10 ** e for e in range(0, 8) for v in (1, 2, 5) if v * 10 ** e <= target) if target >= 1 else 1
    label = f"{length / 1000:g} km" if length >= 1000 else f"{length:g} m"
    ax.add_artist(AnchoredSizeBar(ax.transData, length / px_m, label, "lower left", pad=0.4, color="black",
                                  frameon=True, size_vertical=0.012 * info["size"][1] * scale,
                                  fontproperties={"size": 8}))


def write_quicklook(
    map_path: str | os.PathLike[str],
    png_path: str | os.PathLike[str] | None = None,
    *,
    class_names: Sequence[str] | None = None,
    class_colors: Sequence[Sequence[int]] | None = None,
    title: str | None = None,
    subtitle: str | None = None,
    max_size: int = 1024,
    points: Sequence[tuple[int, int, bool]] | None = None,
) -> Path:
    """Render ``map_path`` (uint8 classes, 255 nodata) to ``png_path`` (default ``<MAP>.png``).

    Names and colours default to the map's ``CLASS_NAMES`` tag and colour table. ``points``
    (full-resolution ``row, col, agrees``) are drawn as reference points, white when the map
    agrees, red when not. Projected maps get a scale bar. Written to a temporary file in the
    destination folder, then renamed.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    map_path = Path(map_path)
    png = Path(png_path) if png_path is not None else map_path.with_suffix(".png")
    arr, info = _read_map(map_path, max_size)
    names = list(class_names if class_names is not None else info["names"])
    colors = list(class_colors if class_colors is not None else info["colors"])
    if len(colors) < len(names) or (arr[arr != NODATA] >= len(names)).any():
        raise ValueError(f"{map_path}: map values exceed its {len(names)} class names/colours")

    lut = np.tile(np.asarray(NODATA_RGB, dtype=np.float32), (256, 1))
    lut[: len(names)] = np.asarray(colors[: len(names)], dtype=np.float32)[:, :3] / 255
    rgb = lut[arr]

    h, w = arr.shape
    side = 6.0  # inches for the longer side of the map, whatever the scene size
    fig_w, fig_h = side * w / max(h, w), side * h / max(h, w)
    fig, ax = plt.subplots(figsize=(fig_w + 3.2, max(fig_h, 2.5) + 0.9), dpi=150)
    ax.imshow(rgb, interpolation="nearest")
    handles = _legend(arr, names, colors)
    if points:
        handles += _draw_points(ax, points, h / info["size"][1])
    _scale_bar(ax, info, w / info["size"][0])
    ax.set_xticks([])
    ax.set_yticks([])
    for s in ax.spines.values():
        s.set_color("0.5")
    ax.set_title(title or map_path.stem, fontsize=11, loc="left", fontweight="bold", pad=16 if subtitle else 6)
    if subtitle:
        ax.text(0, 1.012, subtitle, transform=ax.transAxes, fontsize=8, color="0.35", va="bottom")
    ax.set_xlabel(_geometry(info), fontsize=8, color="0.35")
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0),
              frameon=False, fontsize=8, handlelength=1.2, handleheight=1.2, borderaxespad=0.0)
    fig.tight_layout()
    try:
        with atomic_output(png, suffix=".tmp.png") as tmp:
            fig.savefig(tmp, format="png", facecolor="white", bbox_inches="tight", pad_inches=0.15)
    finally:
        plt.close(fig)
    return png


def short_crs_name(crs) -> str:
    """A readable name for a CRS without an EPSG code (e.g. the MODIS sinusoidal sphere)."""
    wkt = crs.to_wkt()
    import re

    m = re.search(r'PROJECTION\["([^"]+)"', wkt) or re.search(r'METHOD\["([^"]+)"', wkt)
    if m:
        return m.group(1).replace("_", " ")
    return crs.to_string()[:40]
