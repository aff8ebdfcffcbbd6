"""Interruption (issue 15): kill and resume without losing or changing finished work.

``pretrain --resume`` with the presets' drop-path (random per step) is bit-identical to an
uninterrupted run, metrics rows included; ``predict`` resumes its blocks and refuses blocks
of changed inputs; ensemble workers die with their parent.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from test_bad_inputs import write_shards

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_DROP = {"preset": "small", "embed_dim": 8, "depths": [1, 1], "num_heads": [1, 1], "patch_size": [2, 2, 2],
             "window_size": [2, 4, 4], "downsample_steps": [[2, 2, 2]], "drop_path_rate": 0.2}


def _argv(shards: Path, model: Path, out: Path, *extra: str) -> list[str]:
    return ["--data", str(shards), "--out", str(out), "--model", str(model), "--batch-size", "2", "--frames", "4",
            "--workers", "0", "--quiet", "--log-every", "1", "--ckpt-every", "1", "--val-every", "100",
            "--lr", "1e-3", "--warmup-steps", "1", "--max-steps", "4", *extra]


@pytest.mark.parametrize("workers", ["0", "1"])
def test_pretrain_resume_is_bit_identical_with_drop_path(tmp_path: Path, workers: str) -> None:
    from safetensors.torch import load_file

    from agrifm.pretrain.cli import parse_args, run

    shards = write_shards(tmp_path / "shards" / "X", samples=8)
    model = tmp_path / "tiny.yaml"
    model.write_text(json.dumps(TINY_DROP))

    class StopAt(L.Callback):
        def on_train_batch_end(self, trainer, *args) -> None:
            if trainer.global_step >= 2:
                trainer.should_stop = True

    straight, broken = tmp_path / "straight", tmp_path / "broken"
    run(parse_args(_argv(shards, model, straight, "--workers", workers)))
    run(parse_args(_argv(shards, model, broken, "--workers", workers)), callbacks=[StopAt()])
    rows = (broken / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2"]  # the checkpoint step's row is there
    run(parse_args(_argv(shards, model, broken, "--workers", workers, "--resume")))
    a, b = load_file(straight / "model.safetensors"), load_file(broken / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (straight / "metrics.csv").read_text() == (broken / "metrics.csv").read_text()


def test_pretrain_resume_differs_without_the_random_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check above can fail: dropping the saved random state changes the resumed weights."""
    from safetensors.torch import load_file

    from agrifm.pretrain import task
    from agrifm.pretrain.cli import parse_args, run

    shards = write_shards(tmp_path / "shards" / "X", samples=8)
    model = tmp_path / "tiny.yaml"
    model.write_text(json.dumps(TINY_DROP))

    class StopAt(L.Callback):
        def on_train_batch_end(self, trainer, *args) -> None:
            if trainer.global_step >= 2:
                trainer.should_stop = True

    straight, broken = tmp_path / "straight", tmp_path / "broken"
    run(parse_args(_argv(shards, model, straight)))
    run(parse_args(_argv(shards, model, broken)), callbacks=[StopAt()])
    monkeypatch.setattr(task, "set_rng_state", lambda state: torch.manual_seed(12345))
    run(parse_args(_argv(shards, model, broken, "--resume")))
    a, b = load_file(straight / "model.safetensors"), load_file(broken / "model.safetensors")
    assert not all(torch.equal(a[k], b[k]) for k in a)


def test_ensemble_workers_die_with_their_parent(tmp_path: Path) -> None:
    """SIGKILL of the parent: its pool workers end within seconds instead of training on."""
    script = tmp_path / "parent.py"
    script.write_text(textwrap.dedent(f"""
        import multiprocessing as mp, os, sys, time
        from concurrent.futures import ProcessPoolExecutor
        from agrifm.tasks.pointfit import die_with_parent

        def work(i):
            open(os.path.join({str(tmp_path)!r}, f"worker{{i}}.pid"), "w").write(str(os.getpid()))
            time.sleep(120)

        if __name__ == "__main__":
            with ProcessPoolExecutor(2, mp_context=mp.get_context("spawn"), initializer=die_with_parent,
                                     initargs=(os.getpid(),)) as pool:
                list(pool.map(work, range(2)))
    """))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(Path(__file__).parents[1] / "src"),
                                                                     os.environ.get("PYTHONPATH")])))
    parent = subprocess.Popen([sys.executable, str(script)], env=env)
    try:
        deadline = time.time() + 60
        while len(list(tmp_path.glob("worker*.pid"))) < 2 and time.time() < deadline:
            time.sleep(0.2)
        pids = [int(p.read_text()) for p in tmp_path.glob("worker*.pid")]
        assert len(pids) == 2
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        deadline = time.time() + 10
        alive = pids
        while alive and time.time() < deadline:
            time.sleep(0.2)
            alive = [p for p in pids if _alive(p)]
        assert not alive, f"workers {alive} outlived their parent"
    finally:
        if parent.poll() is None:
            parent.kill()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by init) is dead
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return True
