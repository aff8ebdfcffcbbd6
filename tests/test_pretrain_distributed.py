"""The distributed path of ``agrifm pretrain``: a 2-process CPU run (torchrun, gloo) must compute
what one process computes with the same global batch, with every rank reading its own shards.

Deterministic by construction: shards of 2 samples (= the per-rank batch), shuffling off, no
drop-path, series all long enough (no skips), the same seed. One process with batch 4 then
trains on shard k and k+1 at step k/2 - exactly the union of what ranks 0 and 1 read.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import DATA, ROOT, need

pytest.importorskip("lightning")
pytestmark = pytest.mark.distributed

TINY = {"preset": "small", "embed_dim": 16, "depths": [1, 1], "num_heads": [1, 2], "patch_size": [2, 2, 2],
        "window_size": [4, 4, 4], "downsample_steps": [[2, 2, 2]], "drop_path_rate": 0.0}
STEPS = 3


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    pytest.importorskip("rasterio")
    from agrifm.pretrain.build import main as build

    d = need(DATA / "eolearn_slovenia")
    out = tmp_path_factory.mktemp("dist")
    argv = ["--source", f"NDVI={d / 'NDVI.tif'}", "--mask", f"NDVI={d / 'CLM.tif'}", "--landcover", str(d / "LULC.tif"),
            "--classes", "eolearn_lulc", "--chip-size", "16", "--cell-size", "4", "--keep-empty-frames",
            "--min-frames", "16", "--samples-per-shard", "2", "--out", str(out / "shards"), "--quiet"]
    assert build(argv) == 0
    (out / "tiny.yaml").write_text(json.dumps(TINY))
    return out / "shards", out / "tiny.yaml"


def _argv(shards: Path, cfg: Path, out: Path, batch: int, *extra: str) -> list[str]:
    return ["--data", str(shards), "--out", str(out), "--model", str(cfg), "--max-steps", str(STEPS),
            "--batch-size", str(batch), "--workers", "0", "--shuffle-buffer", "0", "--quiet", "--log-every", "1",
            "--teacher-warmup", "1", "--lr", "1e-3", "--warmup-steps", "1", *extra]


def _torchrun(args: list[str]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "agrifm.pretrain.cli", *args]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(run / "model.safetensors")


def _losses(run: Path) -> list[float]:
    return [float(r.split(",")[1]) for r in (run / "metrics.csv").read_text().splitlines()[1:]]


@pytest.fixture(scope="module")
def single(setup: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    from agrifm.pretrain.cli import main

    run = tmp_path_factory.mktemp("single") / "run"
    assert main(_argv(*setup, run, 4)) == 0
    return run


@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_two_processes_match_one_with_the_same_global_batch(setup, single: Path, tmp_path: Path, strategy: str) -> None:
    shards, cfg = setup
    run = tmp_path / strategy
    _torchrun(_argv(shards, cfg, run, 2, "--strategy", strategy))

    summary = json.loads((run / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["global_batch"] == 4 and summary["samples"] == 4 * STEPS
    ranks = [set(r["shards"]["NDVI"]) for r in summary["ranks"]]
    index = json.loads((shards / "NDVI" / "index.json").read_text())
    assert not ranks[0] & ranks[1] and ranks[0] | ranks[1] == {s["name"] for s in index["shards"]}
    assert [r["samples"]["NDVI"] for r in summary["ranks"]] == [2 * STEPS, 2 * STEPS]

    assert _losses(run) == pytest.approx(_losses(single), abs=1e-5)
    one, two = _weights(single), _weights(run)
    assert max((one[k] - two[k]).abs().max().item() for k in one) < 1e-5
    pub = torch.load(run / "encoder_published.pth", weights_only=True)
    assert torch.equal(pub["NDVI_patch_emd.proj.weight"], two["encoders.NDVI.patch_emd.proj.weight"])
