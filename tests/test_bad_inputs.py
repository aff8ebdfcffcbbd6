"""Bad inputs across the commands and the Python API (issue 15).

Every command-line case runs through the ``agrifm`` dispatcher in-process and asserts the exit
code, exactly one line ``agrifm <command>: error: ...`` naming the problem (no traceback), and
that no existing file changed and no output appeared (hashes before and after). Inputs are tiny
and made here (no ../shared): a point model on a 20 x 24 px, 3-date stack, a 12-sample table,
synthetic pre-training shards and a land-cover raster.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import from_origin

import lightning.pytorch  # noqa: F401 - its log handlers bind to the real stderr, not to one test's capture

from agrifm.cli import main as agrifm

pytestmark = pytest.mark.usefixtures("one_thread", "own_log_handlers")


@pytest.fixture
def own_log_handlers():
    """The commands configure logging to the stderr of their test; drop those handlers after it."""
    import logging

    root = logging.getLogger()
    before = list(root.handlers)
    yield
    root.handlers[:] = before

DATES = ["2021-03-01", "2021-04-01", "2021-05-01"]
ORIGIN = (500000.0, 4000000.0)


# --------------------------------------------------------------------------- the world of inputs


def write_stack(folder: Path, data: np.ndarray, *, nodata: float | None = -9999.0, res: float = 10.0,
                origin: tuple[float, float] = ORIGIN, bands: tuple[str, ...] = ("B1", "B2"),
                dates: list[str] = DATES) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    t, c, h, w = data.shape
    for i, d in enumerate(dates[:t]):
        with rasterio.open(folder / f"X_{d}.tif", "w", driver="GTiff", width=w, height=h, count=c, dtype="float32",
                           crs="EPSG:32631", transform=from_origin(*origin, res, res), nodata=nodata) as ds:
            ds.write(data[i].astype(np.float32))
            ds.descriptions = bands[:c]
    return folder


def source():
    from agrifm.sensors import Source

    return Source(name="X", bands=("B1", "B2"), resolution_m=10.0, units="reflectance", mean=(0.3, 0.3),
                  std=(0.1, 0.1), valid_range=(0.0, 1.0))


def point_model(seed: int = 0):
    from agrifm.models.agrifm import AgriFM
    from agrifm.models.presets import preset

    torch.manual_seed(seed)
    return AgriFM(preset("point-small", embed_dim=8, num_heads=(1, 1, 1, 1), sources={"X": 2}, num_classes=2))


def dense_model(seed: int = 0):
    from agrifm.models.agrifm import AgriFM
    from agrifm.models.presets import preset

    torch.manual_seed(seed)
    return AgriFM(preset("small", embed_dim=8, depths=(1, 1), num_heads=(1, 1), patch_size=(2, 2, 2),
                         window_size=(2, 4, 4), downsample_steps=((2, 2, 2),), decoder_dim=8, feature_fusion="mean",
                         sources={"X": 2}, num_classes=2))


def save_raw(path: Path, tensors: dict[str, torch.Tensor], like: Path) -> Path:
    """Weights written around ``save_model`` (which refuses non-finite ones), with ``like``'s metadata."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(like), framework="pt") as f:
        meta = f.metadata()
    save_file(tensors, str(path), metadata=meta)
    return path


def write_shards(folder: Path, *, samples: int = 8, frames: int = 6, chip: int = 16, cell: int = 4) -> Path:
    from agrifm.pretrain.landcover import CLASSES
    from agrifm.pretrain.shards import ShardWriter

    rng = np.random.default_rng(0)
    w = ShardWriter(folder, "X", 4, source="X", bands=["B1"], chip_size=chip, cell_size=cell, x_dtype="float32")
    g = chip // cell
    for i in range(samples):
        frac = rng.dirichlet(np.ones(len(CLASSES)), size=(g, g)).transpose(2, 0, 1)
        w.add(f"s{i}", x=rng.uniform(0, 1, (frames, 1, chip, chip)), valid=np.ones((frames, chip, chip), bool),
              dates=np.datetime64("2021-01-01") + np.arange(frames) * 30, fractions=frac,
              frac_valid=np.ones((g, g), bool))
    w.close()
    return folder


def write_table(path: Path, rows: list[str] | None = None) -> Path:
    if rows is None:
        rows = [f"s{i},{'ab'[i % 2]},2021-0{m}-01,{0.2 + 0.05 * m + 0.1 * (i % 2):.3f},{0.1 + 0.02 * m:.3f},"
                f"{-55 + i * 0.5},{-12 + (i % 3) * 0.5}" for i in range(12) for m in range(1, 7)]
    path.write_text("sample_id,label,date,NDVI,EVI,longitude,latitude\n" + "\n".join(rows) + "\n")
    return path


TINY_POINT = {"preset": "point-small", "embed_dim": 8, "num_heads": [1, 1, 1, 1]}


