"""Published-format configs across the family: season lengths 8-64, one and several sources,
stages that keep time, non-square inputs. There is no published code here to make new reference
outputs, so each config is checked against the published rules (spec: widths from the config,
``in_conv`` the identity exactly for one decoder source), loads strictly, and its exact and
fused attention paths agree; the fixtures (test_compat.py) give exact parity."""

from __future__ import annotations

import math

import pytest
import torch

from agrifm.compat import CompatError, config_from_official, load_official_checkpoint, model_from_official_config
from agrifm.compat.export import published_state_dict

BANDS = {"S2": 10, "HLSL30": 6, "Modis": 7}
EMBED, PATCH = 8, (4, 2, 2)


def frames_per_level(frames: int, steps, n: int = 4) -> list[int]:
    """Frames of features_list[0..n-1] (the last is also the encoder output's), by the spec:
    patch embedding pads T to a multiple of patch t; a merge with temporal step s pads to a multiple of s."""
    d = [math.ceil(frames / PATCH[0])]
    for s in steps[: n - 1]:
        d.append(math.ceil(d[-1] / s[0]))
    return d


def published_config(frames: int, sources=("S2",), steps=((2, 2, 2),) * 4, levels: int = 3, size=(24, 32),
                     fusion_sources=None) -> dict:
    """A published-format model dict whose widths are worked out by hand from the spec."""
    d = frames_per_level(frames, steps)
    width = [EMBED * 2**i * d[i] for i in range(4)]
    embed = width[3]  # the encoder output: stage 3 keeps the channels (8 x embed) and frames of the last merge
    fusion_sources = fusion_sources or sources
    backbone = dict(type="SwinTransformer3D", pretrained=None, pretrained2d=False, patch_size=PATCH, embed_dim=EMBED,
                    depths=[2, 2, 2, 2], num_heads=[1, 2, 2, 4], window_size=(8, 7, 7), out_indices=(0, 1, 2, 3),
                    mlp_ratio=4.0, qkv_bias=True, qk_scale=None, drop_rate=0.0, attn_drop_rate=0.0,
                    drop_path_rate=0.2, patch_norm=False, frozen_stages=-1, use_checkpoint=False,
                    downsample_steps=tuple(steps), feature_fusion="cat", mean_frame_down=True)
    encoders = {s: dict(type="PretrainingSwinTransformer3DEncoder",
                        patch_emd_cfg=dict(type="SwinPatchEmbed3D", patch_size=PATCH, in_chans=BANDS[s], embed_dim=EMBED),
                        backbone_cfg=dict(backbone), init_cfg=None) for s in sources}
    return dict(
        type="MultiUnifiedModel",
        encoders=dict(type="MultiModalEncoder", encoders_cfg=encoders),
        neck=dict(type="MultiFusionNeck", embed_dim=embed, in_feature_key=tuple(sources), feature_size=(3, 4),
                  out_size=size, in_fusion_key_list=tuple({s: width[levels - 1 - i] for s in fusion_sources}
                                                          for i in range(levels))),
        head=dict(type="CropFCNHead", num_classes=3, embed_dim=embed, loss_model=dict(type="CropCEloss")),
    )


KEEP_TIME = ((1, 2, 2), (2, 2, 2), (1, 2, 2), (2, 2, 2))
CASES = [
    (8, ("S2",), ((2, 2, 2),) * 4),
    (12, ("S2",), ((2, 2, 2),) * 4),
    (24, ("S2", "HLSL30"), ((2, 2, 2),) * 4),
    (40, ("S2",), ((2, 2, 2),) * 4),  # the last stage keeps 2 frames: neck embed_dim 128, not 8 x embed
    (64, ("S2",), ((2, 2, 2),) * 4),
    (16, ("S2",), KEEP_TIME),  # stages that keep time
    (36, ("S2", "HLSL30", "Modis"), KEEP_TIME),
]


