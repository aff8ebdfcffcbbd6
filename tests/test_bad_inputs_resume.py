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


class StopAt(L.Callback):
    """Stops training after step 2 (its checkpoint written), as a kill would between steps."""

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step >= 2:
            trainer.should_stop = True


def _straight_and_resumed(tmp_path: Path, *extra: str) -> tuple[Path, Path]:
    """Run folders of 4 steps straight, and of 2 steps then ``--resume`` to 4."""
    from agrifm.pretrain.cli import parse_args, run

    shards = write_shards(tmp_path / "shards" / "X", samples=8)
    model = tmp_path / "tiny.yaml"
    model.write_text(json.dumps(TINY_DROP))
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    run(parse_args(_argv(shards, model, straight, *extra)))
    run(parse_args(_argv(shards, model, broken, *extra)), callbacks=[StopAt()])
    rows = (broken / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2"]  # the checkpoint step's row is there
    run(parse_args(_argv(shards, model, broken, *extra, "--resume")))
    return straight, broken


def _same_weights(a: Path, b: Path) -> bool:
    from safetensors.torch import load_file

    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    return all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize("workers, validate", [("0", False), ("1", True)])
def test_pretrain_resume_is_bit_identical_with_drop_path(tmp_path: Path, workers: str, validate: bool) -> None:
    val = ("--val-data", str(write_shards(tmp_path / "val" / "X", samples=4)), "--val-every", "2") if validate else ()
    straight, broken = _straight_and_resumed(tmp_path, "--workers", workers, *val)
    assert _same_weights(straight, broken)
    assert (straight / "metrics.csv").read_text() == (broken / "metrics.csv").read_text()


def test_pretrain_resume_differs_without_the_random_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check above can fail: dropping the saved random state changes the resumed weights."""
    from agrifm.pretrain import task

    monkeypatch.setattr(task, "set_rng_state", lambda state: torch.manual_seed(12345))
    assert not _same_weights(*_straight_and_resumed(tmp_path))


def test_ensemble_workers_die_with_their_parent(tmp_path: Path) -> None:
    """SIGKILL of the parent: its pool workers end within seconds instead of training on."""
    script = tmp_path / "parent.py"
    script.write_text(textwrap.dedent(f"""
        import multiprocessing as mp, os, sys, time
        from concurrent.futures import ProcessPoolExecutor
        from agrifm.runtime import die_with_parent

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


# --------------------------------------------------------------------------- predict


class Threshold:
    """One-hot of ``band 0 of the last frame > 0.35`` per pixel; raises after ``fail_after`` calls."""

    class_names = ["low", "high"]
    class_colors = [(200, 200, 60), (30, 120, 40)]
    kind = "dense"
    frames = None

    def __init__(self, sources, fail_after: int | None = None) -> None:
        self.sources, self.fail_after, self.calls = sources, fail_after, 0

    def __call__(self, inputs):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise KeyboardInterrupt  # stands in for a kill
        on = (next(iter(inputs.values()))[:, -1, 0] > 0.5).float()
        return torch.stack([1 - on, on], 1)


def _predict(sources, stacks, out: Path, **kw):
    from agrifm.predict.engine import predict_scene

    kw = {"window": 8, "overlap": 2, "block_size": 8, "batch_size": 1, "progress": False, "quicklook": False, **kw}
    return predict_scene(Threshold(sources, kw.pop("fail_after", None)), stacks, out, **kw)


def _map(path: Path) -> np.ndarray:
    import rasterio

    with rasterio.open(path) as ds:
        return ds.read(1)


@pytest.fixture
def scene(tmp_path: Path):
    from test_bad_inputs import source, write_stack

    data = np.random.default_rng(1).uniform(0.1, 0.6, (3, 2, 20, 24))
    return {"X": source()}, write_stack(tmp_path / "x", data), data


def test_predict_killed_then_resumed_equals_a_straight_run(tmp_path: Path, scene) -> None:
    sources, stack, _ = scene
    _predict(sources, {"X": stack}, tmp_path / "straight.tif")
    blocks = tmp_path / "blocks"
    with pytest.raises(KeyboardInterrupt):
        _predict(sources, {"X": stack}, tmp_path / "m.tif", fail_after=7, block_dir=blocks)
    done = sorted(p.name for p in blocks.glob("block_*.npz"))
    assert done and not (tmp_path / "m.tif").exists()
    res = _predict(sources, {"X": stack}, tmp_path / "m.tif", block_dir=blocks)
    assert res.blocks_skipped == len(done) and res.blocks_run > 0
    np.testing.assert_array_equal(_map(tmp_path / "m.tif"), _map(tmp_path / "straight.tif"))


def test_predict_refuses_blocks_of_changed_inputs(tmp_path: Path, scene) -> None:
    """Inputs rewritten after a kill: --block-dir refuses; the default hidden folder starts afresh."""
    from test_bad_inputs import write_stack

    from agrifm.errors import AgrifmError

    sources, stack, data = scene
    blocks = tmp_path / "blocks"
    for block_dir in (blocks, None):
        with pytest.raises(KeyboardInterrupt):
            _predict(sources, {"X": stack}, tmp_path / "m.tif", fail_after=7, block_dir=block_dir)
    time.sleep(0.01)
    write_stack(stack, 1.0 - data)  # same paths, names, size and dates; other values
    with pytest.raises(AgrifmError, match=r"holds blocks of another run or of inputs changed since \(differs in \['inputs'\]\)"):
        _predict(sources, {"X": stack}, tmp_path / "m.tif", block_dir=blocks)
    _predict(sources, {"X": stack}, tmp_path / "m.tif")  # default folder: restarts
    _predict(sources, {"X": stack}, tmp_path / "fresh.tif")
    np.testing.assert_array_equal(_map(tmp_path / "m.tif"), _map(tmp_path / "fresh.tif"))


def test_a_failed_predict_without_blocks_leaves_nothing_behind(tmp_path: Path, scene) -> None:
    sources, stack, _ = scene
    with pytest.raises(KeyboardInterrupt):
        _predict(sources, {"X": stack}, tmp_path / "m.tif", fail_after=0)
    assert not (tmp_path / ".m.tif.blocks").exists()
    with pytest.raises(KeyboardInterrupt):  # an explicit folder that got no block is reused by a changed run
        _predict(sources, {"X": stack}, tmp_path / "m.tif", fail_after=0, block_dir=tmp_path / "b", window=16)
    _predict(sources, {"X": stack}, tmp_path / "m.tif", block_dir=tmp_path / "b")
    assert (tmp_path / "m.tif").exists()


def test_a_damaged_block_is_named_removed_and_redone(tmp_path: Path, scene, capsys) -> None:
    from agrifm.errors import AgrifmError
    from agrifm.predict.engine import assemble

    sources, stack, _ = scene
    _predict(sources, {"X": stack}, tmp_path / "ref.tif")
    blocks = tmp_path / "blocks"
    _predict(sources, {"X": stack}, tmp_path / "m.tif", block_dir=blocks, finalize=False)
    victim = sorted(blocks.glob("block_*.npz"))[1]
    raw = bytearray(victim.read_bytes())
    raw[60:400] = b"\0" * 340  # bit rot inside the first member
    victim.write_bytes(bytes(raw))
    with pytest.raises(AgrifmError, match=rf"block file .*{victim.name} is damaged .* rerun the same predict"):
        assemble(blocks, tmp_path / "m.tif", quicklook=False)
    assert not victim.exists() and not (tmp_path / "m.tif").exists()
    res = _predict(sources, {"X": stack}, tmp_path / "m.tif", block_dir=blocks)
    assert res.blocks_run == 1
    np.testing.assert_array_equal(_map(tmp_path / "m.tif"), _map(tmp_path / "ref.tif"))
    victim = sorted(blocks.glob("block_*.npz"))[0]  # truncated: noticed before the run, redone
    victim.write_bytes(victim.read_bytes()[:100])
    res = _predict(sources, {"X": stack}, tmp_path / "m2.tif", block_dir=blocks)
    assert res.blocks_run == 1
    np.testing.assert_array_equal(_map(tmp_path / "m2.tif"), _map(tmp_path / "ref.tif"))


def test_a_source_missing_over_part_of_the_scene_is_nodata_there(tmp_path: Path, scene) -> None:
    """The second source covers the left half only: the right half is nodata, not classified
    with that source's band mean."""
    from test_bad_inputs import write_stack

    from agrifm.sensors import Source

    sources, stack, data = scene
    y = Source(name="Y", bands=("B1", "B2"), resolution_m=10.0, units="reflectance", mean=(0.3, 0.3),
               std=(0.1, 0.1), valid_range=(0.0, 1.0))
    half = data.copy()
    half[..., 12:] = -9999.0  # never observed
    ys = write_stack(tmp_path / "y", half)
    _predict({"X": sources["X"], "Y": y}, {"X": stack, "Y": ys}, tmp_path / "m.tif")
    got = _map(tmp_path / "m.tif")
    assert (got[:, 12:] == 255).all()
    np.testing.assert_array_equal(got[:, :12], (data[-1, 0, :, :12] > 0.35).astype(np.uint8))


def test_nothing_mapped_is_an_error_and_writes_no_map(tmp_path: Path, scene) -> None:
    from test_bad_inputs import write_stack

    from agrifm.predict.engine import NothingMappedError

    sources, _, data = scene
    empty = write_stack(tmp_path / "e", np.full_like(data, -9999.0))
    with pytest.raises(NothingMappedError, match="no pixel of the output area 24x20 px"):
        _predict(sources, {"X": empty}, tmp_path / "m.tif")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e", "x"]


def test_local_rank_picks_the_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    from agrifm.predict.engine import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert resolve_device(None) == torch.device("cuda", 3)
    assert resolve_device("cuda") == torch.device("cuda", 3)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.delenv("LOCAL_RANK")
    assert resolve_device(None) is None and resolve_device("cuda") == torch.device("cuda")


# --------------------------------------------------------------------------- fit


def test_fit_killed_then_resumed_continues_from_last(tmp_path: Path, capsys) -> None:
    """Killed after step 3 (last.ckpt every step, the last at step 2): the run folder is refused without
    --ckpt_path last; with it training goes on from step 2 to the end."""
    from lightning.pytorch.callbacks import Callback

    from test_bad_inputs import fit_config, write_table

    from agrifm.checkpoint import read_metadata
    from agrifm.cli import main as agrifm
    from agrifm.tasks.cli import AgriFMCLI, default_trainer_settings

    class KillAfter(Callback):
        def on_train_batch_end(self, trainer, *args) -> None:
            if trainer.global_step >= 3:  # before ModelCheckpoint saves step 3
                raise RuntimeError("killed at step 3")  # stands in for a kill (Lightning turns Ctrl-C into exit 1)

    table = write_table(tmp_path / "t.csv")
    cfg = fit_config(tmp_path / "cfg.yaml", table, tmp_path / "run")
    args = ["fit", "--config", str(cfg), "--trainer.max_steps", "4", "--last_checkpoint.every_n_train_steps", "1"]
    with pytest.raises(RuntimeError, match="killed at step 3"):
        AgriFMCLI(args=args, trainer_defaults={**default_trainer_settings(), "callbacks": [KillAfter()]})
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=False, map_location="cpu")["global_step"] == 2
    assert not (tmp_path / "run" / "model.safetensors").exists()
    code, err = agrifm(args), capsys.readouterr().err
    assert code == 2 and "holds a run" in err, err
    assert torch.load(last, weights_only=False, map_location="cpu")["global_step"] == 2  # untouched
    assert agrifm([*args, "--ckpt_path", "last"]) == 0
    assert read_metadata(tmp_path / "run" / "model.safetensors").extra["global_step"] == 4