def fit_config(path: Path, table: Path, run: Path, *, class_names: list[str] | None = None) -> Path:
    cfg = {
        "seed_everything": 0,
        "trainer": {"default_root_dir": str(run), "max_steps": 1, "accelerator": "cpu", "devices": 1,
                    "enable_progress_bar": False, "enable_model_summary": False, "logger": False,
                    "num_sanity_val_steps": 0, "limit_val_batches": 1},
        "model": {"class_path": "agrifm.tasks.classification.ClassificationTask",
                  "init_args": {"model": TINY_POINT, "task_name": "classification",
                                "class_names": class_names or ["a", "b"], "warmup_steps": 1}},
        "data": {"class_path": "agrifm.tasks.datamodules.TableDataModule",
                 "init_args": {"path": str(table), "source": "MOD13Q1", "val_fraction": 0.25, "batch_size": 4}},
    }
    path.write_text(json.dumps(cfg))
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from agrifm.checkpoint import save_model

    w = tmp_path_factory.mktemp("world")
    rng = np.random.default_rng(0)
    good = rng.uniform(0.1, 0.6, (3, 2, 20, 24))
    write_stack(w / "x", good)
    write_stack(w / "nodata", np.full_like(good, -9999.0))
    write_stack(w / "nan", np.full_like(good, np.nan), nodata=None)
    write_stack(w / "const", np.full_like(good, 0.3))
    write_stack(w / "far", good, origin=(600000.0, 4100000.0))
    write_stack(w / "oneband", good[:, :1], bands=("B1",))
    (w / "empty").mkdir()
    (w / "text.tif").write_text("not a raster\n")
    model = point_model()
    ckpt = save_model(model, w / "model.safetensors", task="classification", sources={"X": source()},
                      class_names=["a", "b"])
    save_model(dense_model(), w / "dense.safetensors", task="segmentation", sources={"X": source()},
               class_names=["a", "b"])
    save_model(model, w / "encoder.safetensors", task="pretrain", sources={"X": source()}, class_names=["a", "b"])
    state = {k: v.clone() for k, v in model.state_dict().items()}
    key = next(k for k, v in state.items() if v.is_floating_point() and v.numel() > 1)
    save_raw(w / "nan.safetensors", {**state, key: torch.full_like(state[key], float("nan"))}, ckpt)
    save_raw(w / "inf.safetensors", {**state, key: torch.full_like(state[key], float("inf"))}, ckpt)
    save_raw(w / "nometa.safetensors", state, ckpt)
    from safetensors.torch import save_file

    save_file(state, str(w / "plain.safetensors"))
    (w / "truncated.safetensors").write_bytes(ckpt.read_bytes()[:200])
    (w / "empty.safetensors").write_bytes(b"")
    (w / "text.safetensors").write_text("hello\n")
    torch.save({"state_dict": state, "hyper_parameters": {}}, w / "last.ckpt")  # what agrifm fit leaves
    with rasterio.open(w / "lc.tif", "w", driver="GTiff", width=24, height=20, count=1, dtype="uint8",
                       crs="EPSG:32631", transform=from_origin(*ORIGIN, 10, 10)) as ds:
        ds.write(rng.integers(1, 5, (1, 20, 24)).astype(np.uint8))
    with rasterio.open(w / "lc_far.tif", "w", driver="GTiff", width=24, height=20, count=1, dtype="uint8",
                       crs="EPSG:32631", transform=from_origin(700000.0, 4000000.0, 10, 10)) as ds:
        ds.write(np.ones((1, 20, 24), np.uint8))
    write_shards(w / "shards" / "X")
    write_table(w / "table.csv")
    (w / "notjson.json").write_text("{not json")
    (w / "list.yaml").write_text("- 1\n- 2\n")
    (w / "badkey.yaml").write_text(json.dumps({"preset": "small", "no_such_setting": 1}))
    (w / "stats.json").write_text('{"precious": true}\n')
    return w


def snapshot(*roots: Path) -> dict[str, tuple[str, int]]:
    """path -> (sha256, mode) of every file under ``roots``."""
    out = {}
    for root in roots:
        for p in sorted(root.rglob("*")):
            if p.is_file():
                out[str(p)] = (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mode)
    return out


def expect_error(argv: list[str], match: str, capsys: pytest.CaptureFixture, *roots: Path, code: int = 2) -> str:
    """Run ``agrifm ARGV``: exit ``code``, one ``error:`` line matching ``match``, nothing under
    ``roots`` changed or added. Returns the line."""
    before = snapshot(*roots)
    got = agrifm(argv)
    err = capsys.readouterr().err
    assert got == code, err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith(f"agrifm {argv[0]}: error: ")]
    assert len(lines) == 1, err
    assert re.search(match, lines[0]), lines[0]
    assert snapshot(*roots) == before, f"files changed or appeared: {set(snapshot(*roots)) ^ set(before)}"
    return lines[0]


# --------------------------------------------------------------------------- the table


@dataclass
class Case:
    id: str
    argv: list[str]  # {w}: the world, {t}: this case's folder
    match: str  # a regular expression the error line must match
    setup: Callable[[Path, Path], None] | None = None


def _touch(rel: str, text: str = "precious\n") -> Callable[[Path, Path], None]:
    def make(w: Path, t: Path) -> None:
        (t / rel).parent.mkdir(parents=True, exist_ok=True)
        (t / rel).write_text(text)
    return make


def _mkdir(rel: str) -> Callable[[Path, Path], None]:
    return lambda w, t: (t / rel).mkdir(parents=True)


P0 = ["predict", "--checkpoint", "{w}/model.safetensors", "--no-progress", "--no-quicklook"]
P = [*P0, "--device", "cpu", "--window", "16", "--overlap", "0"]
PD = [*P0[:2], "{w}/dense.safetensors", *P0[3:], "--device", "cpu", "--window", "16"]
OUT = ["--out", "{t}/map.tif"]
GOOD = ["--source", "X={w}/x"]

