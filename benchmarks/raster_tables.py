#!/usr/bin/env python
"""Pixel time-series tables from the real rasters in ``../shared/data``, for ``accuracy.py``.

``accuracy.py`` promises AgriFM holds up on held-out tables of other sensors and regions. The
Mato Grosso samples are one table; this script cuts more from the other real data, each as
``OUT/<name>/train.csv`` + ``test.csv`` split by spatial block (east/west halves, so neighbouring
pixels never sit on both sides):

- ``belgium_cropland``: Sentinel-2 monthly composites (12 dates x 9 bands, 2 months fully
  nodata, so gaps) with the WorldCereal cropland pseudo-labels (other / cropland);
- ``slovenia_landcover``: Sentinel-2 NDVI (68 dates over 2.5 years, cloudy dates blanked from
  ``IS_VALID``: ~40 % gaps) with the RABA land-use classes present in numbers;
- ``mato_grosso_vi``: the Mato Grosso samples reduced to the Sinop cube's NDVI + EVI
  (the demo's bands), whole table; split it with ``accuracy.py --holdout``;
- ``mato_grosso_small``: a quarter of the Mato Grosso sample locations (few training series).

    python benchmarks/raster_tables.py --out runs/tables
    python benchmarks/accuracy.py --train runs/tables/belgium_cropland/train.csv \\
        --test runs/tables/belgium_cropland/test.csv --seeds 2
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from agrifm.data.tables import grouped_split, read_table  # noqa: E402


def _lonlat(transform, crs, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from rasterio.transform import xy
    from rasterio.warp import transform as warp

    x, y = xy(transform, rows, cols)
    lon, lat = warp(crs, "EPSG:4326", np.asarray(x), np.asarray(y))
    return np.asarray(lon), np.asarray(lat)


def _long(values: np.ndarray, dates: list[str], bands: list[str], labels: np.ndarray, lon: np.ndarray,
          lat: np.ndarray, ids: np.ndarray) -> pd.DataFrame:
    """(N, T, C) values -> long rows (sample_id, longitude, latitude, label, date, bands)."""
    n, t, _ = values.shape
    df = pd.DataFrame({"sample_id": np.repeat(ids, t), "longitude": np.repeat(lon, t),
                       "latitude": np.repeat(lat, t), "label": np.repeat(labels, t),
                       "date": np.tile(np.asarray(dates), n)})
    for c, b in enumerate(bands):
        df[b] = values[:, :, c].reshape(-1)
    return df


def _write(out: Path, name: str, df: pd.DataFrame, west: np.ndarray | None, max_train: int, seed: int) -> None:
    d = out / name
    d.mkdir(parents=True, exist_ok=True)
    if west is None:
        df.to_csv(d / "table.csv", index=False)
        print(f"{name}: {df.sample_id.nunique()} series -> {d / 'table.csv'}")
        return
    ids = df.sample_id.unique()
    train_ids, test_ids = ids[west], ids[~west]
    rng = np.random.default_rng(seed)
    if len(train_ids) > max_train:
        train_ids = rng.choice(train_ids, max_train, replace=False)
    df[df.sample_id.isin(set(train_ids))].to_csv(d / "train.csv", index=False)
    df[df.sample_id.isin(set(test_ids))].to_csv(d / "test.csv", index=False)
    print(f"{name}: {len(train_ids)} training series (west), {len(test_ids)} held-out series (east) -> {d}")


def _series(stack) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A whole stack (nodata and masked dates already NaN) -> ``(T, C, H, W)``, lon, lat per pixel."""
    a = stack.read()
    _, _, h, w = a.data.shape
    rows, cols = np.divmod(np.arange(h * w), w)
    lon, lat = _lonlat(a.transform, a.crs, rows, cols)
    return a.data, lon.reshape(h, w), lat.reshape(h, w)


def belgium(data: Path, out: Path, max_train: int, seed: int) -> None:
    import rasterio

    from agrifm.data.stack import open_stack

    cube = data / "worldcereal_belgium" / "test_cube_100x100"
    stack = open_stack(cube)
    x, lon, lat = _series(stack)
    x = x * 1e-4  # uint16 reflectance x 1e4, no scale in the files
    t, c, h, w = x.shape
    with rasterio.open(cube / "pseudo_labels" / "cropland_classification.tif") as src:
        raw = src.read(1)
    labels = np.where(raw == 0, "cropland", "other")  # raw 0 = cropland (see the data README)
    values = x.reshape(t, c, h * w).transpose(2, 0, 1)
    dates = [str(d + 14) for d in stack.dates]  # monthly composites: dated mid-month
    cols = np.arange(h * w) % w
    df = _long(values, dates, stack.bands, labels.reshape(-1), lon.reshape(-1), lat.reshape(-1),
               np.array([f"be{i}" for i in range(h * w)]))
    _write(out, "belgium_cropland", df, cols < w // 2, max_train, seed)


def slovenia(data: Path, out: Path, max_train: int, seed: int) -> None:
    import rasterio

    from agrifm.data.stack import open_stack

    d = data / "eolearn_slovenia"
    stack = open_stack(d / "NDVI.tif", bands=["NDVI"], mask=d / "IS_VALID.tif", mask_kind="valid")
    ndvi, lon, lat = _series(stack)
    days, first = np.unique(stack.dates, return_index=True)  # one acquisition per day (2015-12-08 has two)
    ndvi = ndvi[first, 0]
    with rasterio.open(d / "LULC.tif") as src:
        lulc = src.read(1)
    names = {int(k): v for k, v in json.loads((d / "lulc_classes.json").read_text()).items()}
    counts = np.bincount(lulc.reshape(-1), minlength=len(names))
    classes = [k for k in range(1, len(names)) if counts[k] >= 100]  # 0 is unlabelled
    rows, cols = np.nonzero(np.isin(lulc, classes))
    values = ndvi[:, rows, cols].T[:, :, None]
    labels = np.array([names[k] for k in lulc[rows, cols]])
    df = _long(values, [str(day) for day in days], ["NDVI"], labels, lon[rows, cols], lat[rows, cols],
               np.array([f"si{r}_{c}" for r, c in zip(rows, cols)]))
    _write(out, "slovenia_landcover", df, cols < ndvi.shape[-1] // 2, max_train, seed)


def mato_grosso(data: Path, out: Path, seed: int) -> None:
    path = data / "mato_grosso_modis" / "samples" / "mato_grosso_train.csv"
    df = pd.read_csv(path)
    vi = df[[c for c in df.columns if c.lower() not in ("blue", "red", "nir", "mir")]]
    _write(out, "mato_grosso_vi", vi, None, 0, seed)
    # A quarter of the locations, chosen by the same grouped split accuracy.py uses.
    table = read_table(path)
    _, quarter = grouped_split(table, 0.25, seed=seed)
    small = df[df.sample_id.astype(str).isin(set(np.asarray(table.sample_ids).astype(str)[quarter]))]
    _write(out, "mato_grosso_small", small, None, 0, seed)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--max-train", type=int, default=3000, help="training series kept per raster table")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    if not a.data.is_dir():
        ap.error(f"{a.data} not found: see ../shared/data/README.md for where each dataset comes from")
    belgium(a.data, a.out, a.max_train, a.seed)
    slovenia(a.data, a.out, a.max_train, a.seed)
    mato_grosso(a.data, a.out, a.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