def test_predict_sigkill_then_rerun_equals_a_straight_run(tmp_path: Path, capsys) -> None:
    """A real kill (SIGKILL of `agrifm predict` once blocks exist); the same command resumes."""
    from test_bad_inputs import point_model, source, write_stack

    from agrifm.checkpoint import save_model
    from agrifm.cli import main as agrifm

    save_model(point_model(), tmp_path / "m.safetensors", task="classification", sources={"X": source()},
               class_names=["a", "b"])
    write_stack(tmp_path / "x", np.random.default_rng(2).uniform(0.1, 0.6, (3, 2, 160, 160)))
    argv = ["predict", "--checkpoint", str(tmp_path / "m.safetensors"), "--source", f"X={tmp_path / 'x'}",
            "--device", "cpu", "--window", "8", "--overlap", "0", "--block-size", "16", "--batch-size", "1",
            "--no-progress", "--no-quicklook"]
    assert agrifm([*argv, "--out", str(tmp_path / "straight.tif")]) == 0
    env = dict(os.environ, AGRIFM_NO_TCMALLOC="1", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(Path(__file__).parents[1] / "src"),
                                                        os.environ.get("PYTHONPATH")])))
    out = tmp_path / "m.tif"
    blocks = tmp_path / ".m.tif.blocks"
    proc = subprocess.Popen([sys.executable, "-m", "agrifm.cli", *argv, "--out", str(out)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while len(list(blocks.glob("block_*.npz"))) < 3 and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    if out.exists():
        pytest.skip("the run finished before it could be killed (a fast machine)")
    done = len(list(blocks.glob("block_*.npz")))
    assert done >= 3
    capsys.readouterr()
    assert agrifm([*argv, "--out", str(out)]) == 0
    assert f", {done} already done," in capsys.readouterr().out
    np.testing.assert_array_equal(_map(out), _map(tmp_path / "straight.tif"))
    assert not blocks.exists()


def test_the_mapped_area_leaves_out_nodata(tmp_path: Path, scene, capsys) -> None:
    from test_bad_inputs import write_stack

    sources, _, data = scene
    holes = data.copy()
    holes[..., :, :6] = -9999.0  # a quarter of the 24 columns never observed
    res = _predict(sources, {"X": write_stack(tmp_path / "h", holes)}, tmp_path / "m.tif")
    assert res.mapped_km2 == pytest.approx(20 * 18 * 100 / 1e6) and res.area_km2 == pytest.approx(20 * 24 * 100 / 1e6)


def test_a_constant_centre_is_not_a_constant_cube(tmp_path: Path, scene) -> None:
    """Only a cube constant everywhere sampled is refused: a uniform patch at the centre maps."""
    from test_bad_inputs import write_stack

    sources = scene[0]
    data = np.random.default_rng(3).uniform(0.1, 0.6, (3, 2, 300, 300))
    data[..., 80:220, 80:220] = 0.3  # the 128-px centre sample sees only this
    _predict(sources, {"X": write_stack(tmp_path / "p", data)}, tmp_path / "m.tif", window=64, block_size=128,
             batch_size=8)
    assert (_map(tmp_path / "m.tif") != 255).all()