PREDICT = [
    Case("ckpt-missing", ["predict", "--checkpoint", "{t}/none.safetensors", *GOOD, *OUT], r"checkpoint not found: .*none\.safetensors"),
    Case("ckpt-folder", ["predict", "--checkpoint", "{w}/x", *GOOD, *OUT], r"checkpoint not found: .*/x"),
    Case("ckpt-text", ["predict", "--checkpoint", "{w}/text.safetensors", *GOOD, *OUT], r"text\.safetensors: not a readable \.safetensors"),
    Case("ckpt-empty", ["predict", "--checkpoint", "{w}/empty.safetensors", *GOOD, *OUT], r"empty\.safetensors: not a readable"),
    Case("ckpt-truncated", ["predict", "--checkpoint", "{w}/truncated.safetensors", *GOOD, *OUT], r"truncated\.safetensors: not a readable"),
    Case("ckpt-no-metadata", ["predict", "--checkpoint", "{w}/plain.safetensors", *GOOD, *OUT], r"plain\.safetensors: a \.safetensors file without agrifm metadata"),
    Case("ckpt-lightning", ["predict", "--checkpoint", "{w}/last.ckpt", *GOOD, *OUT], r"last\.ckpt: a Lightning training checkpoint; 'agrifm fit' exports .*model\.safetensors"),
    Case("ckpt-nan-weights", ["predict", "--checkpoint", "{w}/nan.safetensors", *GOOD, *OUT], r"nan\.safetensors: weights .* NaN/inf"),
    Case("ckpt-inf-weights", ["predict", "--checkpoint", "{w}/inf.safetensors", *GOOD, *OUT], r"inf\.safetensors: weights .* NaN/inf"),
    Case("ckpt-pretrain-encoder", ["predict", "--checkpoint", "{w}/encoder.safetensors", *GOOD, *OUT], r"pre-training encoder"),
    Case("no-source", [*P, *OUT], r"--checkpoint and at least one --source"),
    Case("source-missing-folder", [*P, "--source", "X={t}/nowhere", *OUT], r"source 'X'.*nowhere"),
    Case("source-empty-folder", [*P, "--source", "X={w}/empty", *OUT], r"source 'X'.*no GeoTIFF .* in folder .*empty"),
    Case("source-glob-nothing", [*P, "--source", "X={w}/x/none_*.tif", *OUT], r"--source X: no file matches"),
    Case("source-not-name-path", [*P, "--source", "{w}/x", *OUT], r"--source expects NAME=PATH"),
    Case("source-twice", [*P, *GOOD, *GOOD, *OUT], r"--source X given twice"),
    Case("source-unknown-name", [*P, "--source", "S2={w}/x", *OUT], r"unknown source 'S2'.*\['X'\]"),
    Case("source-not-a-raster", [*P, "--source", "X={w}/text.tif", *OUT], r"source 'X'.*text\.tif"),
    Case("source-band-missing", [*P, "--source", "X={w}/oneband", *OUT], r"band 'B2' not found in .*oneband"),
    Case("band-map-malformed", [*P, *GOOD, "--band-map", "X:B2", *OUT], r"--band-map .*'B2' is not BAND=STORED"),
    Case("band-map-no-colon", [*P, *GOOD, "--band-map", "B2=B1", *OUT], r"--band-map expects NAME:BAND=STORED"),
    Case("band-map-unknown-source", [*P, *GOOD, "--band-map", "S2:B2=B1", *OUT], r"--band-map S2: not a source of this run \(\['X'\]\)"),
    Case("band-map-stored-missing", [*P, "--source", "X={w}/oneband", "--band-map", "X:B2=B9", *OUT], r"B9|B2"),
    Case("until-before-first", [*P, *GOOD, "--until-date", "2020-01-01", *OUT], r"no frame on or before 2020-01-01"),
    Case("until-not-a-date", [*P, *GOOD, "--until-date", "soon", *OUT], r"--until-date 'soon' is not a date"),
    Case("window-zero", [*P, *GOOD, "--window", "0", *OUT], r"--window must be a positive number, got 0"),
    Case("window-negative", [*P, *GOOD, "--window", "-16", *OUT], r"--window must be a positive number"),
    Case("batch-size-zero", [*P, *GOOD, "--batch-size", "0", *OUT], r"--batch-size must be a positive number, got 0"),
    Case("batch-size-negative", [*P, *GOOD, "--batch-size", "-2", *OUT], r"--batch-size must be a positive number"),
    Case("block-size-zero", [*P, *GOOD, "--block-size", "0", *OUT], r"--block-size must be a positive number"),
    Case("overlap-negative", [*PD, *GOOD, "--overlap", "-1", *OUT], r"--overlap must be in \[0, window/2\]"),
    Case("overlap-too-large", [*PD, *GOOD, "--overlap", "12", *OUT], r"--overlap must be in \[0, window/2\] = \[0, 8\]"),
    Case("window-runaway", [*P, *GOOD, "--window", "100000", *OUT], r"--window 100000 .* needs at least .* GiB"),
    Case("window-runaway-one-window", [*P, *GOOD, "--window", "60000", "--batch-size", "1", *OUT], r"--window 60000 with --batch-size 1 .* GiB"),
    Case("resolution-runaway", [*P, *GOOD, "--resolution", "0.01", *OUT], r"--resolution 0\.01 is over 16x finer"),
    Case("resolution-zero", [*P, *GOOD, "--resolution", "0", *OUT], r"--resolution must be a positive number"),
    Case("resolution-negative", [*P, *GOOD, "--resolution", "-10", *OUT], r"--resolution must be a positive number"),
    Case("resolution-nan", [*P, *GOOD, "--resolution", "nan", *OUT], r"--resolution must be a positive number"),
    Case("grid-runaway", [*P, *GOOD, "--resolution", "10", "--bounds", "0", "0", "1e8", "1e8", *OUT], r"output grid would be .* --resolution or smaller --bounds"),
    Case("bounds-empty", [*P, *GOOD, "--bounds", "500100", "3999900", "500000", "4000000", *OUT], r"empty output bounds"),
    Case("bounds-elsewhere", [*P, *GOOD, "--bounds", "0", "0", "100", "100", *OUT], r"does not overlap the output area"),
    Case("bounds-infinite", [*P, *GOOD, "--bounds", "0", "0", "inf", "100", *OUT], r"--bounds must be finite"),
    Case("crs-unknown", [*P, *GOOD, "--crs", "EPSG:99999", *OUT], r"--crs 'EPSG:99999' is not a coordinate reference system"),
    Case("crs-garbage", [*P, *GOOD, "--crs", "nonsense", *OUT], r"--crs 'nonsense'"),
    Case("device-cuda-absent", [*P0, *GOOD, "--device", "cuda", *OUT], r"--device cuda: CUDA is not available"),
    Case("device-unknown", [*P0, *GOOD, "--device", "toaster", *OUT], r"--device 'toaster': not a device"),
    Case("out-exists", [*P, *GOOD, *OUT], r"map\.tif exists; .*--overwrite", _touch("map.tif")),
    Case("out-png-exists", ["predict", "--checkpoint", "{w}/model.safetensors", "--no-progress", "--device", "cpu",
                            "--window", "16", "--overlap", "0", *GOOD, *OUT], r"map\.png exists", _touch("map.png")),
    Case("out-probs-exists", [*P, *GOOD, *OUT, "--probabilities"], r"map_probs\.tif exists", _touch("map_probs.tif")),
    Case("out-png", [*P, *GOOD, "--out", "{t}/map.png"], r"--out .*map\.png: the map is a GeoTIFF; give a name ending in \.tif"),
    Case("out-no-suffix", [*P, *GOOD, "--out", "{t}/map"], r"--out .*map: the map is a GeoTIFF"),
    Case("out-folder-is-a-file", [*P, *GOOD, "--out", "{w}/text.tif/map.tif"], r"text\.tif"),
    Case("out-is-a-folder", [*P, *GOOD, "--out", "{t}/map.tif"], r"is a directory.*map\.tif", _mkdir("map.tif")),
    Case("all-nodata", [*P, "--source", "X={w}/nodata", *OUT], r"no pixel of the output area .* valid data .* no map written"),
    Case("all-nan", [*P, "--source", "X={w}/nan", *OUT], r"no pixel of the output area .* no map written"),
    Case("constant-cube", [*P, "--source", "X={w}/const", *OUT], r"source 'X' .*const.*every sampled value is 0\.3"),
    Case("assemble-no-block-dir", ["predict", "--assemble", *OUT], r"--assemble needs --block-dir"),
    Case("assemble-not-a-block-dir", ["predict", "--assemble", "--block-dir", "{w}/x", *OUT], r"manifest\.json does not exist: not a block folder"),
]