def expected_neck_shapes(cfg: dict) -> dict[str, tuple]:
    """Neck and head parameter shapes by the published rules, from the config alone."""
    neck, head = cfg["neck"], cfg["head"]
    e, keys = neck["embed_dim"], neck["in_feature_key"]
    out = {}
    if len(keys) > 1:  # in_conv: identity exactly for one source
        out["neck.in_conv.0.weight"] = (e, len(keys) * e, 3, 3)
        out["neck.in_conv.3.weight"] = (e, e, 3, 3)
    for i, k in enumerate(neck["in_fusion_key_list"]):
        out[f"neck.fusion_list.{i}.0.weight"] = (e, e + sum(k.values()), 3, 3)
        out[f"neck.fusion_list.{i}.3.weight"] = (e, e, 3, 3)
    out["neck.out_conv.0.weight"] = (e, e, 3, 3)
    out["heads.head.0.weight"] = (e // 2, e, 3, 3)
    out["heads.head.2.weight"] = (head["num_classes"], e // 2, 1, 1)
    return out


def _inputs(cfg: dict, frames: int, size=(24, 32)) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(frames)
    scale = {"S2": 1, "HLSL30": 3, "Modis": 8}  # coarser sources over one footprint
    return {s: torch.randn(1, frames, BANDS[s], max(1, size[0] // scale[s]), max(1, size[1] // scale[s]), generator=g)
            for s in cfg["encoders"]["encoders_cfg"]}


@pytest.mark.parametrize("frames,sources,steps", CASES)
def test_structure_follows_the_published_rules(frames, sources, steps):
    cfg = published_config(frames, sources, steps)
    model = model_from_official_config(cfg)
    from agrifm.compat.checkpoint import ours_to_official

    shapes = {ours_to_official(k): tuple(v.shape) for k, v in model.state_dict().items()}
    want = expected_neck_shapes(cfg)
    assert {k: shapes.get(k) for k in want} == want
    assert any(k.startswith("neck.in_conv.") for k in shapes) == (len(sources) > 1)
    assert model.config.num_frames == frames  # the season is read from the widths, never assumed


@pytest.mark.parametrize("frames,sources,steps", CASES)
def test_loads_strictly_and_fast_path_agrees(frames, sources, steps, one_thread):
    cfg = published_config(frames, sources, steps)
    torch.manual_seed(frames)
    model = model_from_official_config(cfg).eval()
    for p in model.parameters():  # random weights with some scale, as a trained model has
        p.data.normal_(0, 0.05)
    published = published_state_dict(model)  # published keys, index buffers included
    fresh = model_from_official_config(cfg).eval()
    report = load_official_checkpoint(fresh, published)  # strict
    assert report.kind == "full" and not report.missing and not report.unexpected
    x = _inputs(cfg, frames)
    with torch.no_grad():
        fresh.set_attention("exact")
        exact_logits, exact_feats = fresh(x), fresh.forward_features(x)
        fresh.set_attention("sdpa")
        fast_logits, fast_feats = fresh(x), fresh.forward_features(x)
    assert exact_logits.shape == (1, 3, 24, 32)
    assert torch.allclose(exact_logits, fast_logits, atol=1e-4, rtol=1e-4)
    for src in x:
        pairs = [(exact_feats[src]["encoder_features"], fast_feats[src]["encoder_features"])]
        pairs += list(zip(exact_feats[src]["features_list"], fast_feats[src]["features_list"]))
        for a, b in pairs:
            assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)
        widths = [f.shape[1] for f in exact_feats[src]["features_list"]]
        d = frames_per_level(frames, steps)
        assert widths == [EMBED * 2**i * d[i] for i in range(4)]


def test_fusion_levels_naming_a_subset_of_sources():
    cfg = published_config(32, ("S2", "HLSL30"), fusion_sources=("S2",))
    model = model_from_official_config(cfg)
    assert model.config.num_frames == 32
    assert model.neck.fusion_list[0][0].weight.shape[1] == 2 * 8 * 8  # E + the S2 width (64) at level 2


def test_fewer_fusion_levels():
    cfg = published_config(20, ("S2",), levels=2)
    model = model_from_official_config(cfg).eval()
    with torch.no_grad():
        assert model(_inputs(cfg, 20)).shape == (1, 3, 24, 32)


def test_whole_config_num_frames_breaks_ties():
    cfg = published_config(32)
    assert config_from_official(cfg).num_frames == 32  # 29..32 frames all fit: the full patches
    assert config_from_official({"model": cfg, "num_frames": 30}).num_frames == 30
    assert config_from_official({"model": cfg, "num_frames": 48}).num_frames == 32  # does not fit: the widths win


def test_widths_that_fit_no_season_are_one_clear_error():
    cfg = published_config(32)
    cfg["neck"]["in_fusion_key_list"] = ({"S2": 64}, {"S2": 40}, {"S2": 64})
    with pytest.raises(CompatError, match="no number of frames fits"):
        config_from_official(cfg)
    assert config_from_official({"model": cfg, "num_frames": 32}).num_frames == 32  # named: taken as given


def test_wrong_season_at_run_time_names_the_frames():
    cfg = published_config(32)
    model = model_from_official_config(cfg).eval()
    with pytest.raises(ValueError, match="depend on the number of frames"), torch.no_grad():
        model(_inputs(cfg, 64))


def test_info_prints_published_for_other_seasons(capsys):
    from agrifm.commands.info import main

    assert main(["published", "--frames", "16", "--size", "64"]) == 0
    assert "input 16x64x64" in capsys.readouterr().out
