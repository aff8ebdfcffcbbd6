"""Pre-training land-cover classes and the mappings from land-cover products onto them.

AgriFM is pre-trained to predict, per cell, the share of 8 broad land-cover classes
(GLC_FCS30D aggregated). Any categorical land-cover raster can supervise pre-training once its
codes are mapped onto these classes; the presets below cover the common products.

A *mapping* is ``dict[int, int]``: raster value -> class index (position in :data:`CLASSES`), or
:data:`NODATA` (-1) for values that are known but carry no class (fill values, snow and ice,
unlabelled). A raster value that is *absent* from the mapping is also treated as no-data, but it
is counted and reported (or, with ``strict=True``, an error): an unknown code usually means the
wrong preset, and must never pass silently.

Choices (documented because they change the targets):

* GLC_FCS30D 140 (lichens and mosses) -> grassland: low, non-woody cover, spectrally closest.
* GLC_FCS30D 150/152/153 (sparse vegetation, < 15 % cover) -> bare: the signal is dominated by
  soil or rock, and these areas are never cropped.
* Permanent ice and snow (GLC 220, WorldCover 70, Dynamic World 8, eo-learn 10) -> no-data: none of
  the 8 classes describes it, and it would only teach the model to recognise snow.
* eo-learn LULC 7 (tundra) -> grassland, like lichens and mosses.
"""

from __future__ import annotations

import json
import warnings
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from agrifm.errors import AgrifmError

__all__ = [
    "CLASSES",
    "NODATA",
    "PRESETS",
    "UnmappedCodesError",
    "load_mapping",
    "apply_mapping",
    "report_unmapped",
]

CLASSES: tuple[str, ...] = (
    "cropland",
    "forest",
    "shrubland",
    "grassland",
    "wetland",
    "water",
    "impervious",
    "bare",
)
"""The pre-training classes; the order is the class index (and the fraction channel)."""

NODATA = -1
"""Class index of pixels that carry no class (excluded from the fractions)."""

_NODATA_NAMES = frozenset({"nodata", "no-data", "no_data", "none", "ignore"})


def _spec(groups: dict[str, list[int]]) -> dict[int, int]:
    """Build a mapping from ``{class name or "nodata": [codes]}``."""
    out: dict[int, int] = {}
    for name, codes in groups.items():
        for code in codes:
            out[code] = NODATA if name == "nodata" else CLASSES.index(name)
    return out


PRESETS: dict[str, dict[int, int]] = {
    # GLC_FCS30D fine legend (Zhang et al. 2024), the product AgriFM was pre-trained on.
    "glc_fcs30d": _spec(
        {
            "cropland": [10, 11, 12, 20],
            "forest": [51, 52, 61, 62, 71, 72, 81, 82, 91, 92],
            "shrubland": [120, 121, 122],
            "grassland": [130, 140],
            "wetland": [181, 182, 183, 184, 185, 186, 187],
            "impervious": [190],
            "bare": [150, 152, 153, 200, 201, 202],
            "water": [210],
            "nodata": [0, 220, 250],
        }
    ),
    # ESA WorldCover 10 m (2020/2021).
    "worldcover": _spec(
        {
            "forest": [10],
            "shrubland": [20],
            "grassland": [30, 100],
            "cropland": [40],
            "impervious": [50],
            "bare": [60],
            "water": [80],
            "wetland": [90, 95],
            "nodata": [0, 70],
        }
    ),
    # Google Dynamic World "label" band.
    "dynamic_world": _spec(
        {
            "water": [0],
            "forest": [1],
            "grassland": [2],
            "wetland": [3],
            "cropland": [4],
            "shrubland": [5],
            "impervious": [6],
            "bare": [7],
            "nodata": [8],
        }
    ),
    # eo-learn LULC legend (the Slovenia example patch); 0 is "no data".
    "eolearn_lulc": _spec(
        {
            "cropland": [1],
            "forest": [2],
            "grassland": [3, 7],
            "shrubland": [4],
            "water": [5],
            "wetland": [6],
            "impervious": [8],
            "bare": [9],
            "nodata": [0, 10],
        }
    ),
}


class UnmappedCodesError(AgrifmError, ValueError):
    """Raised (``strict=True``) when a land-cover raster holds codes that no mapping covers."""