def _broken_manifest(w: Path, t: Path) -> None:
    (t / "blocks").mkdir()
    (t / "blocks" / "manifest.json").write_text("{broken")


PREDICT += [
    Case("assemble-damaged-manifest", ["predict", "--assemble", "--block-dir", "{t}/blocks", *OUT], r"manifest\.json is damaged", _broken_manifest),
]

S = ["stats"]
STATS = [
    Case("stats-missing", [*S, "{t}/none.csv"], r"none\.csv does not exist"),
    Case("stats-unknown-kind", [*S, "{w}/notjson.json"], r"notjson\.json: not a table"),
    Case("stats-json-exists", [*S, "{w}/x", "--json", "{w}/stats.json"], r"--json .*stats\.json exists; pass --overwrite"),
    Case("stats-json-folder", [*S, "{w}/x", "--json", "{w}/empty"], r"--json .*empty is a folder"),
    Case("stats-json-parent-missing", [*S, "{w}/x", "--json", "{t}/no/s.json"], r"output folder .*no does not exist"),
    Case("stats-empty-folder", [*S, "{w}/empty"], r"no GeoTIFF .*empty"),
    Case("stats-not-a-raster", [*S, "{w}/text.tif"], r"text\.tif"),
    Case("stats-band-missing", [*S, "{w}/x", "--bands", "B1", "B7"], r"B7"),
    Case("stats-all-nodata", [*S, "{w}/nodata"], r"no valid value for band"),
    Case("stats-table-no-label", [*S, "{t}/t.csv"], r"t\.csv: required column\(s\) \['label'\] missing",
         lambda w, t: (t / "t.csv").write_text("sample_id,date,NDVI\na,2021-01-01,0.3\n")),
    Case("stats-table-empty", [*S, "{t}/t.csv"], r"t\.csv", _touch("t.csv", "")),
    Case("stats-table-band-missing", [*S, "{w}/table.csv", "--bands", "NIR"], r"table\.csv: band\(s\) \['NIR'\] not in"),
]

R = ["pretrain", "--data", "{w}/shards/X", "--model", "{t}/tiny.yaml", "--workers", "0", "--quiet",
     "--max-steps", "1", "--batch-size", "2", "--frames", "4"]


def _tiny(w: Path, t: Path) -> None:
    (t / "tiny.yaml").write_text(json.dumps({"preset": "small", "embed_dim": 8, "depths": [1, 1], "num_heads": [1, 1],
                                             "patch_size": [2, 2, 2], "window_size": [2, 4, 4],
                                             "downsample_steps": [[2, 2, 2]]}))


