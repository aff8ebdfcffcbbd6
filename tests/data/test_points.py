"""Labelled points/polygons -> pixels, chips and pixel series, on the real shared datasets."""

from __future__ import annotations

import importlib.util
import json
import struct
from pathlib import Path

import numpy as np
import pytest

rasterio = pytest.importorskip("rasterio")
from rasterio.windows import Window  # noqa: E402

from agrifm.data.points import (  # noqa: E402
    chips_from_points, encode_labels, locate, pixel_series_from_points, read_points, wkb_geometry,
)
from agrifm.data.stack import open_stack  # noqa: E402

CLASSES = ["Cerrado", "Forest", "Pasture", "Soy_Corn"]


@pytest.fixture
def sinop(demo_data_dir: Path):
    stack = open_stack(demo_data_dir / "mato_grosso_modis" / "sinop_cube", bands=["NDVI", "EVI"])
    points = read_points(demo_data_dir / "mato_grosso_modis" / "samples" / "sinop_points.csv")
    return stack, points


@pytest.fixture
def belgium(data_dir: Path):
    return open_stack(data_dir / "worldcereal_belgium" / "test_cube_100x100", bands=["B04", "B08"])


def test_sinop_points_land_on_the_published_pixels(sinop) -> None:
    stack, points = sinop
    assert len(points) == 18 and points.crs.to_epsg() == 4326
    assert points.start[0] == np.datetime64("2013-09-14") and points.end[0] == np.datetime64("2014-08-29")
    loc = locate(stack, points, on_outside="raise")
    columns = ("row", "col", "x_sinusoidal", "y_sinusoidal")
    table = {k: np.array([float(p[k]) for p in points.properties]) for k in columns}
    np.testing.assert_array_equal(loc.rows, table["row"])
    np.testing.assert_array_equal(loc.cols, table["col"])
    xy = np.array([g["coordinates"] for g in loc.geometries])
    np.testing.assert_allclose(xy, np.c_[table["x_sinusoidal"], table["y_sinusoidal"]], atol=1e-2)


def test_pixel_series(sinop) -> None:
    stack, points = sinop
    series = pixel_series_from_points(stack, points)
    full = stack.read()
    loc = locate(stack, points)
    assert series.data.shape == (18, 23, 2) and series.valid.all() and series.bands == ["NDVI", "EVI"]
    np.testing.assert_array_equal(series.data, full.data[:, :, loc.rows, loc.cols].transpose(2, 0, 1))


def test_chips_with_sparse_labels(sinop) -> None:
    stack, points = sinop
    chips = chips_from_points(stack, points, chip_size=16, class_names=CLASSES)
    assert len(chips) == 18
    ids = encode_labels(points.labels, class_names=CLASSES)
    for chip in chips:
        assert chip.x.data.shape == (23, 2, 16, 16) and chip.label.shape == (16, 16)
        assert chip.label.dtype == np.int64 and (chip.label >= 0).sum() == len(chip.ids)
        k = points.ids.index(chip.ids[0]) if len(chip.ids) == 1 else None
        if k is not None:
            assert chip.label[8, 8] == ids[k]
    grouped = chips_from_points(stack, points, chip_size=16, class_names=CLASSES, group_radius=7)
    assert len(grouped) < 18 and set().union(*(c.ids for c in grouped)) == set(points.ids)
    edge = chips_from_points(stack, points, chip_size=64, class_names=CLASSES, bands=["NDVI"],
                             until="2013-12-31")
    assert edge[0].x.data.shape == (7, 1, 64, 64)
    assert any(not c.x.valid.all() and np.isnan(c.x.data[:, 0][~c.x.valid]).all() for c in edge)
    with pytest.raises(ValueError, match="group_radius"):
        chips_from_points(stack, points, chip_size=16, class_names=CLASSES, group_radius=8)
    with pytest.raises(ValueError, match=r"\['Pasture'\] are not in the class list"):
        chips_from_points(stack, points, chip_size=16, class_names=["Cerrado", "Forest", "Soy_Corn"])


