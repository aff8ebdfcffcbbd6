"""Published-release compatibility: fixtures, configs, checkpoints."""

from __future__ import annotations

import json

import pytest
import torch

from agrifm.commands.parity import find_fixtures, run_case
from agrifm.compat import (
    ConfigSyntaxError, load_official_checkpoint, load_official_config, model_from_official_config, parse_official_config,
)
from conftest import FIXTURES, need

CASES = ["official_tiny_s2", "official_tiny_three_sources", "official_tiny_s2_24frames"]


@pytest.mark.parametrize("impl", ["exact", "sdpa"])
@pytest.mark.parametrize("case", CASES)
def test_fixture_logits_and_features_match(case, impl):
    path = need(FIXTURES / f"{case}.json")
    r = run_case(path, impl)
    assert r.ok, {k: v for k, v in r.max_abs.items() if v > r.atol}
    assert len(r.max_abs) >= 6  # logits + encoder features + 4 levels per source


def test_every_fixture_is_covered():
    found = {p.stem for p in find_fixtures(need(FIXTURES))}
    assert set(CASES) <= found


def _fixture(case):
    from safetensors.torch import load_file

    meta = json.loads(need(FIXTURES / f"{case}.json").read_text())
    t = load_file(str(FIXTURES / f"{case}.safetensors"))
    sd = {k[len("state_dict/"):]: v for k, v in t.items() if k.startswith("state_dict/")}
    inputs = {k[len("input/"):]: v.float() for k, v in t.items() if k.startswith("input/")}
    return meta, sd, inputs, t["output/logits"]


def test_state_dict_keys_match_published_listing():
    meta, sd, _, _ = _fixture("official_tiny_three_sources")
    model = model_from_official_config(meta["model"])
    from agrifm.compat.checkpoint import ours_to_official

    ours = {ours_to_official(k): tuple(v.shape) for k, v in model.state_dict().items()}
    published = {k: tuple(s) for k, (_, s) in meta["official_state_dict"].items() if not k.endswith("relative_position_index")}
    assert ours == published


@pytest.mark.parametrize("fmt", ["pth", "safetensors", "wrapped", "module", "with_index"])
def test_load_from_files_and_wrappers(tmp_path, fmt):
    meta, sd, inputs, logits = _fixture("official_tiny_s2")
    if fmt == "pth":
        path = tmp_path / "w.pth"
        torch.save(sd, path)
    elif fmt == "safetensors":
        from safetensors.torch import save_file

        path = tmp_path / "w.safetensors"
        save_file(sd, str(path))
    elif fmt == "wrapped":
        path = tmp_path / "w.pth"
        torch.save({"state_dict": sd, "meta": {"epoch": 3}}, path)
    elif fmt == "module":
        path = {f"module.{k}": v for k, v in sd.items()}
    else:  # relative_position_index buffers present, as in real published files
        from agrifm.models.attention import relative_position_index

        path = dict(sd)
        for k in meta["official_state_dict"]:
            if k.endswith("relative_position_index"):
                path[k] = relative_position_index((8, 7, 7), (8, 7, 7))
    model = model_from_official_config(meta["model"]).eval()
    report = load_official_checkpoint(model, path)
    assert report.kind == "full" and not report.missing and not report.unexpected
    with torch.no_grad():
        assert torch.allclose(model(inputs), logits, atol=1e-4, rtol=1e-4)


def test_mis_shaped_patch_kernel_is_one_clear_error():
    meta, sd, _, _ = _fixture("official_tiny_s2")
    cfg = json.loads(json.dumps(meta["model"]))
    for part in ("patch_emd_cfg", "backbone_cfg"):
        cfg["encoders"]["encoders_cfg"]["S2"][part]["patch_size"] = [4, 4, 4]
    model = model_from_official_config(cfg)
    with pytest.raises(ValueError, match=r"patch_emd\.proj\.weight.*\(8, 10, 4, 2, 2\).*\(8, 10, 4, 4, 4\)"):
        load_official_checkpoint(model, sd)


