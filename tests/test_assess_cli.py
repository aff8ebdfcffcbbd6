"""sample-design and assess end to end on maps built in the test (no shared data)."""

from __future__ import annotations

import csv
import json
import struct

import numpy as np
import pytest
import rasterio
import rasterio.warp
from rasterio.transform import from_origin

from agrifm.assess import design, maps
from agrifm.assess.cli import assess_map
from agrifm.assess.design import allocate, design_sample
from agrifm.assess.maps import open_class_map
from agrifm.cli import main as agrifm
from agrifm.data.points import read_points
from agrifm.errors import AgrifmError

REQUIRED = {"overall_accuracy", "users_accuracy", "producers_accuracy", "area", "error_matrix_counts",
            "error_matrix_proportions", "classes", "n", "pixel_area_ha"}
MODIS = "+proj=sinu +lon_0=0 +x_0=0 +y_0=0 +R=6371007.181 +units=m +no_defs"


def write_map(path, arr, *, crs="EPSG:32631", pixel=10.0, origin=(500_000.0, 5_000_000.0), names=None, nodata=255):
    profile = dict(driver="GTiff", width=arr.shape[1], height=arr.shape[0], count=1, dtype=arr.dtype, crs=crs,
                   transform=from_origin(origin[0], origin[1], pixel, pixel), nodata=nodata, compress="deflate",
                   tiled=True, blockxsize=256, blockysize=256)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(arr, 1)
        if names is not None:
            dst.update_tags(CLASS_NAMES=json.dumps(names))
    return path


def pixel_xy(path, rows, cols):
    with rasterio.open(path) as src:
        x, y = src.transform @ (np.asarray(cols) + 0.5, np.asarray(rows) + 0.5)
    return np.asarray(x), np.asarray(y)


def write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def write_gpkg(path, xs, ys, labels, crs):
    from pyogrio.raw import write

    geoms = np.array([struct.pack("<BIdd", 1, 1, x, y) for x, y in zip(xs, ys)], dtype=object)
    write(path, geoms, [np.arange(len(xs)), np.array([str(v) for v in labels], dtype=object)], ["id", "label"],
          driver="GPKG", geometry_type="Point", crs=crs)
    return path


# ------------------------------------------------------------------------------------------ allocation

def test_allocation_proportional_with_minimum():
    a = allocate([9000, 800, 150, 50], 200, min_per_class=20)
    assert a.sum() == 200 and (a >= 20).all()
    assert a.tolist() == [140, 20, 20, 20]
    assert allocate([9000, 800, 150, 50], 200).tolist() == [180, 16, 3, 1]


def test_allocation_equal_neyman_and_caps():
    assert allocate([1000, 1000, 5], 30, method="equal").tolist() == [13, 12, 5]  # capped at the 5 pixels
    ney = allocate([5000, 5000], 100, method="neyman", expected_ua=[0.5, 0.9])
    assert ney.sum() == 100 and ney[0] > ney[1]  # sqrt(.25) : sqrt(.09) = 5 : 3
    assert ney.tolist() == [62, 38] or ney.tolist() == [63, 37]
    with pytest.raises(AgrifmError, match="--min-per-class"):
        allocate([100, 100, 100], 50, min_per_class=20)
    with pytest.raises(AgrifmError, match="exceeds"):
        allocate([10, 10], 21)
    with pytest.raises(AgrifmError, match="expected-ua"):
        allocate([10, 10], 5, method="neyman")


# ------------------------------------------------------------------------------------------ design