def _from_json_object(obj: Mapping[str, object], where: str) -> dict[int, int]:
    """Validate a user mapping ``{"<raster value>": "<class name>" | null | "nodata"}``."""
    out: dict[int, int] = {}
    for key, name in obj.items():
        try:
            code = int(key)
        except (TypeError, ValueError):
            raise ValueError(f"{where}: key {key!r} is not an integer raster value") from None
        if name is None or (isinstance(name, str) and name.lower() in _NODATA_NAMES):
            out[code] = NODATA
        elif isinstance(name, str) and name.lower() in CLASSES:
            out[code] = CLASSES.index(name.lower())
        elif isinstance(name, int) and not isinstance(name, bool) and -1 <= name < len(CLASSES):
            out[code] = name  # already a class index (what load_mapping returns)
        else:
            raise ValueError(
                f"{where}: value {key!r} maps to unknown class {name!r}; "
                f"expected one of {list(CLASSES)} or null/'nodata'"
            )
    if not out:
        raise ValueError(f"{where}: the mapping is empty")
    return out


def load_mapping(spec: str | Path | Mapping[str | int, object] | None) -> dict[int, int]:
    """Resolve a mapping given as a preset name, a JSON file, a dict, or None (GLC_FCS30D).

    JSON files and dicts map raster values (keys, strings or ints) to class names; values not
    listed are no-data (and reported by :func:`apply_mapping`); ``null``/``"nodata"`` marks
    a value as no-data explicitly, which silences the report.
    """
    if spec is None:
        return dict(PRESETS["glc_fcs30d"])
    if isinstance(spec, Mapping):
        return _from_json_object({str(k): v for k, v in spec.items()}, "class mapping")
    text = str(spec)
    if text.lower() in PRESETS:
        return dict(PRESETS[text.lower()])
    path = Path(text)
    if not path.is_file():
        raise ValueError(
            f"class mapping {text!r} is neither a preset ({', '.join(PRESETS)}) nor a JSON file"
        )
    try:
        obj = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"class mapping {path}: invalid JSON ({err})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"class mapping {path}: expected a JSON object, got {type(obj).__name__}")
    return _from_json_object(obj, f"class mapping {path}")


def apply_mapping(
    raster: np.ndarray,
    mapping: Mapping[int, int],
    *,
    nodata: float | None = None,
    strict: bool = False,
    where: str = "land cover",
) -> tuple[np.ndarray, Counter[int]]:
    """Map raster codes to class indices (int8, :data:`NODATA` where no class).

    Returns the class array and a counter of pixels per code the mapping does not cover (the
    raster's own ``nodata`` value excluded). With ``strict=True`` such codes raise
    :class:`UnmappedCodesError` naming ``where``; otherwise the caller reports them (see
    :func:`report_unmapped`) - counting them here lets a builder report once per run rather
    than once per chip.
    """
    values, inverse = np.unique(np.asarray(raster), return_inverse=True)
    lut = np.full(values.shape, NODATA, dtype=np.int8)
    unmapped: Counter[int] = Counter()
    counts = np.bincount(inverse.ravel(), minlength=values.size)
    for i, v in enumerate(values.tolist()):
        if nodata is not None and (v == nodata or (v != v and nodata != nodata)):
            continue
        if v != v:  # NaN in a float raster without a declared nodata: treat as no-data
            continue
        code = int(v)
        if code == v and code in mapping:
            lut[i] = mapping[code]
        else:
            unmapped[code] += int(counts[i])
    if strict and unmapped:
        raise UnmappedCodesError(
            f"{where}: codes outside the class mapping (code: pixels): {dict(sorted(unmapped.items()))}"
        )
    return lut[inverse.reshape(np.shape(raster))], unmapped


def report_unmapped(unmapped: Mapping[int, int], where: str = "land cover") -> None:
    """Warn about codes outside the mapping, with pixel counts (no-op when there are none)."""
    if unmapped:
        total = sum(unmapped.values())
        warnings.warn(
            f"{where}: {total} pixels hold codes outside the class mapping and were treated as "
            f"no-data (code: pixels): {dict(sorted(unmapped.items()))}; pass a mapping that "
            "lists them (null = no-data) or use strict mode to make this an error",
            UserWarning,
            stacklevel=2,
        )
