"""Scene engine: blending, nodata, multi-resolution, resume, ranks, bad input, CLI."""

from __future__ import annotations

import hashlib
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import from_origin

from agrifm.predict import cli
from agrifm.predict.engine import UnitsWarning, assemble, predict_scene, units_problem
from agrifm.sensors import Source, get_source

DATES = ["2021-03-01", "2021-04-01", "2021-05-01"]
NODATA_IN = -9999.0


def make_source(name: str = "X", bands: tuple[str, ...] = ("B1", "B2"), res: float = 10.0) -> Source:
    return Source(name=name, bands=bands, resolution_m=res, units="test units", mean=(0.0,) * len(bands),
                  std=(1.0,) * len(bands), valid_range=(-5.0, 5.0))


def write_stack(folder: Path, data: np.ndarray, bands: tuple[str, ...] = ("B1", "B2"), *, res: float = 10.0,
                origin: tuple[float, float] = (500000.0, 4000000.0), crs: str = "EPSG:32631",
                dates: list[str] = DATES) -> Path:
    """One float32 GeoTIFF per date (NaN written as nodata -9999), bands named by description."""
    folder.mkdir(parents=True, exist_ok=True)
    t, c, h, w = data.shape
    for i, d in enumerate(dates[:t]):
        with rasterio.open(folder / f"X_{d}.tif", "w", driver="GTiff", width=w, height=h, count=c, dtype="float32",
                           crs=crs, transform=from_origin(*origin, res, res), nodata=NODATA_IN) as ds:
            ds.write(np.nan_to_num(data[i], nan=NODATA_IN).astype(np.float32))
            ds.descriptions = bands
    return folder