@pytest.mark.parametrize("k", [2, 5, 10])
def test_sample_design_strata_nodata_centres(tmp_path, k, monkeypatch):
    rng = np.random.default_rng(k)
    arr = rng.integers(0, k, (90, 70)).astype(np.uint8)
    arr[:10] = 255  # nodata band
    arr[rng.random(arr.shape) < 0.1] = 255
    m = write_map(tmp_path / "map.tif", arr, names=[f"c{i}" for i in range(k)])
    out = tmp_path / "pts.gpkg"
    table = design_sample(m, 20 * k, out, min_per_class=5, seed=3, echo=False)
    assert sum(r["n"] for r in table) == 20 * k and all(r["n"] >= 5 for r in table)
    s = read_points(out, label_col="map_class")
    assert len(s) == 20 * k and str(s.crs.to_epsg()) == "32631"
    with rasterio.open(m) as src:
        inv = ~src.transform
        xy = np.array([g["coordinates"] for g in s.geometries])
        c, r = inv @ (xy[:, 0], xy[:, 1])
        np.testing.assert_allclose(c % 1, 0.5)
        np.testing.assert_allclose(r % 1, 0.5)
        vals = arr[r.astype(int), c.astype(int)]
    assert (vals != 255).all()
    assert [f"c{v}" for v in vals] == s.labels  # map_class is the pixel's class
    assert len({(int(a), int(b)) for a, b in zip(r, c)}) == len(s)  # no pixel twice
    assert all(p["label"] in ("", None) for p in s.properties)
    alloc = list(csv.DictReader(open(tmp_path / "pts_allocation.csv")))
    assert [int(a["n"]) for a in alloc] == [r["n"] for r in table]
    # strip-wise reading gives the same sample whatever the strip height
    monkeypatch.setattr(maps, "_STRIP_PIXELS", 7 * 70)
    cm = open_class_map(m)
    counts = cm.class_counts()
    sizes = dict(zip(counts, allocate(list(counts.values()), 20 * k, min_per_class=5).tolist()))
    small = design.draw_sample(cm, counts, sizes, seed=3)
    monkeypatch.setattr(maps, "_STRIP_PIXELS", 1 << 22)
    big = design.draw_sample(cm, counts, sizes, seed=3)
    assert (small.rows == big.rows).all() and (small.cols == big.cols).all()
    np.testing.assert_allclose(np.sort(small.x), np.sort(xy[:, 0]))


def test_sample_design_cli_refuses_overwrite_and_bad_input(tmp_path, capsys):
    arr = np.repeat(np.arange(3, dtype=np.uint8), 100).reshape(15, 20)
    m = write_map(tmp_path / "map.tif", arr)
    out = tmp_path / "p.csv"
    assert agrifm(["sample-design", "--map", str(m), "--n", "30", "--out", str(out), "--min-per-class", "5"]) == 0
    printed = capsys.readouterr().out
    assert "map_class" in printed and "proportional" in printed
    rows = list(csv.DictReader(open(out)))
    assert len(rows) == 30 and {r["label"] for r in rows} == {""} and {r["map_class"] for r in rows} == {"0", "1", "2"}
    assert agrifm(["sample-design", "--map", str(m), "--n", "30", "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert agrifm(["sample-design", "--map", str(m), "--n", "30", "--out", str(out), "--overwrite",
                   "--min-per-class", "40"]) == 2
    assert "--min-per-class" in capsys.readouterr().err
    geo = write_map(tmp_path / "geo.tif", arr, crs="EPSG:4326", pixel=0.001, origin=(10.0, 50.0))
    assert agrifm(["sample-design", "--map", str(geo), "--n", "9", "--out", str(tmp_path / "g.csv")]) == 2
    assert "geographic" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ assess