def _tiny_and(*more: Callable[[Path, Path], None]) -> Callable[[Path, Path], None]:
    def make(w: Path, t: Path) -> None:
        _tiny(w, t)
        for m in more:
            m(w, t)
    return make


def _val_as_y(w: Path, t: Path) -> None:
    """Validation shards of a source 'Y' that no training set has."""
    _tiny(w, t)
    write_shards(t / "val" / "Y", samples=2)
    index = json.loads((t / "val" / "Y" / "index.json").read_text())
    (t / "val" / "Y" / "index.json").write_text(json.dumps({**index, "source": "Y"}))


def _truncated_shards(w: Path, t: Path) -> None:
    import shutil

    _tiny(w, t)
    shutil.copytree(w / "shards" / "X", t / "bad")
    victim = sorted((t / "bad").glob("*.tar"))[0]
    victim.write_bytes(victim.read_bytes()[:700])


PRETRAIN = [
    Case("pretrain-data-missing", [*R, "--data", "{t}/nowhere", "--out", "{t}/run"], r"no index\.json", _tiny),
    Case("pretrain-shard-truncated", [*R, "--data", "{t}/bad", "--out", "{t}/run"], r"bad/.*\.tar is truncated", _truncated_shards),
    Case("pretrain-resume-nothing", [*R, "--out", "{t}/run", "--resume"], r"--resume: .*last\.ckpt does not exist", _tiny),
    Case("pretrain-batch-zero", [*R, "--out", "{t}/run", "--batch-size", "0"], r"--batch-size must be >= 1, got 0", _tiny),
    Case("pretrain-frames-zero", [*R, "--out", "{t}/run", "--frames", "0"], r"--frames must be >= 1", _tiny),
    Case("pretrain-steps-zero", [*R, "--out", "{t}/run", "--max-steps", "0"], r"--max-steps must be >= 1", _tiny),
    Case("pretrain-accumulate-zero", [*R, "--out", "{t}/run", "--accumulate", "0"], r"--accumulate must be >= 1", _tiny),
    Case("pretrain-workers-negative", [*R, "--out", "{t}/run", "--workers", "-1"], r"--workers and --shuffle-buffer must be >= 0", _tiny),
    Case("pretrain-out-holds-model", [*R, "--out", "{t}/run"], r"run holds a run \(.*model\.safetensors\).*--overwrite",
         _tiny_and(_touch("run/model.safetensors"))),
    Case("pretrain-out-holds-metrics", [*R, "--out", "{t}/run"], r"holds a run \(.*metrics\.csv\)", _tiny_and(_touch("run/metrics.csv"))),
    Case("pretrain-out-holds-checkpoint", [*R, "--out", "{t}/run"], r"holds a run \(.*last\.ckpt\).*--resume",
         _tiny_and(_touch("run/checkpoints/last.ckpt"))),
    Case("pretrain-out-is-a-file", [*R, "--out", "{t}/run"], r"--out .*run is a file", _tiny_and(_touch("run"))),
    Case("pretrain-batch-runaway", [*R, "--out", "{t}/run", "--batch-size", "10000000"], r"--batch-size 10000000 with --frames 4 needs at least .* GiB", _tiny),
    Case("pretrain-frames-runaway", [*R, "--out", "{t}/run", "--frames", "5000000"], r"--frames 5000000 needs at least", _tiny),
    Case("pretrain-model-unknown-preset", [*R, "--out", "{t}/run", "--model", "enormous"], r"unknown model preset 'enormous'"),
    Case("pretrain-model-file-missing", [*R, "--out", "{t}/run", "--model", "{t}/none.yaml"], r"--model .*none\.yaml: no such file"),
    Case("pretrain-model-not-mapping", [*R, "--out", "{t}/run", "--model", "{w}/list.yaml"], r"--model .*list\.yaml: expected a mapping"),
    Case("pretrain-model-unknown-key", [*R, "--out", "{t}/run", "--model", "{w}/badkey.yaml"], r"no_such_setting"),
    Case("pretrain-val-unknown-source", [*R, "--out", "{t}/run", "--val-data", "{t}/val/Y"],
         r"--val-data has source\(s\) \['Y'\]", _val_as_y),
    Case("pretrain-ema-out-of-range", [*R, "--out", "{t}/run", "--ema-momentum", "2"], r"ema_momentum must be in \[0, 1\], got 2", _tiny),
    Case("pretrain-frames-longer-than-series", [*R, "--out", "{t}/run", "--frames", "40"], r"no full batch .* series were shorter than --frames", _tiny),
]


D = ["pretrain-data", "--landcover", "{w}/lc.tif", "--classes", "eolearn_lulc", "--chip-size", "8", "--cell-size", "2",
     "--quiet"]
