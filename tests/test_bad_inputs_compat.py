"""convert, info, parity and export-published on bad input: one line naming the file and the
problem, exit 2, no traceback, no hang, nothing replaced without --overwrite."""

from __future__ import annotations

import json
import time

import pytest
import torch

from conftest import FIXTURES, need


def run(capsys, *argv):
    from agrifm.cli import main

    rc = main(list(argv))
    err = capsys.readouterr().err.strip()
    return rc, err


def one_line_error(capsys, *argv, names=()):
    rc, err = run(capsys, *argv)
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and err.startswith(f"agrifm {argv[0]}: error: ") and "Traceback" not in err, err
    for n in names:
        assert str(n) in err, (n, err)
    return err


@pytest.fixture
def fixture_files(tmp_path):
    meta = json.loads(need(FIXTURES / "official_tiny_s2.json").read_text())
    from safetensors.torch import load_file

    t = load_file(str(FIXTURES / "official_tiny_s2.safetensors"))
    sd = {k[len("state_dict/"):]: v for k, v in t.items() if k.startswith("state_dict/")}
    cfg = tmp_path / "cfg.py"
    cfg.write_text("model = " + repr(meta["model"]) + "\n")
    ckpt = tmp_path / "w.pth"
    torch.save(sd, ckpt)
    return cfg, ckpt, sd, meta


# -- convert -------------------------------------------------------------------------------


def test_convert_missing_files(capsys, tmp_path, fixture_files):
    cfg, ckpt, _, _ = fixture_files
    one_line_error(capsys, "convert", str(tmp_path / "no.py"), str(ckpt), str(tmp_path / "o.safetensors"), names=["no.py"])
    one_line_error(capsys, "convert", str(cfg), str(tmp_path / "no.pth"), str(tmp_path / "o.safetensors"), names=["no.pth"])


@pytest.mark.parametrize("text,what", [
    ("import os\nmodel = dict()\n", "line 1"),
    ("model = dict(x=9 ** 9 ** 9)\n", "power"),
    ("model = dict(x='a' * 10 ** 12)\n", "repeat"),
    ("model = dict(x=" + "[" * 200 + "]" * 200 + ")\n", "nest"),
    ("model = dict(type='MultiUnifiedModel')\n", "encoders"),
    ("x = 1\n", "model"),
    ("model = dict(\n", "not valid Python"),
    ("_base_ = ['missing_base.py']\n", "missing_base.py"),
])
def test_convert_bad_configs_fail_fast(capsys, tmp_path, fixture_files, text, what):
    _, ckpt, _, _ = fixture_files
    cfg = tmp_path / "bad.py"
    cfg.write_text(text)
    t0 = time.perf_counter()
    one_line_error(capsys, "convert", str(cfg), str(ckpt), str(tmp_path / "o.safetensors"), names=["bad.py", what])
    assert time.perf_counter() - t0 < 1.0


def test_convert_bad_checkpoints(capsys, tmp_path, fixture_files):
    cfg, _, sd, _ = fixture_files
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint at all")
    one_line_error(capsys, "convert", str(cfg), str(junk), str(tmp_path / "o.safetensors"), names=["junk.pth"])
    broken = tmp_path / "broken.pth"
    torch.save({k: v for k, v in sd.items() if "out_conv" not in k}, broken)
    one_line_error(capsys, "convert", str(cfg), str(broken), str(tmp_path / "o.safetensors"),
                   names=["broken.pth", "neck.out_conv"])
    encoder = tmp_path / "encoder.pth"
    torch.save({"backbone." + k.split(".backbone.", 1)[1]: v for k, v in sd.items() if ".backbone." in k}
               | {"S2_patch_emd.proj.weight": sd["encoders.encoders.S2.patch_emd.proj.weight"],
                  "S2_patch_emd.proj.bias": sd["encoders.encoders.S2.patch_emd.proj.bias"]}, encoder)
    one_line_error(capsys, "convert", str(cfg), str(encoder), str(tmp_path / "o.safetensors"), names=["encoder.pth", "fit"])
    assert not (tmp_path / "o.safetensors").exists()


def test_convert_never_replaces_without_overwrite(capsys, tmp_path, fixture_files):
    cfg, ckpt, _, _ = fixture_files
    out = tmp_path / "o.safetensors"
    out.write_bytes(b"precious")
    one_line_error(capsys, "convert", str(cfg), str(ckpt), str(out), names=["o.safetensors", "--overwrite"])
    assert out.read_bytes() == b"precious"
    rc, _ = run(capsys, "convert", str(cfg), str(ckpt), str(out), "--overwrite")
    assert rc == 0 and out.read_bytes() != b"precious"


def test_convert_bad_class_names(capsys, tmp_path, fixture_files):
    cfg, ckpt, _, _ = fixture_files
    one_line_error(capsys, "convert", str(cfg), str(ckpt), str(tmp_path / "o.safetensors"), "--class-names", "[oops",
                   names=["--class-names"])
    one_line_error(capsys, "convert", str(cfg), str(ckpt), str(tmp_path / "o.safetensors"), "--class-names", '["a"]',
                   names=["1 class names", "3-class"])


# -- info ----------------------------------------------------------------------------------


def test_info_unknown_preset_and_bad_files(capsys, tmp_path):
    one_line_error(capsys, "info", "no-such-preset", names=["no-such-preset", "published"])
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 10)
    one_line_error(capsys, "info", str(junk), names=["junk.safetensors"])
    yaml = tmp_path / "m.yaml"
    yaml.write_text("model: {preset: nope}\n")
    one_line_error(capsys, "info", str(yaml), names=["m.yaml", "nope"])
    one_line_error(capsys, "info", "small", "--frames", "0", names=["--frames"])