def test_olofsson_example_end_to_end(tmp_path):
    """The Olofsson et al. (2014) section 5 example through the CLI: a 30 m map with the example's
    mapped pixel counts (200,000 / 150,000 / 3,200,000 / 6,450,000) and a labelled sample with its
    error matrix; figures printed in the paper (p. 54) to their printed digits."""
    names = ["deforestation", "forest_gain", "stable_forest", "stable_nonforest"]
    rows_per_class = [40, 30, 640, 1290]  # x 5,000 columns
    arr = np.repeat(np.arange(4, dtype=np.uint8), rows_per_class)[:, None].repeat(5000, axis=1)
    m = write_map(tmp_path / "map.tif", arr, pixel=30.0, names=names)
    counts = np.array([[66, 0, 5, 4], [0, 55, 8, 12], [1, 0, 153, 11], [2, 1, 9, 313]])
    starts = np.cumsum([0] + rows_per_class[:-1])
    pts = []
    for i in range(4):
        k = 0
        for j in range(4):
            for _ in range(counts[i, j]):
                r, c = starts[i] + k % rows_per_class[i], 7 * (k // rows_per_class[i]) + 3
                k += 1
                x, y = pixel_xy(m, [r], [c])
                pts.append([len(pts), x[0], y[0], names[j]])
    ref = write_csv(tmp_path / "ref.csv", ["id", "x", "y", "label"], pts)
    assert agrifm(["assess", "--map", str(m), "--reference", str(ref), "--out", str(tmp_path / "out")]) == 0
    a = json.loads((tmp_path / "out" / "assessment.json").read_text())
    assert REQUIRED <= set(a) and a["n"] == 640 and a["classes"] == names
    assert a["error_matrix_counts"] == counts.tolist()
    assert a["pixel_area_ha"] == pytest.approx(0.09)
    area = [a["area"][k] for k in names]
    assert [round(x["mapped_ha"]) for x in area] == [18_000, 13_500, 288_000, 580_500]
    assert [round(x["estimate_ha"]) for x in area] == [21_158, 11_686, 285_770, 581_386]
    assert [round(x["ci95_ha"]) for x in area] == [6_158, 3_756, 15_510, 16_282]
    assert [round(a["users_accuracy"][k]["estimate"], 2) for k in names] == [0.88, 0.73, 0.93, 0.96]
    assert [round(a["producers_accuracy"][k]["estimate"], 2) for k in names] == [0.75, 0.85, 0.93, 0.96]
    assert round(a["overall_accuracy"]["estimate"], 2) == 0.95
    assert round(a["overall_accuracy"]["ci95"], 2) == 0.02
    md = (tmp_path / "out" / "assessment.md").read_text()
    assert "21,157.8" in md and "Olofsson" in md
    assert (tmp_path / "out" / "assessment.png").stat().st_size > 10_000


def _truth_and_map(tmp_path, crs, pixel, origin, names=True):
    rng = np.random.default_rng(5)
    truth = np.repeat(np.arange(3, dtype=np.uint8), 400).reshape(40, 30)
    mapped = truth.copy()
    flip = rng.random(truth.shape) < 0.15
    mapped[flip] = rng.integers(0, 3, flip.sum())
    mapped[:, :2] = 255
    m = write_map(tmp_path / "map.tif", mapped, crs=crs, pixel=pixel, origin=origin,
                  names=["soy", "maize", "pasture"] if names else None)
    return m, mapped, truth


@pytest.mark.parametrize("fmt", ["csv_xy", "csv_lonlat", "geojson", "gpkg_3857"])
@pytest.mark.parametrize("grid", [("EPSG:32722", 10.0, (600_000.0, 8_700_000.0)), (MODIS, 231.656, (-6073587.958, -1278725.640))])
def test_assess_formats_and_crs(tmp_path, fmt, grid):
    m, mapped, truth = _truth_and_map(tmp_path, *grid)
    sample = tmp_path / "s.gpkg"
    design_sample(m, 60, sample, min_per_class=10, seed=1, echo=False)
    s = read_points(sample, label_col="map_class")
    xy = np.array([g["coordinates"] for g in s.geometries])
    with rasterio.open(m) as src:
        c, r = ~src.transform @ (xy[:, 0], xy[:, 1])
        crs = src.crs
    labels = [["soy", "maize", "pasture"][v] for v in truth[r.astype(int), c.astype(int)]]
    if fmt == "csv_xy":
        ref = write_csv(tmp_path / "r.csv", ["x", "y", "label"], [[x, y, l] for (x, y), l in zip(xy, labels)])
    elif fmt == "csv_lonlat":
        lon, lat = rasterio.warp.transform(crs, "EPSG:4326", xy[:, 0], xy[:, 1])
        ref = write_csv(tmp_path / "r.csv", ["longitude", "latitude", "label"], list(zip(lon, lat, labels)))
    elif fmt == "geojson":
        lon, lat = rasterio.warp.transform(crs, "EPSG:4326", xy[:, 0], xy[:, 1])
        feats = [{"type": "Feature", "geometry": {"type": "Point", "coordinates": [a, b]}, "properties": {"label": l}}
                 for a, b, l in zip(lon, lat, labels)]
        ref = tmp_path / "r.geojson"
        ref.write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    else:
        mx, my = rasterio.warp.transform(crs, "EPSG:3857", xy[:, 0], xy[:, 1])
        ref = write_gpkg(tmp_path / "r.gpkg", mx, my, labels, "EPSG:3857")
    a = assess_map(m, ref, tmp_path / "out", echo=False)
    expected = np.zeros((3, 3), int)
    np.add.at(expected, (mapped[r.astype(int), c.astype(int)], truth[r.astype(int), c.astype(int)]), 1)
    assert a["error_matrix_counts"] == expected.tolist()
    assert a["skipped"] == {"outside": [], "nodata": [], "duplicates": []}
    total = sum(v["mapped_ha"] for v in a["area"].values())
    assert sum(v["estimate_ha"] for v in a["area"].values()) == pytest.approx(total)
    assert total == pytest.approx((mapped != 255).sum() * grid[1] ** 2 / 1e4)
    assert all(v["ci95_ha"] > 0 for v in a["area"].values())


def test_assess_bad_input_reported(tmp_path, capsys):
    m, mapped, truth = _truth_and_map(tmp_path, "EPSG:32722", 10.0, (600_000.0, 8_700_000.0), names=False)
    classes = tmp_path / "names.json"
    classes.write_text(json.dumps({"0": "soy", "1": "maize", "2": "pasture"}))
    rows = [(r, c) for r in range(0, 40, 2) for c in range(5, 30, 6)]
    rows = [(r, c) for r, c in rows if mapped[r, c] != 2][:30] + [(r, c) for r, c in rows if mapped[r, c] == 2][:1]
    x, y = pixel_xy(m, [r for r, _ in rows], [c for _, c in rows])
    recs = [[f"p{i}", x[i], y[i], int(truth[r, c])] for i, (r, c) in enumerate(rows)]  # integer labels
    recs[0][3] = "cotton"                               # a class the map never shows
    recs.append(["out1", x[0] - 1e5, y[0], 0])          # outside
    nx, ny = pixel_xy(m, [3], [0])
    recs.append(["nd1", nx[0], ny[0], 0])               # on nodata
    recs.append(["dup1", x[1] + 2, y[1] - 2, recs[1][3]])  # same pixel as p1
    ref = write_csv(tmp_path / "ref.csv", ["id", "x", "y", "label"], recs)
    out = tmp_path / "out"
    assert agrifm(["assess", "--map", str(m), "--reference", str(ref), "--out", str(out), "--classes", str(classes)]) == 0
    err = capsys.readouterr().err
    a = json.loads((out / "assessment.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert a["classes"] == ["soy", "maize", "pasture", "cotton"]
    assert a["area"]["cotton"]["mapped_ha"] == 0 and a["area"]["cotton"]["estimate_ha"] > 0
    assert a["users_accuracy"]["cotton"]["estimate"] is None
    assert a["skipped"]["outside"] == ["out1"] and a["skipped"]["nodata"] == ["nd1"]
    assert a["skipped"]["duplicates"][0].startswith("dup1") and a["n"] == 31
    # 'pasture' stratum has one point: its variance is undefined -> null, with a warning
    assert a["users_accuracy"]["pasture"]["ci95"] is None and a["overall_accuracy"]["ci95"] is None
    assert a["users_accuracy"]["pasture"]["estimate"] is not None
    assert all(v["ci95_ha"] is None for v in a["area"].values())
    assert any("'pasture' has 1 sample point" in w for w in a["warnings"])
    assert "'pasture' has 1 sample point" in err and "outside the map" in err and "cotton" in err
    assert "n/a" in (out / "assessment.md").read_text()
    # outputs are never replaced without --overwrite; no usable point is an error
    assert agrifm(["assess", "--map", str(m), "--reference", str(ref), "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    bad = write_csv(tmp_path / "bad.csv", ["id", "x", "y", "label"], [["a", x[0] - 1e5, y[0], 0], ["b", nx[0], ny[0], 1]])
    assert agrifm(["assess", "--map", str(m), "--reference", str(bad), "--out", str(tmp_path / "o2")]) == 2
    assert "none of its 2 points" in capsys.readouterr().err
    unl = write_csv(tmp_path / "unl.csv", ["id", "x", "y", "label"], [["a", x[0], y[0], ""]])
    assert agrifm(["assess", "--map", str(m), "--reference", str(unl), "--out", str(tmp_path / "o3")]) == 2
    assert "no 'label' value" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ demo example

def test_demo_example_on_the_sinop_grid(tmp_path):
    """The demo's example on a map with the Sinop cube's grid: the 18 WGS84 points land on the
    pixels the data set lists (MODIS sinusoid), and the outputs say the sample is too small."""
    from conftest import DATA, need

    from agrifm.assess import demo_example
    from agrifm.demo import CLASS_COLORS, POINTS

    need(DATA / "mato_grosso_modis")
    names = sorted(CLASS_COLORS)
    cube = sorted((DATA / "mato_grosso_modis" / "sinop_cube").glob("*NDVI*.tif"))[0]
    with rasterio.open(cube) as src:
        crs, transform, shape = src.crs, src.transform, src.shape
    rng = np.random.default_rng(0)
    arr = rng.choice([names.index(c) for c in ("Soy_Corn", "Pasture", "Forest", "Cerrado", "Soy_Fallow")],
                     size=shape).astype(np.uint8)
    pts = list(csv.DictReader(open(DATA / POINTS)))
    for p in pts:  # the map agrees with every point
        arr[int(p["row"]), int(p["col"])] = names.index(p["label"])
    m = tmp_path / "crop_map.tif"
    with rasterio.open(m, "w", driver="GTiff", width=shape[1], height=shape[0], count=1, dtype="uint8", crs=crs,
                       transform=transform, nodata=255) as dst:
        dst.write(arr, 1)
        dst.update_tags(CLASS_NAMES=json.dumps(names))
    summary = demo_example(m, DATA / POINTS, tmp_path / "assessment", echo=False)
    a = json.loads((tmp_path / "assessment" / "assessment.json").read_text())
    assert a["n"] == 18 and a["overall_accuracy"]["estimate"] == pytest.approx(1.0)
    counts = np.array(a["error_matrix_counts"])
    assert (counts == np.diag(np.diag(counts))).all()  # every point on its listed pixel
    assert any("too few" in w for w in a["warnings"]) and summary["n"] == 18
    assert sum(summary["sample_allocation"].values()) == 200 and min(summary["sample_allocation"].values()) >= 10
    assert (tmp_path / "assessment" / "sample_design.gpkg").is_file()
    assert (tmp_path / "assessment" / "assessment.png").is_file()


@pytest.mark.parametrize("suffix", [".csv", ".geojson", ".gpkg"])
def test_designed_sample_labelled_in_place_round_trip(tmp_path, suffix):
    """The file sample-design writes, with its label column filled in, is what assess reads."""
    m, mapped, truth = _truth_and_map(tmp_path, "EPSG:3035", 20.0, (4_000_000.0, 3_000_000.0))
    sample = tmp_path / f"s{suffix}"
    design_sample(m, 45, sample, min_per_class=10, seed=2, echo=False)
    names = ["soy", "maize", "pasture"]
    with rasterio.open(m) as src:
        inv = ~src.transform
    if suffix == ".csv":
        rows = list(csv.DictReader(open(sample)))
        for r in rows:
            c, rr = inv @ (float(r["x"]), float(r["y"]))
            r["label"] = names[truth[int(rr), int(c)]]
        write_csv(sample, list(rows[0]), [list(r.values()) for r in rows])
    elif suffix == ".geojson":
        doc = json.loads(sample.read_text())
        for f in doc["features"]:
            c, rr = inv @ tuple(f["geometry"]["coordinates"])
            f["properties"]["label"] = names[truth[int(rr), int(c)]]
        sample.write_text(json.dumps(doc))
    else:
        s = read_points(sample, label_col="map_class")
        xy = np.array([g["coordinates"] for g in s.geometries])
        c, rr = inv @ (xy[:, 0], xy[:, 1])
        sample.unlink()
        write_gpkg(sample, xy[:, 0], xy[:, 1], [names[v] for v in truth[rr.astype(int), c.astype(int)]], "EPSG:3035")
    a = assess_map(m, sample, tmp_path / "out", echo=False)
    assert a["n"] == 45 and a["pixel_area_ha"] == pytest.approx(0.04)
    alloc = list(csv.DictReader(open(tmp_path / "s_allocation.csv")))
    assert np.array(a["error_matrix_counts"]).sum(1).tolist() == [int(r["n"]) for r in alloc]
    assert a["overall_accuracy"]["ci95"] is not None


def test_sample_design_neyman_expected_ua_by_name_or_value(tmp_path, capsys):
    arr = np.repeat(np.arange(3, dtype=np.uint8), 200).reshape(20, 30)
    m = write_map(tmp_path / "map.tif", arr, names=["soy", "maize", "pasture"])
    out = tmp_path / "n.csv"
    args = ["sample-design", "--map", str(m), "--n", "60", "--out", str(out), "--min-per-class", "5",
            "--allocation", "neyman"]
    assert agrifm(args + ["--expected-ua", "soy=0.5,1=0.9,pasture=1.0"]) == 0
    alloc = {r["map_class"]: int(r["n"]) for r in csv.DictReader(open(tmp_path / "n_allocation.csv"))}
    assert alloc["pasture"] == 5 and alloc["soy"] > alloc["maize"] and sum(alloc.values()) == 60
    assert "expected_ua" in capsys.readouterr().out
    assert agrifm(args + ["--overwrite", "--expected-ua", "soy=0.5"]) == 2
    assert "no value for map classes ['maize', 'pasture']" in capsys.readouterr().err
    assert agrifm(args + ["--overwrite", "--expected-ua", "soy=high"]) == 2
    assert "class=value" in capsys.readouterr().err