PRETRAIN_DATA = [
    Case("pdata-landcover-missing", [*D, "--source", "X={w}/x", "--landcover", "{t}/none.tif", "--out", "{t}/o"], r"land-cover raster .*none\.tif does not exist"),
    Case("pdata-landcover-elsewhere", [*D, "--source", "X={w}/x", "--landcover", "{w}/lc_far.tif", "--out", "{t}/o"], r"lc_far\.tif .*does not overlap"),
    Case("pdata-classes-unknown", [*D, "--source", "X={w}/x", "--classes", "nonsense", "--out", "{t}/o"], r"class mapping 'nonsense' is neither a preset"),
    Case("pdata-classes-bad-json", [*D, "--source", "X={w}/x", "--classes", "{w}/notjson.json", "--out", "{t}/o"], r"notjson\.json: invalid JSON"),
    Case("pdata-source-twice", [*D, "--source", "X={w}/x", "--source", "X={w}/x", "--out", "{t}/o"], r"source 'X' given twice"),
    Case("pdata-chip-not-a-number", [*D, "--source", "X={w}/x", "--chip-size", "big", "--out", "{t}/o"], r"--chip-size 'big': bad value"),
    Case("pdata-mask-unknown-source", [*D, "--source", "X={w}/x", "--mask", "Y={w}/x", "--out", "{t}/o"], r"--mask 'Y=.*' names 'Y', not a --source"),
    Case("pdata-val-fraction", [*D, "--source", "X={w}/x", "--val-fraction", "2", "--out", "{t}/o"], r"--val-fraction must be in \(0, 1\)"),
    Case("pdata-chip-larger-than-scene", [*D, "--source", "X={w}/x", "--chip-size", "64", "--cell-size", "8", "--out", "{t}/o"], r"smaller than the chip size 64"),
    Case("pdata-source-missing", [*D, "--source", "X={t}/nowhere", "--out", "{t}/o"], r"nowhere"),
    Case("pdata-chip-zero", [*D, "--source", "X={w}/x", "--chip-size", "0", "--out", "{t}/o"], r"--chip-size must be a positive number, got 0"),
    Case("pdata-samples-per-shard-zero", [*D, "--source", "X={w}/x", "--samples-per-shard", "0", "--out", "{t}/o"], r"--samples-per-shard must be a positive number"),
    Case("pdata-cell-not-dividing-chip", [*D, "--source", "X={w}/x", "--cell-size", "3", "--out", "{t}/o"], r"chip size 8 is not a multiple of the cell size 3"),
    Case("pdata-out-holds-shards", [*D, "--source", "X={w}/x", "--out", "{w}/shards"], r"index\.json exists"),
]

F = ["--config", "{t}/cfg.yaml"]


def _fit_setup(rows: list[str] | None = None, class_names: list[str] | None = None,
               then: Callable[[Path, Path], None] | None = None) -> Callable[[Path, Path], None]:
    def make(w: Path, t: Path) -> None:
        table = write_table(t / "t.csv", rows) if rows is not None else w / "table.csv"
        fit_config(t / "cfg.yaml", table, t / "run", class_names=class_names)
        if then:
            then(w, t)
    return make


def _rows(change: Callable[[list[str]], list[str]]) -> list[str]:
    rows = [f"s{i},{'ab'[i % 2]},2021-0{m}-01,0.3,0.2,{-55 + i * 0.5},-12" for i in range(12) for m in range(1, 7)]
    return change(rows)


FIT = [
    Case("fit-run-holds-model", ["fit", *F], r"run folder .*run holds a run \(.*model\.safetensors\).*--overwrite",
         _fit_setup(then=_touch("run/model.safetensors"))),
    Case("fit-run-holds-last", ["fit", *F], r"holds a run \(.*last\.ckpt\).*--ckpt_path last",
         _fit_setup(then=_touch("run/checkpoints/last.ckpt"))),
    Case("fit-table-missing", ["fit", *F, "--data.init_args.path", "{t}/none.csv"], r"none\.csv", _fit_setup()),
    Case("fit-table-no-label", ["fit", *F], r"t\.csv: required column\(s\) \['label'\] missing",
         lambda w, t: ((t / "t.csv").write_text("sample_id,date,NDVI,EVI\ns0,2021-01-01,0.3,0.2\n"),
                       fit_config(t / "cfg.yaml", t / "t.csv", t / "run")) and None),
    Case("fit-table-duplicate-dates", ["fit", *F], r"t\.csv.*(duplicate|twice|more than once|unique)",
         _fit_setup(_rows(lambda r: r + [r[0]]))),
    Case("fit-table-two-labels", ["fit", *F], r"sample 's0' has more than one label",
         _fit_setup(_rows(lambda r: [r[0].replace(",a,", ",b,"), *r[1:]]))),
    Case("fit-table-unknown-class", ["fit", *F], r"the data's classes \['a', 'b', 'c'\] differ from the model's", _fit_setup(_rows(lambda r: r + ["s99,c,2021-01-01,0.3,0.2,-50,-12"]))),
    Case("fit-table-empty-label", ["fit", *F], r"column 'label' is empty", _fit_setup(_rows(lambda r: [r[0].replace(",a,", ",,"), *r[1:]]))),
    Case("fit-label-not-in-data-classes", ["fit", *F, "--data.init_args.class_names", '["a"]'], r"t\.csv.*'b'",
         _fit_setup(_rows(lambda r: r))),
    Case("fit-unknown-source", ["fit", *F, "--data.init_args.source", "NOPE"], r"unknown source 'NOPE'", _fit_setup()),
    Case("fit-val-fraction", ["fit", *F, "--data.init_args.val_fraction", "1.5"], r"val_fraction 1\.5 \+ test_fraction 0\.0 exceed 1",
         _fit_setup()),
    Case("fit-max-steps-negative", ["fit", *F, "--trainer.max_steps", "-5"], r"`max_steps` must be a non-negative integer", _fit_setup()),
    Case("fit-batch-size-zero", ["fit", *F, "--data.init_args.batch_size", "0"], r"data: batch_size must be >= 1 \(got 0\)", _fit_setup()),
    Case("fit-unknown-preset", ["fit", *F, "--model.init_args.model", "enormous"], r"unknown model preset 'enormous'", _fit_setup()),
    Case("test-ckpt-not-a-checkpoint", ["test", *F, "--ckpt_path", "{t}/t.csv"], r"--ckpt_path .*t\.csv is not a Lightning checkpoint",
         _fit_setup(_rows(lambda r: r))),
    Case("test-ckpt-missing", ["test", *F, "--ckpt_path", "{t}/none.ckpt"], r"checkpoint .*none\.ckpt does not exist", _fit_setup()),
    Case("fit-class-order", ["fit", *F], r"the data's classes \['a', 'b'\] differ from the model's class_names \['b', 'a'\]",
         _fit_setup(class_names=["b", "a"])),
    Case("test-no-best-checkpoint", ["test", *F, "--ckpt_path", "best"], r"no best\.ckpt in .*checkpoints", _fit_setup()),
    Case("validate-no-last-checkpoint", ["validate", *F, "--ckpt_path", "last"], r"no last\.ckpt in .*checkpoints", _fit_setup()),
    Case("test-report-exists", ["test", *F], r"run folder .*run holds a test report \(.*test/metrics\.json\).*--overwrite",
         _fit_setup(then=_touch("run/test/metrics.json"))),
    Case("validate-report-exists", ["validate", *F], r"holds a validate report \(.*validate/metrics\.json\).*--overwrite",
         _fit_setup(then=_touch("run/validate/metrics.json"))),
]

