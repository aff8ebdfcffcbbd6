"""The Belgium cropland benchmark end to end on the real WorldCereal cubes, tiny and fast:
fine-tune (``agrifm fit`` with configs/belgium_cropland.yaml), export, map the 50x48 inference
cube over the training months, score against the WorldCereal temporary-crops product."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
import yaml

from conftest import DATA, ROOT, benchmark, need

BELGIUM = DATA / "worldcereal_belgium"


pytestmark = pytest.mark.usefixtures("one_thread")


def test_agreement_and_overlap_mask():
    b = benchmark("belgium_cropland")
    ref = np.array([[1, 1, 0, -1]])
    pred = np.array([[1, 0, 0, 1]], np.uint8)
    s = b.agreement(pred, ref)
    assert s["n"] == 3 and s["oa"] == pytest.approx(2 / 3)
    assert s["f1_cropland"] == pytest.approx(2 / 3) and s["f1_other"] == pytest.approx(2 / 3)
    assert s["kappa"] == pytest.approx(0.4)  # po 2/3, pe 4/9
    assert b.agreement(np.full((1, 4), 255, np.uint8), ref)["n"] == 0  # map nodata never counts
    assert b.last_day(["S2_2021-10.tif"]) == "2021-10-31" and b.last_day(["S2_2020-12.tif"]) == "2020-12-31"
    # The inference grid (README) against the 100x100 cube's bounds: 22 rows x 24 cols shared.
    from affine import Affine

    grid = {"transform": Affine(10, 0, 664760, 0, -10, 5612400), "width": 48, "height": 50}
    outside = b.outside_mask(grid, (664000.0, 5611120.0, 665000.0, 5612120.0))
    assert (~outside).sum() == 22 * 24 and outside.sum() == 2400 - 528
    assert not outside[28:, :24].any() and outside[:28].all() and outside[:, 24:].all()



def test_agreement_shares_the_metrics_module_when_a_class_is_absent():
    """The benchmark once scored kappa = 1 where one class fills both maps; Cohen's kappa is
    undefined there (chance agreement 1): NaN, as in agrifm.tasks.metrics and scikit-learn."""
    from sklearn.metrics import cohen_kappa_score, f1_score

    b = benchmark("belgium_cropland")
    ref, pred = np.ones((1, 5), np.int64), np.array([[1, 1, 0, 1, 1]], np.uint8)  # no "other" in the reference
    s = b.agreement(pred, ref)
    assert s["kappa"] == pytest.approx(cohen_kappa_score(ref.ravel(), pred.ravel())) == 0.0
    assert s["f1_cropland"] == pytest.approx(f1_score(ref.ravel(), pred.ravel())) and s["f1_other"] == 0.0
    with pytest.warns(UserWarning, match="undefined"):
        expected = cohen_kappa_score([1] * 4, [1] * 4)  # sklearn: replace_undefined_by=nan
    one_class = b.agreement(np.ones((1, 4), np.uint8), np.ones((1, 4), np.int64))
    assert one_class["oa"] == 1.0 and np.isnan(one_class["kappa"]) and np.isnan(expected)
    assert np.isnan(one_class["f1_other"]) and one_class["mf1"] == 1.0  # absent from both: not averaged

def test_config_matches_the_data_readme():
    cfg = yaml.safe_load((ROOT / "configs" / "belgium_cropland.yaml").read_text())
    model, data = cfg["model"]["init_args"], cfg["data"]["init_args"]
    assert model["class_names"] == ["other", "cropland"]
    assert data["label_map"] == {0: 1, 1: 0}  # raw 0 = cropland (README), class 1 = cropland
    assert data["band_map"] == {"S2": {"B8A": "B08"}} and data["sources"] == ["S2"]
    assert data["frames"] is None


def test_belgium_pipeline_end_to_end(tmp_path):
    need(BELGIUM)
    b = benchmark("belgium_cropland")
    result = b.run_benchmark(BELGIUM, tmp_path, seeds=1, steps=3, tiny=True, val_every=1)
    run = result["runs"][0]

    # the map lies on the inference cube's grid, with classes {0, 1} and nodata 255 only
    with rasterio.open(run["map"]) as m, rasterio.open(BELGIUM / "inference_area_50x48" / "S2_2021-05.tif") as src:
        assert m.crs == src.crs and (m.height, m.width) == (src.height, src.width) == (50, 48)
        assert m.transform.almost_equals(src.transform)
        values = set(np.unique(m.read(1)).tolist())
        assert values <= {0, 1, 255} and values & {0, 1}
        dates = json.loads(m.tags()["DATES"])["S2"]
    assert len(dates) == 12 and dates[0] == "2020-11-01" and dates[-1] == "2021-10-01"  # the training months

    # the exported model: S2 in the registered band order, classes [other, cropland]
    from agrifm.checkpoint import read_metadata
    from agrifm.sensors import get_source

    meta = read_metadata(run["model"])
    assert list(meta.sources["S2"].bands) == list(get_source("S2").bands)
    assert meta.class_names == ["other", "cropland"]

    assert run["outside_px"] == 2400 - 22 * 24 and run["inside_px"] == 22 * 24
    for region in ("outside", "inside", "all"):
        s = run[region]
        assert s["n"] == {"outside": 1872, "inside": 528, "all": 2400}[region]  # reference has no nodata
        for k in ("oa", "f1_cropland", "mf1", "cropland_frac_pred"):
            assert 0.0 <= s[k] <= 1.0, (region, k, s[k])
        assert -1.0 <= s["kappa"] <= 1.0
    assert run["outside"]["cropland_frac_ref"] == pytest.approx((2214 - 523) / 1872)  # README counts
    assert result["baselines"]["pseudo_labels_inside"]["oa"] == pytest.approx((503 + 5) / 528)
    assert result["flops"]["gflop"] > 0 and result["flops"]["params"] > 0
    table = b.format_table(result)
    assert "outside" in table and "not field truth" in table
    json.dumps(result, default=str)  # --json serialisable
