"""The model itself: variable season length, input checks, fast paths, heads, info."""

from __future__ import annotations

import pytest
import torch

from agrifm.models.agrifm import AgriFM, build_model
from agrifm.models.config import ModelConfig
from agrifm.models.presets import preset

TINY = dict(embed_dim=8, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), decoder_dim=32, drop_path_rate=0.0)


def tiny(**kw) -> AgriFM:
    torch.manual_seed(0)
    return build_model(ModelConfig(**{**TINY, **kw})).eval()


@pytest.mark.parametrize("fusion", ["mean", "attention"])
def test_one_model_serves_any_season_length(fusion):
    model = tiny(feature_fusion=fusion, num_classes=3)
    for t in (8, 12, 16, 24, 32):
        out = model({"S2": torch.randn(1, t, 10, 32, 32)})
        assert out.shape == (1, 3, 32, 32)


def test_cat_fusion_is_tied_to_the_frame_count():
    model = tiny(feature_fusion="cat", decoder_dim=64)
    assert model({"S2": torch.randn(1, 32, 10, 32, 32)}).shape == (1, 2, 32, 32)
    with pytest.raises(ValueError, match="channels"):
        model({"S2": torch.randn(1, 16, 10, 32, 32)})


def test_non_square_and_odd_inputs_follow_the_input_size():
    model = tiny(feature_fusion="mean")
    assert model({"S2": torch.randn(2, 7, 10, 37, 23)}).shape == (2, 2, 37, 23)


@pytest.mark.parametrize("bad, match", [
    ({"S2": torch.randn(2, 10, 32)}, "expected \\(B, T, C, H, W\\)"),
    ({"S2": torch.randn(1, 4, 9, 32, 32)}, "expected 10 bands"),
    ({"S2": torch.randn(1, 4, 10, 32, 32), "L9": torch.randn(1, 4, 6, 8, 8)}, "unknown source"),
    ({}, "missing source"),
])
def test_bad_inputs_are_named(bad, match):
    with pytest.raises((ValueError, KeyError), match=match):
        tiny(feature_fusion="mean")(bad)


def test_nan_input_is_refused():
    x = torch.randn(1, 4, 10, 16, 16)
    x[0, 1, 2, 3, 4] = float("nan")
    with pytest.raises(ValueError, match="source 'S2': 1 NaN"):
        tiny(feature_fusion="mean")({"S2": x})


def test_four_d_input_is_one_frame():
    model = tiny(feature_fusion="mean")
    assert model({"S2": torch.randn(1, 10, 16, 16)}).shape == (1, 2, 16, 16)


def test_sdpa_matches_exact_forward_and_backward():
    torch.manual_seed(1)
    model = build_model(ModelConfig(**TINY, feature_fusion="mean")).train()
    x = {"S2": torch.randn(2, 16, 10, 40, 40)}
    grads = {}
    for impl in ("exact", "sdpa"):
        model.zero_grad()
        model.set_attention(impl)
        out = model(x)
        out.square().mean().backward()
        grads[impl] = (out.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None])
    assert torch.allclose(grads["exact"][0], grads["sdpa"][0], atol=1e-4)
    for a, b in zip(grads["exact"][1], grads["sdpa"][1]):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-3)


def test_eval_bias_cache_is_refreshed_after_loading_weights():
    model = tiny(feature_fusion="mean")
    x = {"S2": torch.randn(1, 8, 10, 16, 16)}
    with torch.no_grad():
        model(x)  # fills the cache
        state = {k: v.clone() for k, v in model.state_dict().items()}
        for k in state:
            if k.endswith("relative_position_bias_table"):
                state[k] += 1.0
        model.load_state_dict(state)
        fast = model(x)
        exact = model.set_attention("exact")(x)
    assert torch.allclose(fast, exact, atol=1e-4)


def test_activation_checkpointing_gives_the_same_gradients():
    torch.manual_seed(2)
    model = build_model(ModelConfig(**TINY, feature_fusion="mean")).train()
    x = {"S2": torch.randn(1, 8, 10, 32, 32)}
    res = []
    for ckpt in (False, True):
        model.zero_grad()
        model.set_checkpointing(ckpt)
        model(x).sum().backward()
        res.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
    for a, b in zip(*res):
        assert torch.allclose(a, b, atol=1e-5)


def test_corrected_relative_position_differs_only_on_clipped_maps():
    base = tiny(feature_fusion="mean")
    with torch.no_grad():  # a bias large enough that using the wrong entries shows
        for name, p in base.named_parameters():
            if name.endswith("relative_position_bias_table"):
                p.normal_(0, 1.0)
    corr = build_model(ModelConfig(**TINY, feature_fusion="mean", rel_pos="corrected")).eval()
    corr.load_state_dict(base.state_dict())
    small = {"S2": torch.randn(1, 8, 10, 24, 24)}  # 12x12 -> 6x6: rows/cols clipped below 7
    with torch.no_grad():
        fb, fc = base.forward_features(small)["S2"]["features_list"], corr.forward_features(small)["S2"]["features_list"]
    assert torch.equal(fb[0], fc[0]) and torch.allclose(fb[1], fc[1], atol=1e-6)  # 12x12 maps: 7x7 windows unclipped
    assert not torch.allclose(fb[2], fc[2], atol=1e-3)  # after stage 1 (6x6 maps): clipped windows differ


def test_stochastic_depth_is_active_in_training_only():
    model = build_model(ModelConfig(**{**TINY, "drop_path_rate": 0.5}, feature_fusion="mean"))
    x = {"S2": torch.randn(4, 8, 10, 16, 16)}
    model.train()
    torch.manual_seed(0)
    a = model(x)
    torch.manual_seed(1)
    b = model(x)
    model.eval()
    assert not torch.allclose(a, b)
    assert torch.equal(model(x), model(x))


def test_point_classification_preset_takes_pixel_series():
    model = build_model(preset("point-small", sources={"MOD13Q1": 2}, num_classes=9)).eval()
    for t in (6, 12, 23):
        assert model({"MOD13Q1": torch.randn(5, t, 2, 1, 1)}).shape == (5, 9)


def test_multi_source_different_resolutions():
    model = build_model(ModelConfig(**TINY, sources={"S2": 10, "HLSL30": 6, "Modis": 7}, feature_fusion="mean"))
    x = {"S2": torch.randn(1, 8, 10, 48, 48), "HLSL30": torch.randn(1, 8, 6, 16, 16), "Modis": torch.randn(1, 8, 7, 3, 3)}
    assert model.eval()(x).shape == (1, 2, 48, 48)


def test_patch_merging_steps_and_subsampling():
    from agrifm.models.backbone import PatchMerging3D

    x = torch.randn(1, 5, 7, 9, 4)
    m = PatchMerging3D(4, (2, 2, 2), mean_frame_down=True)
    assert m(x).shape == (1, 3, 4, 5, 8)
    m = PatchMerging3D(4, (2, 1, 1), mean_frame_down=False, pad="minimal")
    assert m(x).shape == (1, 3, 7, 9, 8)
    m = PatchMerging3D(4, (1, 2, 2))
    assert m(x).shape == (1, 5, 4, 5, 8)


def test_info_reports_published_size():
    from agrifm.commands.info import describe

    rows = describe(ModelConfig(feature_size=(16, 16), out_size=(256, 256)), 32, 256)
    total = rows[-1]
    assert abs(total[1] / 1e6 - 196.2) < 0.1
    assert abs(total[2] / 1e3 - 2.97) < 0.05
    assert abs(sum(r[2] for r in rows[:-1]) - total[2]) / total[2] < 0.01
