"""Outputs: valid COGs with the input's grid, colours, names, provenance; probabilities; quicklooks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import from_origin
from rio_cogeo.cogeo import cog_validate

from agrifm.predict.cog import PROB_SCALE, CogWriter, class_map_meta, write_cog
from agrifm.predict.engine import predict_scene
from agrifm.predict.quicklook import write_quicklook
from agrifm.sensors import get_source
from conftest import DATA, need

BELGIUM = DATA / "worldcereal_belgium"


class Ndvi:
    """Cropland vs other from the yearly mean NDVI (a transparent stand-in for a model)."""

    class_names = ["cropland", "other"]
    class_colors = [(225, 170, 40), (50, 130, 70)]
    kind = "dense"
    frames = None

    def __init__(self) -> None:
        self.sources = {"S2": get_source("S2")}

    def __call__(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        s = self.sources["S2"]
        r = inputs["S2"] * torch.tensor(s.std)[:, None, None] + torch.tensor(s.mean)[:, None, None]
        red, nir = r[:, :, s.bands.index("B04")], r[:, :, s.bands.index("B08")]
        p = torch.sigmoid(((nir - red) / (nir + red + 1e-6)).mean(1) * 20 - 10.6)
        return torch.stack([1 - p, p], 1)


@pytest.fixture(scope="module")
def belgium_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Path], Path]:
    folder = need(BELGIUM / "test_cube_100x100")
    out = tmp_path_factory.mktemp("cog") / "belgium.tif"
    res = predict_scene(Ndvi(), {"S2": folder}, out, window=64, overlap=16, probabilities=True, progress=False,
                        band_map={"S2": {"B8A": "B08"}}, provenance={"checkpoint_sha256": "abc123"})
    return res.outputs, folder


def test_map_is_a_valid_cog_on_the_input_grid(belgium_run) -> None:
    outputs, folder = belgium_run
    for layer in ("map", "probs", "confidence"):
        valid, errors, _ = cog_validate(str(outputs[layer]))
        assert valid, (layer, errors)
    with rasterio.open(outputs["map"]) as ds, rasterio.open(folder / "S2_2021-05.tif") as src:
        assert (ds.crs, ds.transform, ds.shape) == (src.crs, src.transform, src.shape)
        assert ds.dtypes == ("uint8",) and ds.nodata == 255 and ds.compression.name == "deflate"
        assert ds.block_shapes == [(512, 512)]
        assert ds.colormap(1)[0][:3] == (225, 170, 40) and ds.colormap(1)[1][:3] == (50, 130, 70)
        assert ds.descriptions == ("class",)
        tags = ds.tags()
        agree = (ds.read(1) == rasterio.open(folder / "pseudo_labels/cropland_classification.tif").read(1)).mean()
    assert json.loads(tags["CLASS_NAMES"]) == ["cropland", "other"]
    assert tags["CHECKPOINT_SHA256"] == "abc123" and tags["SOFTWARE"].startswith("agrifm ")
    assert json.loads(tags["SOURCES"])["S2"]["band_map"] == {"B8A": "B08"}
    assert len(json.loads(tags["DATES"])["S2"]) == 12 and "CREATED" in tags
    assert agree > 0.7  # sanity: the WorldCereal cropland pseudo-labels (0 = cropland)


def test_probabilities_and_confidence_layers(belgium_run) -> None:
    outputs, _ = belgium_run
    with rasterio.open(outputs["probs"]) as p, rasterio.open(outputs["confidence"]) as c, \
            rasterio.open(outputs["map"]) as m:
        probs, conf, cls = p.read(), c.read(1), m.read(1)
        assert p.descriptions == ("cropland", "other") and p.scales == (1 / PROB_SCALE,) * 2
        assert "254" in p.tags()["PROBABILITY_ENCODING"] and "percent" in c.tags()["CONFIDENCE_ENCODING"]
    assert (np.abs(probs.astype(int).sum(0) - PROB_SCALE) <= 1).all()
    assert (np.take_along_axis(probs, cls[None].astype(int), 0)[0] == probs.max(0)).all()  # ties at 1/254
    assert (np.abs(conf - np.rint(probs.max(0) / PROB_SCALE * 100)) <= 1).all() and conf.max() <= 100


def test_quicklooks_small_and_large(belgium_run, tmp_path: Path) -> None:
    import matplotlib.image as mpimg

    outputs, _ = belgium_run
    assert mpimg.imread(outputs["quicklook"]).shape[0] > 400  # a 100 px map is upscaled
    res = predict_scene(Ndvi(), {"S2": need(BELGIUM / "inference_area_50x48")}, tmp_path / "small.tif",
                        progress=False, band_map={"S2": {"B8A": "B08"}})
    assert mpimg.imread(res.outputs["quicklook"]).shape[0] > 400
    big = np.kron(np.arange(12, dtype=np.uint8).reshape(3, 4) % 3, np.ones((700, 600), np.uint8))
    big[:300, :300] = 255
    path = write_cog(tmp_path / "big.tif", big, crs="EPSG:32631", transform=from_origin(0, 0, 10, 10),
                     **class_map_meta(["a", "b", "c"], [(200, 0, 0), (0, 200, 0), (0, 0, 200)]))
    with rasterio.open(path) as ds:
        assert ds.overviews(1) and set(np.unique(ds.read(1, out_shape=(210, 240)))) <= {0, 1, 2, 255}
    png = write_quicklook(path, title="big")  # names and colours from the COG itself
    assert png == tmp_path / "big.png" and mpimg.imread(png).shape[1] <= 2500


def test_cog_writer_leaves_nothing_on_error(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError):
        with CogWriter(tmp_path / "x.tif", count=1, width=10, height=10, crs="EPSG:32631",
                       transform=from_origin(5e5, 4e6, 1, 1)) as w:
            w.write(np.zeros((10, 10), np.uint8), 0, 0)
            w.finish()
            raise RuntimeError("boom before commit")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="classes"):
        class_map_meta([str(i) for i in range(256)], [(0, 0, 0)] * 256)