def test_geojson_points_polygons_and_outside(belgium, tmp_path: Path) -> None:
    t = belgium.transform
    x0, y0 = t @ (10, 20)  # pixel (row 20, col 10) corner
    x1, y1 = t @ (15, 24)
    square = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
    doc = {
        "type": "FeatureCollection",
        "crs": {"type": "name", "properties": {"name": "EPSG:32631"}},
        "features": [
            {"type": "Feature", "id": "field", "properties": {"label": "maize"},
             "geometry": {"type": "Polygon", "coordinates": [square]}},
            {"type": "Feature", "properties": {"id": "p1", "label": "wheat"},
             "geometry": {"type": "Point", "coordinates": list(t @ (25.5, 22.5))}},
            {"type": "Feature", "properties": {"id": "far", "label": "wheat"},
             "geometry": {"type": "Point", "coordinates": [0.0, 0.0]}},
        ],
    }
    path = tmp_path / "fields.geojson"
    path.write_text(json.dumps(doc))
    samples = read_points(path)
    with pytest.warns(UserWarning, match=r"1 of 3 samples .* outside .*\['far'\]"):
        chips = chips_from_points(belgium, samples, chip_size=32, label_map={"maize": 1, "wheat": 2})
    assert len(chips) == 2  # the outside point is reported, not chipped
    label = chips[0].label
    r0, c0 = int(chips[0].window.row_off), int(chips[0].window.col_off)
    assert (label == 1).sum() == 20 and (label[20 - r0:24 - r0, 10 - c0:15 - c0] == 1).all()
    assert label[22 - r0, 25 - c0] == 2 and set(chips[0].ids) == {"field", "p1"}
    with pytest.raises(ValueError, match=r"outside.*\['far'\]"):
        locate(belgium, samples, on_outside="raise")
    with pytest.raises(ValueError, match="need points.*field"):
        pixel_series_from_points(belgium, samples, on_outside="ignore")


def test_csv_projected_coordinates_need_crs(belgium, tmp_path: Path) -> None:
    path = tmp_path / "pts.csv"
    x, y = belgium.transform @ (3.5, 4.5)
    path.write_text(f"x,y,label,date\n{x},{y},1,2021-05-03\n")
    with pytest.raises(ValueError, match="need crs="):
        read_points(path)
    samples = read_points(path, crs="EPSG:32631")
    assert samples.start[0] == np.datetime64("2021-05-03")
    series = pixel_series_from_points(belgium, samples)
    np.testing.assert_array_equal(series.data[0], belgium.read(Window(3, 4, 1, 1)).data[:, :, 0, 0])


def test_wkb_geometry() -> None:
    point = struct.pack("<BIdd", 1, 1, 3.0, 4.0)
    ring = [(0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 0.0)]
    poly = struct.pack(">BIII", 0, 3, 1, 4) + b"".join(struct.pack(">dd", *p) for p in ring)
    point_z = struct.pack("<BIddd", 1, 1001, 3.0, 4.0, 9.0)
    assert wkb_geometry(point) == {"type": "Point", "coordinates": [3.0, 4.0]}
    assert wkb_geometry(point_z) == {"type": "Point", "coordinates": [3.0, 4.0]}
    assert wkb_geometry(poly) == {"type": "Polygon", "coordinates": [[list(p) for p in ring]]}
    # extended WKB (PostGIS): SRID flag, a MultiPoint Z of two points
    ewkb = struct.pack("<BIII", 1, 0xA0000004, 4326, 2) + b"".join(
        struct.pack("<BIddd", 1, 0x80000001, x, y, 1.0) for x, y in ((1.0, 2.0), (5.0, 6.0)))
    assert wkb_geometry(ewkb) == {"type": "MultiPoint", "coordinates": [[1.0, 2.0], [5.0, 6.0]]}


@pytest.mark.skipif(importlib.util.find_spec("pyogrio") is not None, reason="pyogrio is installed")
def test_geopackage_needs_pyogrio(tmp_path: Path) -> None:
    path = tmp_path / "fields.gpkg"
    path.write_bytes(b"")
    with pytest.raises(ImportError, match="pyogrio"):
        read_points(path)


def test_geopackage_reads_like_geojson(belgium, tmp_path: Path) -> None:
    """The same labelled field and point as a GeoPackage (written with GDAL) and as GeoJSON."""
    raw = pytest.importorskip("pyogrio.raw", reason="GeoPackage support needs the optional pyogrio")
    t = belgium.transform
    x0, y0 = t @ (10, 20)
    x1, y1 = t @ (15, 24)
    ring = [(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)]
    polygon = struct.pack("<BIII", 1, 3, 1, len(ring)) + b"".join(struct.pack("<dd", *p) for p in ring)
    point = struct.pack("<BIdd", 1, 1, *(t @ (25.5, 22.5)))
    gpkg = tmp_path / "fields.gpkg"
    raw.write(gpkg, np.array([polygon, point], dtype=object),
              [np.array(["field", "p1"], dtype=object), np.array(["maize", "wheat"], dtype=object),
               np.array(["2021-04-01", ""], dtype=object)],
              ["id", "label", "start_date"], geometry_type="Unknown", crs="EPSG:32631", driver="GPKG")
    samples = read_points(gpkg)
    assert list(samples.ids) == ["field", "p1"] and list(samples.labels) == ["maize", "wheat"]
    assert samples.start[0] == np.datetime64("2021-04-01") and np.isnat(samples.start[1])
    chips = chips_from_points(belgium, samples, chip_size=32, label_map={"maize": 1, "wheat": 2})
    label = chips[0].label
    r0, c0 = int(chips[0].window.row_off), int(chips[0].window.col_off)
    assert (label == 1).sum() == 20 and label[22 - r0, 25 - c0] == 2