CASES = PREDICT + STATS + PRETRAIN + PRETRAIN_DATA + FIT


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_and_changes_nothing(case: Case, world: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    if case.setup is not None:
        case.setup(world, tmp_path)
    argv = [a.replace("{w}", str(world)).replace("{t}", str(tmp_path)) for a in case.argv]
    expect_error(argv, case.match, capsys, world, tmp_path)


def test_the_table_is_large_and_its_ids_unique() -> None:
    assert len({c.id for c in CASES}) == len(CASES) >= 100


# --------------------------------------------------------------------------- the Python API


def _api_cases():
    from agrifm.checkpoint import load_model, load_predictor, save_model
    from agrifm.data.stack import open_stack
    from agrifm.data.stats import band_stats
    from agrifm.data.tables import read_table
    from agrifm.predict.engine import predict_scene
    from agrifm.sensors import get_source

    def nan_model(w: Path, t: Path) -> None:
        m = point_model()
        with torch.no_grad():
            next(p for p in m.parameters() if p.numel() > 1).fill_(float("inf"))
        save_model(m, t / "m.safetensors", task="classification", sources={"X": source()}, class_names=["a", "b"])

    def scene(w: Path, t: Path, **kw) -> None:
        predict_scene(load_predictor(w / "model.safetensors", "cpu"), {"X": w / kw.pop("stack", "x")}, t / "m.tif",
                      progress=False, quicklook=False, **kw)

    return [
        ("load-nan", lambda w, t: load_model(w / "nan.safetensors"), ValueError, r"NaN/inf"),
        ("load-inf", lambda w, t: load_model(w / "inf.safetensors"), ValueError, r"NaN/inf"),
        ("load-truncated", lambda w, t: load_model(w / "truncated.safetensors"), ValueError, r"not a readable"),
        ("load-missing", lambda w, t: load_model(t / "none.safetensors"), FileNotFoundError, r"checkpoint not found"),
        ("save-non-finite", nan_model, ValueError, r"not saved: weights .* NaN/inf"),
        ("scene-batch-zero", lambda w, t: scene(w, t, batch_size=0), ValueError, r"--batch-size must be a positive"),
        ("scene-window-huge", lambda w, t: scene(w, t, window=100000), MemoryError, r"--window 100000"),
        ("scene-all-nodata", lambda w, t: scene(w, t, stack="nodata"), ValueError, r"nothing to map"),
        ("scene-constant", lambda w, t: scene(w, t, stack="const"), ValueError, r"constant cube"),
        ("scene-out-exists", lambda w, t: ((t / "m.tif").write_text("x"), scene(w, t)), FileExistsError, r"m\.tif exists"),
        ("scene-until-garbage", lambda w, t: scene(w, t, until="later"), ValueError, r"--until-date 'later'"),
        ("stats-missing", lambda w, t: band_stats(t / "none"), FileNotFoundError, r"none does not exist"),
        ("table-no-label", lambda w, t: ((t / "t.csv").write_text("sample_id,date,B\na,2021-01-01,1\n"),
                                         read_table(t / "t.csv")), ValueError, r"'label'\] missing"),
        ("stack-empty-folder", lambda w, t: open_stack(w / "empty"), FileNotFoundError, r"no GeoTIFF"),
        ("unknown-source", lambda w, t: get_source("NOPE"), KeyError, r"unknown source 'NOPE'"),
    ]


API = _api_cases()


@pytest.mark.parametrize("call, kind, match", [c[1:] for c in API], ids=[c[0] for c in API])
def test_api_raises_our_error_type_with_the_builtin_one(call, kind, match, world: Path, tmp_path: Path) -> None:
    """The API raises AgrifmError subclasses that are also the built-in type callers catch."""
    from agrifm.errors import AgrifmError

    before = snapshot(world)
    with pytest.raises(kind, match=match) as info:
        call(world, tmp_path)
    assert isinstance(info.value, (AgrifmError, OSError)), type(info.value).__mro__
    assert snapshot(world) == before
    assert not (tmp_path / "m.tif").exists() or (tmp_path / "m.tif").read_text() == "x"


def test_the_project_error_types_are_one_family() -> None:
    from agrifm.compat.config import ConfigSyntaxError
    from agrifm.data.h5 import H5SampleError
    from agrifm.data.tables import TableError
    from agrifm.errors import AgrifmError
    from agrifm.pretrain.fractions import NoOverlapError
    from agrifm.pretrain.landcover import UnmappedCodesError
    from agrifm.pretrain.shards import ShardError

    for kind, builtin in ((ConfigSyntaxError, ValueError), (H5SampleError, ValueError), (TableError, ValueError),
                          (NoOverlapError, ValueError), (UnmappedCodesError, ValueError), (ShardError, RuntimeError)):
        assert issubclass(kind, AgrifmError) and issubclass(kind, builtin), kind


def test_saved_models_get_ordinary_permissions(tmp_path: Path) -> None:
    from agrifm.checkpoint import save_model

    old = os.umask(0o022)
    try:
        path = save_model(point_model(), tmp_path / "m.safetensors", task="classification",
                          sources={"X": source()}, class_names=["a", "b"])
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


# --------------------------------------------------------------------------- the dispatcher


@pytest.mark.parametrize("exc, code, line", [
    (PermissionError(13, "Permission denied", "/data/out.tif"), 2, "agrifm stats: error: permission denied: /data/out.tif"),
    (FileNotFoundError(2, "No such file or directory", "/data/x.tif"), 2, "agrifm stats: error: no such file or directory: /data/x.tif"),
    (IsADirectoryError(21, "Is a directory", "/data"), 2, "agrifm stats: error: is a directory: /data"),
    (OSError(28, "No space left on device"), 2, "agrifm stats: error: [Errno 28] No space left on device"),
    (MemoryError(), 2, "agrifm stats: error: out of memory; use smaller windows, batches or blocks"),
    (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), 2,
     "agrifm stats: error: out of memory (CUDA out of memory. Tried to allocate 2.00 GiB); use smaller"),
])
def test_dispatcher_turns_environment_errors_into_one_line(exc, code, line, monkeypatch, capsys) -> None:
    import agrifm.data.stats as stats

    def boom(argv):
        raise exc

    monkeypatch.setattr(stats, "main", boom)
    assert agrifm(["stats", "x"]) == code
    err = capsys.readouterr().err
    assert err.startswith(line) and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_dispatcher_keeps_a_bugs_traceback_and_says_it_is_a_bug(monkeypatch, capsys) -> None:
    import agrifm.data.stats as stats

    def boom(argv):
        return 1 / 0

    monkeypatch.setattr(stats, "main", boom)
    assert agrifm(["stats", "x"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "ZeroDivisionError" in err
    assert err.strip().splitlines()[-1].startswith("agrifm stats: internal error (ZeroDivisionError): this is a bug")


def test_dispatcher_ctrl_c_exits_130(monkeypatch, capsys) -> None:
    import agrifm.data.stats as stats

    def interrupted(argv):
        raise KeyboardInterrupt

    monkeypatch.setattr(stats, "main", interrupted)
    assert agrifm(["stats", "x"]) == 130
    assert capsys.readouterr().err.strip() == "agrifm stats: interrupted"


def test_unknown_command_and_usage_errors_exit_2(capsys) -> None:
    assert agrifm(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        agrifm(["predict", "--window", "many", "--out", "m.tif"])
    assert e.value.code == 2
    assert "agrifm predict: error: argument --window: invalid int value: 'many'" in capsys.readouterr().err


# --------------------------------------------------------------------------- --overwrite replaces


def test_overwrite_replaces_what_is_refused_without_it(world: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "s.json"
    out.write_text("old\n")
    assert agrifm(["stats", str(world / "x"), "--json", str(out)]) == 2
    assert out.read_text() == "old\n"
    assert agrifm(["stats", str(world / "x"), "--json", str(out), "--overwrite"]) == 0
    assert json.loads(out.read_text())["bands"] == ["B1", "B2"]
    m = tmp_path / "m.tif"
    m.write_text("old\n")
    assert agrifm([*(a.replace("{w}", str(world)) for a in P + GOOD), "--out", str(m), "--overwrite"]) == 0
    with rasterio.open(m) as ds:
        assert ds.count == 1 and ds.read(1).max() <= 1


def test_fit_overwrite_starts_afresh(world: Path, tmp_path: Path, capsys) -> None:
    cfg = fit_config(tmp_path / "cfg.yaml", world / "table.csv", tmp_path / "run")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "model.safetensors").write_text("an earlier run\n")
    (tmp_path / "run" / "checkpoints").mkdir()
    (tmp_path / "run" / "checkpoints" / "best.ckpt").write_text("an earlier run's best\n")
    assert agrifm(["fit", "--config", str(cfg)]) == 2
    assert (tmp_path / "run" / "model.safetensors").read_text() == "an earlier run\n"
    assert agrifm(["fit", "--config", str(cfg), "--overwrite", "--trainer.limit_val_batches", "0"]) == 0
    assert not (tmp_path / "run" / "checkpoints" / "best.ckpt").exists()  # not the earlier run's
    from agrifm.checkpoint import read_metadata

    assert read_metadata(tmp_path / "run" / "model.safetensors").class_names == ["a", "b"]


def test_fit_help_is_agrifm_plain_text(capsys) -> None:
    with pytest.raises(SystemExit) as e:
        agrifm(["fit", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: agrifm fit ") and "cli.py" not in out
    assert "``" not in out and ":class:" not in out and ":func:" not in out
    assert "configs/" in out and "test/ or validate/" in out and "default: " in out