def test_info_on_a_point_checkpoint(capsys, tmp_path):
    from agrifm.checkpoint import save_model
    from agrifm.models.agrifm import AgriFM
    from agrifm.models.presets import preset

    model = AgriFM(preset("point-small", embed_dim=8, num_heads=(1, 1, 1, 1), sources={"MOD13Q1": 2}, num_classes=3))
    save_model(model, tmp_path / "point.safetensors", task="classification", class_names=["a", "b", "c"], frames=23)
    from agrifm.cli import main

    assert main(["info", str(tmp_path / "point.safetensors")]) == 0
    out = capsys.readouterr().out
    assert "input 23x1x1" in out and "head classification" in out


def test_info_published_config_for_other_seasons(capsys, tmp_path, fixture_files):
    cfg, _, _, _ = fixture_files
    from agrifm.cli import main

    assert main(["info", str(cfg), "--frames", "16"]) == 0  # the widths follow the season
    assert "input 16x48x48" in capsys.readouterr().out
    assert main(["info", str(cfg), "--frames", "64"]) == 0  # the decoder takes 128-channel encoder features
    out = capsys.readouterr().out
    assert "input 64x48x48" in out and "embed_dim 128 (was 64)" in out


# -- parity --------------------------------------------------------------------------------


def test_parity_bad_fixture_folders(capsys, tmp_path):
    one_line_error(capsys, "parity", "--fixtures", str(tmp_path / "none"), names=["none"])
    one_line_error(capsys, "parity", "--fixtures", str(tmp_path), names=[str(tmp_path), "no fixtures"])
    (tmp_path / "case.json").write_text("{not json")
    (tmp_path / "case.safetensors").write_bytes(b"junk")
    one_line_error(capsys, "parity", "--fixtures", str(tmp_path), names=["case"])


# -- export-published ----------------------------------------------------------------------


def test_export_published_bad_inputs(capsys, tmp_path, fixture_files):
    from agrifm.checkpoint import save_model
    from agrifm.models.agrifm import AgriFM
    from agrifm.models.presets import preset

    one_line_error(capsys, "export-published", str(tmp_path / "none.safetensors"), str(tmp_path / "o"), names=["none.safetensors"])
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"junk")
    one_line_error(capsys, "export-published", str(junk), str(tmp_path / "o"), names=["junk.safetensors"])
    small = tmp_path / "small.safetensors"
    save_model(AgriFM(preset("small", embed_dim=8, num_heads=(1, 1, 1, 1), decoder_dim=16)), small, task="segmentation",
               class_names=["a", "b"])
    err = one_line_error(capsys, "export-published", str(small), str(tmp_path / "o"), "--input-size", "32", "32",
                         names=["small.safetensors", "feature_fusion 'mean'"])
    assert "published layout" in err
    follows = tmp_path / "follows.safetensors"
    save_model(AgriFM(preset("published", embed_dim=8, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1), decoder_dim=64,
                             feature_size=None, out_size=None)), follows, task="segmentation", class_names=["a", "b"])
    one_line_error(capsys, "export-published", str(follows), str(tmp_path / "o"), names=["--input-size"])
    assert not (tmp_path / "o").exists()


def test_export_published_never_replaces_without_overwrite(capsys, tmp_path, fixture_files):
    cfg, ckpt, _, _ = fixture_files
    ours = tmp_path / "ours.safetensors"
    assert run(capsys, "convert", str(cfg), str(ckpt), str(ours))[0] == 0
    out = tmp_path / "release"
    out.mkdir()
    (out / "config.py").write_text("precious")
    one_line_error(capsys, "export-published", str(ours), str(out), names=["config.py", "--overwrite"])
    assert (out / "config.py").read_text() == "precious" and not (out / "model.pth").exists()
    assert run(capsys, "export-published", str(ours), str(out), "--overwrite")[0] == 0
    assert (out / "config.py").read_text() != "precious"


@pytest.mark.parametrize("change,what", [
    ({"neck": {"embed_dim": 2**40}, "head": {"embed_dim": 2**40}}, "neck embed_dim"),
    ({"backbone_cfg": {"num_heads": [3, 2, 4, 8]}}, "divisible by 3 heads"),
    ({"backbone_cfg": {"depths": [2, 2, 2], "out_indices": [0, 1, 2]}}, "num_heads"),
    ({"neck": {"in_fusion_key_list": [{"S2": 64}, {"S2": 64}, {"S2": 64}, {"S2": 64}, {"S2": 64}]}}, "feature levels"),
    ({"neck": {"in_feature_key": ["Landsat"]}}, "Landsat"),
])
def test_convert_configs_the_model_cannot_take(capsys, tmp_path, fixture_files, change, what):
    _, ckpt, _, meta = fixture_files
    cfg = json.loads(json.dumps(meta["model"]))
    for part, values in change.items():
        target = cfg[part] if part in ("neck", "head") else cfg["encoders"]["encoders_cfg"]["S2"][part]
        target.update(values)
    path = tmp_path / "odd.py"
    path.write_text("model = " + repr(cfg) + "\n")
    t0 = time.perf_counter()
    one_line_error(capsys, "convert", str(path), str(ckpt), str(tmp_path / "o.safetensors"), names=["odd.py", what])
    assert time.perf_counter() - t0 < 5.0