def scene(h: int = 60, w: int = 50, t: int = 3, seed: int = 0) -> np.ndarray:
    """Smooth random field (classes form patches, like fields), values within -2..2."""
    rng = np.random.default_rng(seed)
    coarse = rng.normal(size=(t, 2, h // 5 + 2, w // 5 + 2))
    return np.kron(coarse, np.ones((5, 5)))[:, :, :h, :w].astype(np.float32)


class Threshold:
    """Identity-like predictor: one-hot of ``band 0 of the last frame > 0`` (dense or point)."""

    class_names = ["low", "high"]
    class_colors = [(200, 200, 60), (30, 120, 40)]

    def __init__(self, sources: dict[str, Source] | None = None, kind: str = "dense", frames: int | None = None,
                 fail_after: int | None = None) -> None:
        self.sources = sources or {"X": make_source()}
        self.kind, self.frames, self.fail_after = kind, frames, fail_after
        self.calls, self.shapes = 0, []

    def __call__(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise RuntimeError("simulated crash")
        self.shapes.append({k: tuple(v.shape) for k, v in inputs.items()})
        on = (next(iter(inputs.values()))[:, -1, 0] > 0).float()
        probs = torch.stack([1 - on, on], 1)
        return probs[:, :, 0, 0] if self.kind == "point" else probs


def read_map(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read(1)


def run(predictor, sources, out: Path, **kw):
    kw = {"window": 32, "overlap": 8, "block_size": 24, "progress": False, "quicklook": False, **kw}
    return predict_scene(predictor, sources, out, **kw)


# --------------------------------------------------------------------------- blending


@pytest.mark.parametrize("kind", ["dense", "point"])
def test_blended_identity_predictor_reproduces_threshold_map(tmp_path: Path, kind: str) -> None:
    data = scene()
    stack = write_stack(tmp_path / "x", data)
    res = run(Threshold(kind=kind), {"X": stack}, tmp_path / "map.tif")
    assert res.blocks_run > 1
    np.testing.assert_array_equal(read_map(tmp_path / "map.tif"), (data[-1, 0] > 0).astype(np.uint8))
    assert not res.block_dir.exists()  # default block folder removed after success


def test_settings_object_and_keyword_overrides_map_the_same(tmp_path: Path) -> None:
    from agrifm.predict.engine import PredictSettings

    data = scene()
    stack = write_stack(tmp_path / "x", data)
    settings = PredictSettings(window=32, overlap=8, block_size=24, progress=False, quicklook=False)
    predict_scene(Threshold(), {"X": stack}, tmp_path / "a.tif", settings)
    predict_scene(Threshold(), {"X": stack}, tmp_path / "b.tif", settings, window=16, overlap=4)
    want = (data[-1, 0] > 0).astype(np.uint8)
    np.testing.assert_array_equal(read_map(tmp_path / "a.tif"), want)
    np.testing.assert_array_equal(read_map(tmp_path / "b.tif"), want)
    assert settings.window == 32  # overrides leave the caller's settings as they were
    with pytest.raises(TypeError, match="windw"):
        predict_scene(Threshold(), {"X": stack}, tmp_path / "c.tif", settings, windw=16)


def test_nodata_and_partial_gaps(tmp_path: Path) -> None:
    data = scene()
    data[:, :, :5, :7] = np.nan  # never observed -> output nodata
    data[-1, :, 20:30, 20:30] = np.nan  # last frame missing -> filled from the frame before
    stack = write_stack(tmp_path / "x", data)
    run(Threshold(), {"X": stack}, tmp_path / "map.tif")
    got = read_map(tmp_path / "map.tif")
    want = (data[-1, 0] > 0).astype(np.uint8)
    want[20:30, 20:30] = data[-2, 0, 20:30, 20:30] > 0
    want[:5, :7] = 255
    np.testing.assert_array_equal(got, want)


def test_multi_resolution_sources_share_the_window(tmp_path: Path) -> None:
    fine = write_stack(tmp_path / "fine", scene(60, 51))
    coarse = write_stack(tmp_path / "coarse", scene(20, 17, seed=1), res=30.0)
    srcs = {"F": make_source("F"), "C": make_source("C", res=30.0)}
    for kind, shapes in (("dense", {"F": (32, 32), "C": (11, 11)}), ("point", {"F": (1, 1), "C": (1, 1)})):
        p = Threshold(srcs, kind=kind)
        res = run(p, {"C": coarse, "F": fine}, tmp_path / f"{kind}.tif")
        assert list(p.shapes[0]) == ["F", "C"]  # model order, whatever the caller's order
        assert all(s[k][-2:] == shapes[k] for s in p.shapes for k in s)
        assert (res.grid.width, res.grid.height, res.grid.res) == (51, 60, (10.0, 10.0))


def test_reprojected_source_and_user_grid(tmp_path: Path) -> None:
    from rasterio.warp import transform_bounds

    data = scene(60, 50)
    fine = write_stack(tmp_path / "fine", data)
    left, bottom, right, top = transform_bounds("EPSG:32631", "EPSG:4326", 500000, 3999400, 500500, 4000000)
    geo = write_stack(tmp_path / "geo", scene(25, 20, seed=2), res=0.0003, origin=(left - 0.0006, top + 0.0006),
                      crs="EPSG:4326")
    p = Threshold({"F": make_source("F"), "G": make_source("G", res=30.0)})
    run(p, {"F": fine, "G": geo}, tmp_path / "map.tif")
    assert {s["G"][-2:] for s in p.shapes} == {(10, 12)}  # 320 m over ~33 m (lat) x ~27 m (lon) pixels
    np.testing.assert_array_equal(read_map(tmp_path / "map.tif"), data[-1, 0] > 0)
    res = run(Threshold(), {"X": fine}, tmp_path / "coarse.tif", resolution=20, bounds=(500005, 3999500, 500300, 3999995))
    assert (res.grid.width, res.grid.height) == (15, 25) and tuple(res.grid.transform)[:6] == (20, 0, 500000, 0, -20, 4e6)
    assert read_map(tmp_path / "coarse.tif").shape == (25, 15)


def test_until_limits_frames_and_is_recorded(tmp_path: Path) -> None:
    stack = write_stack(tmp_path / "x", scene())
    p = Threshold()
    run(p, {"X": stack}, tmp_path / "map.tif", until="2021-04-15")
    assert {s["X"][1] for s in p.shapes} == {2}
    with rasterio.open(tmp_path / "map.tif") as ds:
        tags = ds.tags()
    assert json.loads(tags["DATES"]) == {"X": DATES[:2]} and tags["UNTIL"] == "2021-04-15"
    with pytest.raises(ValueError, match="no frame on or before"):
        run(Threshold(), {"X": stack}, tmp_path / "early.tif", until="2020-01-01")


def test_frames_are_resampled_to_what_the_model_wants(tmp_path: Path) -> None:
    stack = write_stack(tmp_path / "x", scene())
    p = Threshold(frames=5)
    run(p, {"X": stack}, tmp_path / "map.tif")
    assert {s["X"][1] for s in p.shapes} == {5}


def _conv_predictor() -> Threshold:
    """A fixed random 3x3 conv net on the 12 Belgium months (10 S2 bands, B8A <- B08)."""
    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Conv2d(120, 8, 3, padding=1), torch.nn.Tanh(), torch.nn.Conv2d(8, 3, 1))

    class Conv(Threshold):
        class_names = ["a", "b", "c"]
        class_colors = [(230, 180, 40), (40, 140, 60), (200, 60, 60)]

        def __call__(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
            with torch.no_grad():
                return (net(inputs["S2"].flatten(1, 2)) * 3).softmax(1)

    return Conv({"S2": get_source("S2")})


def test_no_seams_on_a_real_scene(tmp_path: Path, data_dir: Path) -> None:
    belgium = data_dir / "worldcereal_belgium" / "test_cube_100x100"
    kw = dict(band_map={"S2": {"B8A": "B08"}})
    p = _conv_predictor()
    run(p, {"S2": belgium}, tmp_path / "small.tif", window=32, overlap=8, block_size=48, **kw)
    run(p, {"S2": belgium}, tmp_path / "big.tif", window=128, overlap=0, **kw)
    small, big = read_map(tmp_path / "small.tif"), read_map(tmp_path / "big.tif")
    assert len(np.unique(big)) >= 2
    edges = np.zeros(100, bool)  # rows/cols next to an inner window edge of the small tiling
    for s in range(24, 100, 24):
        edges[max(0, s - 1):s + 2] = True
        edges[max(0, s + 7):s + 10] = True
    diff = small != big
    assert diff.mean() < 0.01
    assert not diff[~edges][:, ~edges].any(), "differences only next to window edges"
    on = np.zeros(99, bool)  # pairs (i, i+1) straddling a window edge
    for s in range(24, 100, 24):
        on[[i for i in (s - 1, s + 7) if i < 99]] = True
    ch, cv = small[:, 1:] != small[:, :-1], small[1:] != small[:-1]
    border = np.r_[ch[:, on].ravel(), cv[on].ravel()].mean()
    elsewhere = np.r_[ch[:, ~on].ravel(), cv[~on].ravel()].mean()
    assert border <= 1.5 * elsewhere + 0.01, (border, elsewhere)


# --------------------------------------------------------------------------- resume and ranks


def test_resume_after_crash_skips_done_blocks(tmp_path: Path) -> None:
    stack = write_stack(tmp_path / "x", scene())
    ref = Threshold()
    run(ref, {"X": stack}, tmp_path / "ref.tif", batch_size=1)  # 3 x 2 windows, one per block
    blocks = tmp_path / "blocks"
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(Threshold(fail_after=4), {"X": stack}, tmp_path / "map.tif", batch_size=1, block_dir=blocks)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocks", "ref.tif", "ref.tif.aux.xml", "x"]  # no partial output
    done = len(list(blocks.glob("block_*.npz")))  # 4 windows, plus blocks without windows of their own
    assert 4 <= done < 9
    again = Threshold()
    res = run(again, {"X": stack}, tmp_path / "map.tif", batch_size=1, block_dir=blocks)
    assert res.blocks_skipped == done and again.calls == ref.calls - 4
    np.testing.assert_array_equal(read_map(tmp_path / "map.tif"), read_map(tmp_path / "ref.tif"))
    with pytest.raises(ValueError, match="another run"):  # same folder, other settings
        run(Threshold(), {"X": stack}, tmp_path / "other.tif", window=16, block_dir=blocks)


def test_two_ranks_then_assemble_equal_one_rank(tmp_path: Path) -> None:
    stack = write_stack(tmp_path / "x", scene())
    one = run(Threshold(), {"X": stack}, tmp_path / "one.tif", probabilities=True)
    blocks = tmp_path / "blocks"
    r0 = run(Threshold(), {"X": stack}, tmp_path / "two.tif", probabilities=True, rank=0, world_size=2,
             block_dir=blocks)
    assert r0.outputs == {} and r0.blocks_run > 0
    r1 = run(Threshold(), {"X": stack}, tmp_path / "two.tif", probabilities=True, rank=1, world_size=2,
             block_dir=blocks, finalize=False)
    assert r1.outputs == {} and r0.blocks_run + r1.blocks_run == one.blocks_run
    paths = assemble(blocks, tmp_path / "two.tif", quicklook=False)
    for layer in ("map", "probs", "confidence"):
        with rasterio.open(one.outputs[layer]) as a, rasterio.open(paths[layer]) as b:
            np.testing.assert_array_equal(a.read(), b.read())


# --------------------------------------------------------------------------- bad input


def test_overwrite_is_refused_before_any_work(tmp_path: Path) -> None:
    stack = write_stack(tmp_path / "x", scene())
    out = tmp_path / "map.tif"
    out.write_bytes(b"old")
    p = Threshold()
    with pytest.raises(FileExistsError, match="map.tif"):
        run(p, {"X": stack}, out)
    assert p.calls == 0 and out.read_bytes() == b"old"
    run(p, {"X": stack}, out, overwrite=True)
    assert read_map(out).shape == (60, 50)


def test_source_errors_name_the_culprit(tmp_path: Path) -> None:
    stack = write_stack(tmp_path / "x", scene())
    with pytest.raises(ValueError, match="unknown source 'Y'"):
        run(Threshold(), {"X": stack, "Y": stack}, tmp_path / "m.tif")
    two = {"X": make_source(), "Z": make_source("Z")}
    with pytest.raises(ValueError, match=r"missing source\(s\) \['Z'\]"):
        run(Threshold(two), {"X": stack}, tmp_path / "m.tif")
    with pytest.raises(ValueError, match="source 'X'.*'B3'"):
        run(Threshold({"X": make_source(bands=("B1", "B3"))}), {"X": stack}, tmp_path / "m.tif")
    far = write_stack(tmp_path / "far", scene(), origin=(600000.0, 4000000.0))
    with pytest.raises(ValueError, match="source 'Z'.*does not overlap"):
        run(Threshold(two), {"X": stack, "Z": far}, tmp_path / "m.tif")
    with pytest.raises(ValueError, match="both name"):
        run(Threshold({"S2": get_source("S2")}), {"S2": stack, "sentinel-2": stack}, tmp_path / "m.tif")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["far", "x"]


def test_wrong_units_warn_with_source_and_range(tmp_path: Path) -> None:
    stack = write_stack(tmp_path / "x", scene() * 1000)  # e.g. digital numbers for reflectance
    with pytest.warns(UnitsWarning, match=r"source 'X'.*outside -5\.\.5"):
        run(Threshold(), {"X": stack}, tmp_path / "m.tif")
    s2 = get_source("S2")  # reflectance 0..1 where x 1e4 is expected
    assert "span only" in units_problem(np.random.default_rng(0).uniform(0, 0.5, 1000), s2)
    assert units_problem(np.random.default_rng(0).uniform(0, 5000, 1000), s2) is None


# --------------------------------------------------------------------------- CLI


def test_cli_parses_and_runs_with_a_stub_loader(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stack = write_stack(tmp_path / "x", scene())
    ckpt = tmp_path / "model.safetensors"
    ckpt.write_bytes(b"weights")
    seen = {}

    def load(path, device=None):
        seen.update(path=path, device=device)
        return Threshold()

    checkpoint = types.ModuleType("agrifm.checkpoint")  # the CLI's only contract with the model code
    checkpoint.load_predictor = load
    checkpoint.file_sha256 = lambda p: hashlib.sha256(Path(p).read_bytes()).hexdigest()
    monkeypatch.setitem(sys.modules, "agrifm.checkpoint", checkpoint)
    argv = ["--checkpoint", str(ckpt), "--source", f"X={stack}", "--out", str(tmp_path / "m.tif"), "--window", "32",
            "--overlap", "8", "--until-date", "2021-04-30", "--device", "cpu", "--no-progress", "--no-quicklook",
            "--band-map", "X:B2=B1"]
    assert cli.main(argv) == 0
    assert seen == {"path": str(ckpt), "device": "cpu"}
    with rasterio.open(tmp_path / "m.tif") as ds:
        assert ds.tags()["CHECKPOINT_SHA256"] == checkpoint.file_sha256(ckpt)
    from agrifm.cli import main as agrifm_main

    assert agrifm_main(["predict", *argv]) == 2  # exists, no --overwrite: one line, exit 2
    assert cli.parse_band_maps(["S2:B8A=B08,B01=B02"]) == {"S2": {"B8A": "B08", "B01": "B02"}}
    with pytest.raises(ValueError, match="NAME=PATH"):
        cli.parse_sources(["S2"])


def test_point_model_of_fixed_length_holds_a_cut_season_at_its_last_frame(tmp_path: Path) -> None:
    """A point classifier that concatenates frames (trained on a table's grid) sees an early-season
    cube as its tables' cut seasons: the kept frames in place, the last one repeated; a dense
    model of fixed length keeps the evenly spread frames of the published protocol."""
    stack = write_stack(tmp_path / "x", scene(seed=3))
    seen: dict[str, torch.Tensor] = {}

    class Recording(Threshold):
        def __call__(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
            seen[self.kind] = next(iter(inputs.values()))
            return super().__call__(inputs)

    run(Recording(kind="point", frames=5), {"X": stack}, tmp_path / "point.tif", until="2021-04-15")
    x = seen["point"]
    assert x.shape[1] == 5 and not torch.equal(x[:, 0], x[:, 1])
    assert all(torch.equal(x[:, i], x[:, 1]) for i in range(2, 5))  # frames 0, 1, 1, 1, 1
    run(Recording(kind="dense", frames=5), {"X": stack}, tmp_path / "dense.tif", until="2021-04-15")
    d = seen["dense"]
    assert d.shape[1] == 5 and torch.equal(d[:, 0], d[:, 1]) and not torch.equal(d[:, 1], d[:, 2])  # 0, 0, 1, 1, 1