def test_missing_and_unexpected_keys_are_named():
    meta, sd, _, _ = _fixture("official_tiny_s2")
    model = model_from_official_config(meta["model"])
    broken = dict(sd)
    broken.pop("neck.out_conv.3.bias")
    broken["neck.extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError) as err:
        load_official_checkpoint(model, broken)
    assert "neck.out_conv.3.bias" in str(err.value) and "neck.extra.weight" in str(err.value)
    report = load_official_checkpoint(model, broken, strict=False)
    assert "neck.out_conv.3.bias" in report.missing and "neck.extra.weight" in report.unexpected


def _encoder_file(sd, sources=("S2", "HLSL30", "Modis")):
    """A pre-trained file in the published layout, made from a fine-tuned fixture's S2 encoder."""
    out = {}
    for k, v in sd.items():
        if k.startswith("encoders.encoders.S2.backbone."):
            out["backbone." + k[len("encoders.encoders.S2.backbone."):]] = v
    bands = {"S2": 10, "HLSL30": 6, "Modis": 7}
    for s in sources:
        out[f"{s}_patch_emd.proj.weight"] = torch.randn(8, bands[s], 4, 2, 2)
        out[f"{s}_patch_emd.proj.bias"] = torch.randn(8)
    return out


def test_encoder_only_file_picks_patch_embedding_by_band_count(tmp_path):
    meta, sd, _, _ = _fixture("official_tiny_three_sources")
    enc = _encoder_file(sd)
    path = tmp_path / "pretrained.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in enc.items()}}, path)
    model = model_from_official_config(meta["model"])
    report = load_official_checkpoint(model, path)
    assert report.kind == "encoder"
    assert report.sources == {"S2": "S2", "HLSL30": "HLSL30", "Modis": "Modis"}
    assert report.missing and all(k.startswith(("neck.", "heads.")) for k in report.missing)
    for src in ("S2", "HLSL30", "Modis"):
        assert torch.equal(model.encoders[src].patch_emd.proj.weight, enc[f"{src}_patch_emd.proj.weight"])
        assert torch.equal(model.encoders[src].backbone.norm.weight, enc["backbone.norm.weight"])


def test_encoder_file_without_a_matching_patch_embedding_fails():
    meta, sd, _, _ = _fixture("official_tiny_three_sources")
    model = model_from_official_config(meta["model"])
    with pytest.raises(ValueError, match="HLSL30.patch_emd"):
        load_official_checkpoint(model, _encoder_file(sd, sources=("S2", "Modis")))


def test_pickled_code_never_runs(tmp_path, capsys):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (exec, (f"open({str(marker)!r}, 'w').write('x'); print('pwned')",))

    meta, sd, inputs, logits = _fixture("official_tiny_s2")
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": sd, "payload": Evil(), "hidden": {"nested": [Evil()]}}, path)
    model = model_from_official_config(meta["model"]).eval()
    load_official_checkpoint(model, path)  # the weights are read; the payload stays inert
    assert not marker.exists() and "pwned" not in capsys.readouterr().out
    with torch.no_grad():
        assert torch.allclose(model(inputs), logits, atol=1e-4, rtol=1e-4)


CONFIG_TEXT = '''
"""A published-style config."""
img_size = 256
num_frames = 32  # comment
data_root = r'D:\\data\\h5'
pretrained = '/weights/AgriFM.pth'
norm_cfg = dict(type='SyncBN', requires_grad=True)
model = dict(
    type='MultiUnifiedModel',
    encoders=dict(type='MultiModalEncoder', encoders_cfg=dict(S2=dict(
        type='PretrainingSwinTransformer3DEncoder',
        patch_emd_cfg=dict(type='SwinPatchEmbed3D', patch_size=(4, 2, 2), in_chans=10, embed_dim=8),
        backbone_cfg=dict(type='SwinTransformer3D', pretrained=None, pretrained2d=False, patch_size=(4, 2, 2),
            embed_dim=8, depths=[2, 2, 2, 2], num_heads=[1, 2, 4, 8], window_size=(8, 7, 7), out_indices=(0, 1, 2, 3),
            mlp_ratio=4., qkv_bias=True, qk_scale=None, drop_rate=0., attn_drop_rate=0., drop_path_rate=0.2,
            patch_norm=False, frozen_stages=-1, use_checkpoint=False, downsample_steps=((2, 2, 2),) * 4,
            feature_fusion='cat', mean_frame_down=True),
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)))),
    neck=dict(type='MultiFusionNeck', embed_dim=64, in_feature_key=['S2'], feature_size=(img_size // 16, img_size // 16),
              out_size=(img_size, img_size), in_fusion_key_list=[dict(S2=64), {'S2': 64}, dict(S2=8 * num_frames // 4)]),
    head=dict(type='CropFCNHead', num_classes=2, embed_dim=64, loss_model=dict(type='CropCEloss')))
work_dir = data_root + '/work'
lr = 6e-5
'''


def test_config_reader_evaluates_literals_without_executing(tmp_path):
    path = tmp_path / "cropland.py"
    path.write_text(CONFIG_TEXT)
    cfg = load_official_config(path)
    assert cfg["neck" if False else "model"]["neck"]["feature_size"] == (16, 16)
    assert cfg["data_root"] == "D:\\data\\h5" and cfg["work_dir"].endswith("/work")
    assert cfg["model"]["encoders"]["encoders_cfg"]["S2"]["init_cfg"]["checkpoint"] == "/weights/AgriFM.pth"
    model = model_from_official_config(cfg["model"])
    assert model.config.out_size == (256, 256)


@pytest.mark.parametrize("line", ["import os", "x = open('/etc/passwd')", "x = __import__('os').system('ls')",
                                  "x = [i for i in range(3)]", "x = lambda: 1", "x.y = 1", "x = undefined_name"])
def test_config_reader_rejects_code_and_names_the_line(line):
    with pytest.raises(ConfigSyntaxError, match="line 2"):
        parse_official_config("a = 1\n" + line + "\n", "cfg.py")


def test_unsupported_config_key_is_named():
    meta, _, _, _ = _fixture("official_tiny_s2")
    cfg = json.loads(json.dumps(meta["model"]))
    cfg["neck"]["attention_gate"] = True
    with pytest.raises(ValueError, match="attention_gate"):
        model_from_official_config(cfg)


def test_convert_then_load_model_reproduces_outputs(tmp_path):
    from agrifm import load_model
    from agrifm.commands.convert import main as convert_main

    meta, sd, inputs, logits = _fixture("official_tiny_s2")
    cfg_path = tmp_path / "cfg.py"
    cfg_path.write_text("model = " + repr(meta["model"]).replace("None", "None") + "\n")
    ckpt = tmp_path / "w.pth"
    torch.save({"state_dict": sd}, ckpt)
    out = tmp_path / "model.safetensors"
    assert convert_main([str(cfg_path), str(ckpt), str(out)]) == 0
    model = load_model(out)
    assert model.meta.task == "segmentation" and model.meta.sources["S2"].bands[3] == "B08"
    with torch.no_grad():
        assert torch.allclose(model(inputs), logits, atol=1e-4, rtol=1e-4)
