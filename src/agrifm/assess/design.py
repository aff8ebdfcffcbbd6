"""``agrifm sample-design``: a stratified random sample of a class map for accuracy assessment.

The strata are the map classes. Allocation (Olofsson et al. 2014, section 4.1): ``proportional``
to the mapped area (their recommendation, with a minimum per class so rare classes get enough
points for their user's accuracy), ``equal``, or ``neyman`` (``n_h`` proportional to
``N_h sqrt(U_h (1 - U_h))`` from expected user's accuracies, which minimises the variance of
overall accuracy). Points sit at pixel centres, in the map's CRS; nodata pixels are never drawn.
The map is read twice in row strips (count, then draw), so it never loads whole.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agrifm.assess.maps import ClassMap, open_class_map
from agrifm.errors import AgrifmError
from agrifm.io import atomic_output, write_text_atomic

__all__ = ["allocate", "draw_sample", "Sample", "write_points", "allocation_path", "design_sample", "main"]

ALLOCATIONS = ("proportional", "equal", "neyman")
POINT_FORMATS = (".gpkg", ".geojson", ".csv")


def allocate(pixels: Sequence[int], n: int, *, method: str = "proportional", min_per_class: int = 0,
             expected_ua: Sequence[float] | None = None) -> np.ndarray:
    """Sample sizes per stratum summing to ``n``.

    Ideal shares ``n w_h / sum(w)`` with ``w_h = N_h`` (proportional), ``1`` (equal) or
    ``N_h sqrt(U_h (1 - U_h))`` (Neyman), then every stratum gets at least
    ``min(min_per_class, N_h)`` and at most ``N_h`` points (the rest re-shared among the others),
    rounded by largest remainder.
    """
    cap = np.asarray(pixels, dtype=np.int64)
    k = len(cap)
    if method not in ALLOCATIONS:
        raise AgrifmError(f"--allocation {method!r}: choose one of {', '.join(ALLOCATIONS)}")
    if n < 1:
        raise AgrifmError(f"--n {n}: the sample needs at least one point")
    if n > cap.sum():
        raise AgrifmError(f"--n {n} exceeds the {int(cap.sum())} valid (non-nodata) pixels of the map")
    if method == "neyman":
        if expected_ua is None:
            raise AgrifmError("--allocation neyman needs --expected-ua class=value,... for every class")
        u = np.asarray(expected_ua, dtype=np.float64)
        weight = cap * np.sqrt(u * (1.0 - u))
    else:
        weight = cap.astype(np.float64) if method == "proportional" else np.ones(k)
    floor = np.minimum(min_per_class, cap)
    if floor.sum() > n:
        raise AgrifmError(f"--n {n} cannot give each of the {k} map classes --min-per-class {min_per_class} points "
                          f"(needs {int(floor.sum())}); raise --n or lower --min-per-class")
    fixed = np.zeros(k, bool)
    alloc = np.zeros(k)
    while True:
        free = ~fixed
        remaining = n - alloc[fixed].sum()
        w = weight[free] if weight[free].sum() > 0 else np.ones(free.sum())
        alloc[free] = remaining * w / w.sum()
        low, high = free & (alloc < floor), free & (alloc > cap)
        if not (low.any() or high.any()):
            break
        alloc[low], alloc[high] = floor[low], cap[high]
        fixed |= low | high
    out = np.floor(alloc + 1e-9).astype(np.int64)
    short = n - out.sum()
    if short:
        order = np.argsort(-(alloc - out), kind="stable")
        order = order[out[order] < cap[order]]
        out[order[:short]] += 1
    return out


@dataclass
class Sample:
    """Drawn points: pixel rows/cols, map class values and pixel-centre coordinates (map CRS)."""

    rows: np.ndarray
    cols: np.ndarray
    values: np.ndarray
    x: np.ndarray
    y: np.ndarray


def draw_sample(cmap: ClassMap, counts: Mapping[int, int], sizes: Mapping[int, int], seed: int) -> Sample:
    """Stratified random sample without replacement: ``sizes[v]`` distinct valid pixels of class ``v``.

    Ranks are drawn per stratum among its ``counts[v]`` pixels (strip order), then located in a
    second pass over the strips, so memory stays one strip whatever the map size.
    """
    rng = np.random.default_rng(seed)
    ranks = {v: np.sort(rng.choice(counts[v], size=int(s), replace=False)) for v, s in sizes.items() if s > 0}
    seen = dict.fromkeys(ranks, 0)
    rows, cols, values = [], [], []
    for r0, strip, valid in cmap.strips():
        for v, want in ranks.items():
            idx = np.flatnonzero((strip == v) & valid)
            lo, hi = np.searchsorted(want, [seen[v], seen[v] + len(idx)])
            pos = idx[want[lo:hi] - seen[v]]
            rows.append(r0 + pos // cmap.width)
            cols.append(pos % cmap.width)
            values.append(np.full(len(pos), v, np.int64))
            seen[v] += len(idx)
    rows_a, cols_a, vals_a = (np.concatenate(a) if a else np.zeros(0, np.int64) for a in (rows, cols, values))
    order = np.lexsort((cols_a, rows_a))
    rows_a, cols_a, vals_a = rows_a[order], cols_a[order], vals_a[order]
    x, y = cmap.transform @ (cols_a + 0.5, rows_a + 0.5)
    return Sample(rows=rows_a, cols=cols_a, values=vals_a, x=np.asarray(x, float), y=np.asarray(y, float))


def _wkb_point(x: float, y: float) -> bytes:
    return struct.pack("<BIdd", 1, 1, x, y)


def write_points(sample: Sample, cmap: ClassMap, out: Path) -> None:
    """Points with ``id, map_value, map_class`` and an empty ``label`` to fill in (.gpkg/.geojson/.csv)."""
    ids = np.arange(1, len(sample.values) + 1)
    names = [cmap.name(v) for v in sample.values]
    suffix = out.suffix.lower()
    if suffix == ".csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["id", "x", "y", "map_value", "map_class", "label"])
        w.writerows([i, repr(float(x)), repr(float(y)), int(v), nm, ""]
                    for i, x, y, v, nm in zip(ids, sample.x, sample.y, sample.values, names))
        write_text_atomic(out, buf.getvalue())
    elif suffix == ".geojson":
        feats = [{"type": "Feature", "id": int(i), "geometry": {"type": "Point", "coordinates": [float(x), float(y)]},
                  "properties": {"id": int(i), "map_value": int(v), "map_class": nm, "label": ""}}
                 for i, x, y, v, nm in zip(ids, sample.x, sample.y, sample.values, names)]
        doc = {"type": "FeatureCollection", "crs": {"type": "name", "properties": {"name": cmap.crs.to_wkt()}},
               "features": feats}
        write_text_atomic(out, json.dumps(doc))
    elif suffix == ".gpkg":
        from pyogrio.raw import write as ogr_write

        geoms = np.array([_wkb_point(x, y) for x, y in zip(sample.x, sample.y)], dtype=object)
        fields = [ids.astype(np.int64), sample.values.astype(np.int64), np.array(names, dtype=object),
                  np.array([""] * len(ids), dtype=object)]
        with atomic_output(out, suffix=".tmp.gpkg") as tmp:
            ogr_write(tmp, geoms, fields, ["id", "map_value", "map_class", "label"], driver="GPKG",
                      geometry_type="Point", crs=cmap.crs.to_wkt(), layer="sample")
    else:
        raise AgrifmError(f"--out {out}: use one of {', '.join(POINT_FORMATS)}")


def allocation_path(out: Path) -> Path:
    """The allocation table saved beside the points: ``POINTS_allocation.csv``."""
    return out.with_name(f"{out.stem}_allocation.csv")


def allocation_table(cmap: ClassMap, counts: Mapping[int, int], sizes: np.ndarray,
                     expected_ua: Sequence[float] | None) -> list[dict[str, object]]:
    total = sum(counts.values())
    return [{"map_value": v, "map_class": cmap.name(v), "pixels": c, "area_ha": round(c * cmap.pixel_area_ha, 4),
             "weight": round(c / total, 6), "expected_ua": "" if expected_ua is None else expected_ua[i], "n": int(s)}
            for i, ((v, c), s) in enumerate(zip(counts.items(), sizes))]


def _format_table(rows: list[dict[str, object]]) -> str:
    cols = [c for c in rows[0] if any(r[c] != "" for r in rows)]
    cells = [[str(r[c]) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(cols, widths))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def _parse_expected_ua(text: str | None, cmap: ClassMap, values: Sequence[int]) -> list[float] | None:
    if text is None:
        return None
    by_key: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, val = part.partition("=")
        try:
            u = float(val)
        except ValueError:
            u = -1.0
        if not sep or not 0.0 <= u <= 1.0:
            raise AgrifmError(f"--expected-ua {part!r}: write class=value with a value in [0, 1]")
        by_key[key.strip()] = u
    out, missing = [], []
    for v in values:
        u = by_key.get(cmap.name(v), by_key.get(str(v)))
        missing += [cmap.name(v)] if u is None else []
        out.append(u if u is not None else 0.0)
    if missing:
        raise AgrifmError(f"--expected-ua gives no value for map classes {missing}")
    return out


def design_sample(map_path: str | Path, n: int, out: str | Path, *, min_per_class: int = 50, seed: int = 0,
                  allocation: str = "proportional", expected_ua: str | None = None, classes: str | Path | None = None,
                  overwrite: bool = False, echo: bool = True) -> list[dict[str, object]]:
    """Draw the sample and write ``out`` plus its allocation table; returns the table rows."""
    out = Path(out)
    if out.suffix.lower() not in POINT_FORMATS:
        raise AgrifmError(f"--out {out}: use one of {', '.join(POINT_FORMATS)}")
    for p in (out, allocation_path(out)):
        if p.exists() and not overwrite:
            raise AgrifmError(f"{p} exists; pass --overwrite to replace it")
    cmap = open_class_map(map_path, classes)
    counts = cmap.class_counts()
    if not counts:
        raise AgrifmError(f"--map {map_path}: every pixel is nodata")
    values = list(counts)
    ua = _parse_expected_ua(expected_ua, cmap, values)
    sizes = allocate(list(counts.values()), n, method=allocation, min_per_class=min_per_class, expected_ua=ua)
    sample = draw_sample(cmap, counts, dict(zip(values, sizes.tolist())), seed)
    table = allocation_table(cmap, counts, sizes, ua)
    if out.exists():  # --overwrite: replace, never append to, an existing GeoPackage
        out.unlink()
    write_points(sample, cmap, out)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(table[0]), lineterminator="\n")
    w.writeheader()
    w.writerows(table)
    write_text_atomic(allocation_path(out), buf.getvalue())
    if echo:
        print(f"{allocation} allocation of {n} points over {len(values)} map classes "
              f"(min {min_per_class} per class, seed {seed}; pixel {cmap.pixel_area_ha:.4g} ha):")
        print(_format_table(table))
        print(f"wrote {out} ({len(sample.values)} points, fill in 'label') and {allocation_path(out)}")
    return table


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="agrifm sample-design", description=__doc__.splitlines()[0])
    ap.add_argument("--map", required=True, help="class map GeoTIFF (the strata)")
    ap.add_argument("--n", type=int, required=True, help="total sample size")
    ap.add_argument("--out", required=True, help="points file to write: .gpkg, .geojson or .csv")
    ap.add_argument("--min-per-class", type=int, default=50, help="at least this many points per class (default 50)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--allocation", choices=ALLOCATIONS, default="proportional")
    ap.add_argument("--expected-ua", default=None, help="for neyman: expected user's accuracies, class=value,...")
    ap.add_argument("--classes", default=None, help="class names JSON (list or {value: name}) if the map has none")
    ap.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    a = ap.parse_args(argv)
    design_sample(a.map, a.n, a.out, min_per_class=a.min_per_class, seed=a.seed, allocation=a.allocation,
                  expected_ua=a.expected_ua, classes=a.classes, overwrite=a.overwrite)
    return 0
