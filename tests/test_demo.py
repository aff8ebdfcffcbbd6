"""The README's main job on real data (short training), and the scene map it makes."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import DATA, DEMO_DATA, ROOT, benchmark, need


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """``agrifm demo`` (1 epoch) as a user runs it, its output going to a log (not a terminal)."""
    out = tmp_path_factory.mktemp("demo") / "demo_out"
    r = subprocess.run([sys.executable, "-m", "agrifm.cli", "demo", "--out", str(out), "--epochs", "1"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    return out, json.loads((out / "metrics.json").read_text()), r.stdout + r.stderr


@pytest.fixture(scope="module")
def demo_out(demo_run):
    return demo_run[:2]


def test_demo_log_has_progress_lines_not_bars(demo_run):
    log = demo_run[2]
    assert "\r" not in log and len(log) < 20_000
    assert "train epoch 1/1: train_loss" in log and "val_oa" in log  # the hold-out is scored at the last epoch
    assert "predict: 12/12 win (100 %)" in log  # the map's progress counts windows, not one block
    assert "Sinop points" in log and "Traceback" not in log


def test_demo_finds_the_data_shipped_with_the_repository():
    from agrifm.demo import REPO_DATA, find_data

    assert find_data(None) == REPO_DATA.resolve() == (ROOT / "data").resolve()
    assert (REPO_DATA / "mato_grosso_modis" / "COPYING").is_file()
    readme = (REPO_DATA / "mato_grosso_modis" / "README.md").read_text()
    assert "GPL-2" in readme and "772e0dda670d" in readme and "811fa6ce5c46" in readme


def test_demo_data_matches_its_checksums():
    import hashlib

    root = DEMO_DATA / "mato_grosso_modis"
    lines = (root / "SHA256SUMS").read_text().splitlines()
    assert len(lines) == 49  # 2 sample tables + 46 cube files + timeline
    for line in lines:
        digest, name = line.split(maxsplit=1)
        assert hashlib.sha256((root / name).read_bytes()).hexdigest() == digest, name


def test_demo_leaves_the_promised_outputs(demo_out):
    out, metrics = demo_out
    for name in ("model.safetensors", "metrics.json", "crop_map.tif", "crop_map.png", "confusion_matrix.png",
                 "training_curves.png", "training_history.csv", "crop_map.tif.aux.xml"):
        assert (out / name).is_file(), name
    for name in ("crop_map.png", "confusion_matrix.png", "training_curves.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert not list(out.glob(".history*")) and not list(out.glob(".*.tif"))  # no temporary leftovers
    saved = json.loads((out / "metrics.json").read_text())
    for key in ("oa", "mf1", "kappa", "per_class_f1", "points_agreement"):
        assert key in saved
    assert 0.0 <= saved["oa"] <= 1.0 and 0.0 <= saved["points_agreement"] <= 1.0
    assert len(saved["per_class_f1"]) == 9 and saved["n_test"] > 100
    assert saved["oa"] == metrics["oa"]


def test_demo_checkpoint_describes_itself(demo_out):
    from agrifm import load_model

    model = load_model(demo_out[0] / "model.safetensors")
    src = model.meta.sources["MOD13Q1"]
    assert set(src.bands) == {"NDVI", "EVI"} and model.meta.task == "classification"
    assert len(model.meta.class_names) == 9 and model.meta.extra["smoothing"]["method"] == "whittaker"
    members = json.loads((demo_out[0] / "metrics.json").read_text())["members"]
    assert model.meta.members == members == len(getattr(model, "members", [model]))


def test_demo_map_is_a_valid_cog_on_the_cube_grid(demo_out):
    import rasterio
    from rio_cogeo.cogeo import cog_validate

    out = demo_out[0]
    valid, errors, _ = cog_validate(str(out / "crop_map.tif"))
    assert valid, errors
    cube = sorted((DEMO_DATA / "mato_grosso_modis" / "sinop_cube").glob("*.tif"))[0]
    with rasterio.open(out / "crop_map.tif") as m, rasterio.open(cube) as c:
        assert m.crs == c.crs and m.transform == c.transform and (m.width, m.height) == (c.width, c.height)
        arr = m.read(1)
        assert m.nodata == 255 and arr.max() < 9


def test_demo_map_names_its_classes_and_says_how_it_was_made(demo_out):
    import rasterio

    from agrifm.checkpoint import file_sha256
    from agrifm.predict.cog import read_categories

    out, metrics = demo_out
    assert read_categories(out / "crop_map.tif") == metrics["classes"] and len(metrics["classes"]) == 9
    with rasterio.open(out / "crop_map.tif") as m:
        tags = m.tags()
    assert tags["CHECKPOINT"] == str(out / "model.safetensors")
    assert tags["CHECKPOINT_SHA256"] == file_sha256(out / "model.safetensors")
    assert json.loads(tags["SOURCES"])["MOD13Q1"]["path"].endswith("sinop_cube")
    assert len(json.loads(tags["DATES"])["MOD13Q1"]) == 23 and json.loads(tags["CLASS_NAMES"]) == metrics["classes"]


def test_demo_training_history_has_losses_and_validation(demo_out):
    import csv

    rows = list(csv.DictReader((demo_out[0] / "training_history.csv").open()))
    assert [r["epoch"] for r in rows] == ["1"]  # epochs=1
    keys = set(rows[0])
    assert {"train_loss (member 1)", "val_oa (member 1)", "val_mf1 (member 2)"} <= keys


def test_demo_refuses_a_folder_with_a_previous_run(demo_out, tmp_path):
    from agrifm.demo import run_demo
    from agrifm.errors import AgrifmError

    (tmp_path / "metrics.json").write_text("{}")
    with pytest.raises(AgrifmError, match="previous run.*--overwrite"):
        run_demo(DEMO_DATA, tmp_path, epochs=1, progress=False)
    assert (tmp_path / "metrics.json").read_text() == "{}"
    r = subprocess.run([sys.executable, "-m", "agrifm.cli", "demo", "--out", str(tmp_path)],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and r.stderr.startswith("agrifm demo: error: --out") and "Traceback" not in r.stderr


def test_predict_cli_reproduces_the_demo_map(demo_out, tmp_path):
    import rasterio

    out = demo_out[0]
    target = tmp_path / "again.tif"
    r = subprocess.run([sys.executable, "-m", "agrifm.cli", "predict", "--checkpoint", str(out / "model.safetensors"),
                        "--source", f"MOD13Q1={DEMO_DATA / 'mato_grosso_modis' / 'sinop_cube'}", "--out", str(target),
                        "--no-progress"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    with rasterio.open(out / "crop_map.tif") as a, rasterio.open(target) as b:
        assert np.array_equal(a.read(1), b.read(1))


def test_demo_without_data_says_where_to_get_it(tmp_path, capsys):
    from agrifm.demo import main

    assert main(["--data", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "e-sensing/inSitu @ 772e0dda670d" in err and "e-sensing/sits @ 811fa6ce5c46" in err


def test_accuracy_benchmark_json_contract(tmp_path):
    import pandas as pd

    csv = need(DEMO_DATA / "mato_grosso_modis" / "samples" / "mato_grosso_train.csv")
    df = pd.read_csv(csv)
    keep = df["sample_id"].drop_duplicates().sample(240, random_state=0)
    small = df[df["sample_id"].isin(keep)].drop(columns=["longitude", "latitude"])
    small = small.drop(index=small.sample(frac=0.03, random_state=1).index)  # gaps: missing dates per sample
    small.loc[small.sample(frac=0.02, random_state=2).index, "NDVI"] = np.nan  # and empty cells
    ids = small["sample_id"].unique()
    train, test = tmp_path / "train.csv", tmp_path / "test.parquet"
    small[small["sample_id"].isin(ids[:180])].to_csv(train, index=False)
    te = small[small["sample_id"].isin(ids[180:])]
    te = te[te["label"].isin(small[small["sample_id"].isin(ids[:180])]["label"].unique())].copy()
    te.loc[te["sample_id"] == te["sample_id"].iloc[0], "label"] = "Rice"  # a class training never saw
    te.to_parquet(test, index=False)
    out = tmp_path / "acc.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "accuracy.py"), "--train", str(train), "--test", str(test),
                        "--seeds", "1", "--agrifm-steps", "10", "--json", str(out), "--quiet",
                        "--plot", str(tmp_path / "acc.png"), "--set", "lr=0.002", "--set", "model.embed_dim=16",
                        "--corrections", "1.0,0.8", "--members", "2"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.loads(out.read_text())
    singles = ("agrifm", "random_forest", "temporal_cnn", "ltae", "temporal_cnn_pooled")
    ensembles = tuple(f"{m}_ensemble" for m in singles)  # --members 2: one ensemble row per model
    for model in singles + ensembles + ("agrifm_supervised", "agrifm_supervised_ensemble"):
        for key in ("oa", "mf1", "kappa", "oa_std", "mf1_std", "n_test"):
            assert key in s[model], (model, key)
        assert 0.0 <= s[model]["oa"] <= 1.0
    for model in singles + ensembles:
        assert set(s["early_season"][model]) == {"0.25", "0.5", "0.75", "1"}  # every model's early-season curve
    # The row is the self-trained model; its curve is the supervised model it started from (a
    # pseudo-label from a whole test series would teach an early-season model the season's end).
    assert s["early_season"]["agrifm"]["1"] == s["agrifm_supervised"] and "agrifm_supervised" not in s["early_season"]
    (pseudo,) = s["setup"]["agrifm_self_training"]["pseudo_labels"]
    assert s["setup"]["agrifm_self_training"]["tau"] == 0.9 and 0.0 <= pseudo["share"] <= 1.0
    assert "self-trained; supervised OA" in r.stdout and "agrifm_supervised" in r.stdout
    assert s["setup"]["members"] == 2 and s["setup"]["early_season_training"]["random_truncation"] == 0.25
    assert set(s["agrifm_prior_correction"]) == {"1", "0.8"}  # 0.8 is the default: the main row again
    assert s["agrifm_prior_correction"]["0.8"] == s["agrifm"]
    assert "Early season" in r.stdout and "ltae_ensemble" in r.stdout
    assert "1 test series have class(es) ['Rice'] absent from the training table" in r.stdout
    assert s["agrifm"]["n_test"] == te["sample_id"].nunique()  # the unseen-class series is scored, not dropped
    assert "Rice" in s["setup"]["classes"]
    assert s["setup"]["agrifm_overrides"] == {"lr": 0.002, "model": {"embed_dim": 16}}
    # 180 series of 32: 5 steps an epoch; 25 epochs would be 125 steps, capped at twice the floor of 10
    assert (s["setup"]["agrifm_epochs"], s["setup"]["agrifm_steps"]) == (4, 20)
    assert (tmp_path / "acc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # AgriFM alone against the stored baseline rows: the same AgriFM figures (training is
    # deterministic given the seed), every other row copied; another setup is refused.
    again = tmp_path / "again.json"
    args = [sys.executable, str(ROOT / "benchmarks" / "accuracy.py"), "--train", str(train), "--test", str(test),
            "--seeds", "1", "--agrifm-steps", "10", "--quiet", "--set", "lr=0.002", "--set", "model.embed_dim=16",
            "--members", "2", "--models", "agrifm", "--rows-from", str(out)]
    r = subprocess.run(args + ["--json", str(again)], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    t = json.loads(again.read_text())
    assert t["agrifm"] == s["agrifm"] and t["early_season"]["agrifm"] == s["early_season"]["agrifm"]
    assert all(t[m] == s[m] for m in singles + ensembles + ("agrifm_supervised",))
    assert t["setup"]["rows_from"]["models"] == [m for m in singles + ensembles if not m.startswith("agrifm")]
    r = subprocess.run(args[:7] + ["2"] + args[8:], capture_output=True, text=True, cwd=ROOT)  # --seeds 2
    assert r.returncode != 0 and "another setup" in r.stderr


def test_accuracy_benchmark_without_self_training_has_one_agrifm_model(tmp_path):
    import pandas as pd

    csv = need(DEMO_DATA / "mato_grosso_modis" / "samples" / "mato_grosso_train.csv")
    df = pd.read_csv(csv)
    keep = df["sample_id"].drop_duplicates().sample(120, random_state=0)
    table = tmp_path / "t.csv"
    df[df["sample_id"].isin(keep)].to_csv(table, index=False)
    out = tmp_path / "plain.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "accuracy.py"), "--train", str(table), "--seeds", "1",
                        "--agrifm-steps", "10", "--quiet", "--models", "agrifm", "--set", "self_training=null",
                        "--set", "model.embed_dim=16", "--json", str(out)], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.loads(out.read_text())
    assert "agrifm_supervised" not in s and s["setup"]["agrifm_self_training"] is None
    assert s["early_season"]["agrifm"]["1"] == s["agrifm"]  # one AgriFM model serves its row and its curve


def test_accuracy_step_budget_grows_with_the_table_within_its_bounds():
    budget = benchmark("accuracy").agrifm_step_budget
    assert budget(931, 23, 32, 2400, 4800) == 2400  # small table: the floor (82 epochs)
    assert budget(3000, 67, 32, 2400, 4800) == 2400  # 25 epochs are fewer steps than the floor
    assert budget(6000, 23, 32, 2400, 4800) == 25 * 187  # large table: 25 epochs
    assert budget(20000, 23, 32, 2400, 4800) == 4800  # the ceiling
    assert budget(20000, 46, 32, 2400, 4800) == 2400  # twice the dates: half the ceiling
    assert budget(20000, 34, 32, 2400, 4800) == int(4800 * 23 / 34)
    assert budget(20000, 230, 32, 2400, 4800) == 2400  # never below the floor


def test_accuracy_benchmark_rejects_unknown_settings():
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "accuracy.py"), "--train", "x.csv", "--set", "lrate=1"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode != 0 and "unknown setting 'lrate'" in r.stderr


def test_raster_tables_cut_the_held_out_tables_the_readme_reports(tmp_path):
    """Sizes, classes, bands and dates of the README's "other held-out tables"."""
    need(DATA / "worldcereal_belgium")
    need(DATA / "eolearn_slovenia")
    from agrifm.data.tables import read_table

    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "raster_tables.py"), "--data", str(DATA), "--out", str(tmp_path)],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    def cols(table):  # pixel column from the ids (be<row*100+col>, si<row>_<col>)
        return np.array([int(i[2:]) % 100 if i.startswith("be") else int(i.split("_")[1]) for i in table.sample_ids])

    expect = {"belgium_cropland": (3000, 5000, 2, 9, 12), "slovenia_landcover": (3000, 4998, 4, 1, 67)}
    for name, (n_train, n_test, k, c, t) in expect.items():
        train, test = read_table(tmp_path / name / "train.csv"), read_table(tmp_path / name / "test.csv")
        assert (len(train), len(test), len(train.class_names), len(train.bands), train.values.shape[1]) == (n_train, n_test, k, c, t)
        assert cols(train).max() < 50 <= cols(test).min()  # west half trains, east half tests
    slovenia = read_table(tmp_path / "slovenia_landcover" / "train.csv")
    assert 0.3 < np.isnan(slovenia.values).mean() < 0.5  # cloudy dates are gaps, not values
    vi = read_table(tmp_path / "mato_grosso_vi" / "table.csv")
    assert vi.bands == ("EVI", "NDVI") and len(vi) == 1327
    assert len(read_table(tmp_path / "mato_grosso_small" / "table.csv")) == 334
