"""Every fast path agrees with the exact (published) computation; fallbacks warn once, never crash.

Tolerances: fp32 fast paths within 1e-4 of the exact path (the fixtures' own tolerance).
bf16 autocast: logits within ``BF16_LOGIT_ATOL`` of fp32 on the fixtures (logits of magnitude
2-3.5; measured 0.05 with Winograd, 0.03 without), and >= 99.9 % identical argmax among pixels
whose fp32 top-two logit gap exceeds 0.05.
"""

from __future__ import annotations

import json
import warnings

import pytest
import torch
import torch.nn.functional as F

import agrifm.models.attention as attention
import agrifm.models.fast as fast_mod
import agrifm.models.layers as layers
from agrifm.commands.parity import run_case
from agrifm.models.agrifm import build_model
from agrifm.models.config import ModelConfig
from agrifm.models.efficient import EfficientDecoder
from agrifm.models.fast import configure_fast_path
from agrifm.models.layers import Conv3x3, use_fast_convs, winograd_conv3x3, winograd_kernel
from conftest import FIXTURES, need

CASES = ["official_tiny_s2", "official_tiny_three_sources", "official_tiny_s2_24frames"]
TINY = dict(embed_dim=8, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), decoder_dim=32, drop_path_rate=0.0)
BF16_LOGIT_ATOL = 0.15


@pytest.fixture
def winograd_everywhere(monkeypatch):
    """Tiny test models have narrow convs: run Winograd on all of them."""
    monkeypatch.setattr(Conv3x3, "winograd_min_channels", 0)


def tiny(**kw):
    torch.manual_seed(0)
    return build_model(ModelConfig(**{**TINY, "feature_fusion": "mean", **kw}))


def fixture_model(case: str):
    from safetensors.torch import load_file

    from agrifm.compat import load_official_checkpoint, model_from_official_config

    meta = json.loads(need(FIXTURES / f"{case}.json").read_text())
    t = load_file(str(FIXTURES / f"{case}.safetensors"))
    model = model_from_official_config(meta["model"]).eval()
    load_official_checkpoint(model, {k[len("state_dict/"):]: v for k, v in t.items() if k.startswith("state_dict/")})
    return model, {k[len("input/"):]: v.float() for k, v in t.items() if k.startswith("input/")}


def argmax_agreement(ref: torch.Tensor, out: torch.Tensor, gap: float = 0.05) -> float:
    top2 = ref.topk(2, dim=1).values
    confident = (top2[:, 0] - top2[:, 1]) > gap
    return (ref.argmax(1) == out.argmax(1))[confident].float().mean().item()


# -- fp32: equal to the exact path ------------------------------------------------------------
@pytest.mark.parametrize("case", CASES)
def test_fast_path_matches_fixtures(case, winograd_everywhere):
    r = run_case(need(FIXTURES / f"{case}.json"), "auto")
    assert r.ok, {k: v for k, v in r.max_abs.items() if v > r.atol}


def test_fast_paths_match_exact_forward_and_backward():
    # 40x40 -> 20x20 tokens: padded to 21, shifted windows, clipped windows in the late stages
    model = tiny().train()
    x = {"S2": torch.randn(2, 16, 10, 40, 40)}
    res = {}
    for impl in ("exact", "sdpa", "auto"):
        model.zero_grad()
        out = model.set_attention(impl)(x)
        out.square().mean().backward()
        res[impl] = (out.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None])
    for impl in ("sdpa", "auto"):
        torch.testing.assert_close(res[impl][0], res["exact"][0], atol=1e-4, rtol=1e-4)
        for a, b in zip(res[impl][1], res["exact"][1]):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-3)


def test_configured_fast_path_matches_exact(winograd_everywhere):
    model = tiny(decoder_dim=48).eval()
    x = {"S2": torch.randn(1, 8, 10, 36, 28)}
    with torch.no_grad():
        ref = model.set_attention("exact")(x)
        fast = configure_fast_path(model, "cpu", "fp32")
        assert isinstance(model.head.head[0], Conv3x3)
        torch.testing.assert_close(fast(x), ref, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(fast(x), ref, atol=1e-4, rtol=1e-4)  # from the warm caches


def test_flex_score_mod_matches_exact(monkeypatch):
    """FlexAttention's score_mod (bias table + shift mask), run by the unfused reference implementation."""
    from torch.nn.attention.flex_attention import flex_attention

    monkeypatch.setattr(attention, "_compiled_flex", lambda: flex_attention)
    model = tiny().eval()
    x = {"S2": torch.randn(1, 16, 10, 40, 40)}
    with torch.no_grad(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # the unfused implementation warns that it is slow: ignored
        ref = model.set_attention("exact").forward_features(x)["S2"]
        flex = model.set_attention("flex").forward_features(x)["S2"]
    assert not [w for w in caught if "using SDPA instead" in str(w.message)]  # FlexAttention really ran
    for a, b in zip(ref["features_list"] + [ref["encoder_features"]], flex["features_list"] + [flex["encoder_features"]]):
        torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)


# -- bf16 autocast ------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES)
def test_bf16_autocast_keeps_decisions(case, winograd_everywhere):
    if fast_mod.bf16_unavailable_reason(torch.device("cpu")):
        pytest.skip("no bf16 support on this CPU")
    model, inputs = fixture_model(case)
    fast = configure_fast_path(model, "cpu", "bf16")
    with torch.no_grad():
        ref = model.set_attention("exact")(inputs)
        model.set_attention("auto")
        out = fast(inputs).float()
    assert (out - ref).abs().max().item() < BF16_LOGIT_ATOL
    assert argmax_agreement(ref, out) >= 0.999


# -- pieces --------------------------------------------------------------------------------
@pytest.mark.parametrize("b, c_in, c_out, h, w", [(1, 16, 24, 8, 8), (3, 20, 12, 7, 9), (2, 8, 8, 1, 1), (1, 4, 6, 5, 2)])
def test_winograd_matches_direct_convolution(b, c_in, c_out, h, w):
    x, wt, bias = torch.randn(b, c_in, h, w), torch.randn(c_out, c_in, 3, 3), torch.randn(c_out)
    ref = F.conv2d(x.double(), wt.double(), bias.double(), padding=1)
    out = winograd_conv3x3(x, winograd_kernel(wt), bias)
    assert out.shape == ref.shape and out.is_contiguous()
    direct_err = (F.conv2d(x, wt, bias, padding=1).double() - ref).abs().max().item()
    assert (out.double() - ref).abs().max().item() <= max(2 * direct_err, 1e-5)


def test_winograd_kernel_cache_follows_weight_updates(winograd_everywhere):
    conv = Conv3x3(8, 8).eval()
    x = torch.randn(1, 8, 6, 6)
    with torch.no_grad():
        conv(x)  # fills the cache
        conv.weight.add_(1.0)  # in place, like an optimiser step
        torch.testing.assert_close(conv(x), F.conv2d(x, conv.weight, conv.bias, padding=1), atol=1e-4, rtol=1e-4)
        conv.load_state_dict({"weight": torch.randn(8, 8, 3, 3), "bias": torch.zeros(8)})
        torch.testing.assert_close(conv(x), F.conv2d(x, conv.weight, conv.bias, padding=1), atol=1e-4, rtol=1e-4)


def test_caches_made_under_inference_mode_serve_training_later(winograd_everywhere):
    model = tiny().eval()
    x = {"S2": torch.randn(1, 8, 10, 24, 24)}
    with torch.inference_mode():
        ref = model(x)  # fills geometry and eval caches
    out = model(x)  # with grad: index tensors saved for backward must not be inference tensors
    out.sum().backward()
    torch.testing.assert_close(out.detach(), ref, atol=1e-4, rtol=1e-4)


def test_channels_last_decoder_equals_default(monkeypatch, winograd_everywhere):
    model = tiny().eval()
    x = {"S2": torch.randn(1, 8, 10, 32, 32)}
    with torch.no_grad():
        ref = model.set_attention("exact")(x)
        model.set_attention("auto")
        monkeypatch.setattr(layers, "CHANNELS_LAST_DEVICES", ("cpu", "cuda"))  # the CUDA layout, on CPU
        monkeypatch.setattr(Conv3x3, "winograd_min_channels", 1 << 62)  # channels-last goes to oneDNN
        feats = model.forward_features(x)["S2"]
        neck_out = model.neck({"S2": feats["encoder_features"]}, {"S2": feats["features_list"]}, out_size=(32, 32))
        assert neck_out.is_contiguous(memory_format=torch.channels_last)
        out = model(x)
    assert out.is_contiguous()
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


def test_use_fast_convs_keeps_parameters_and_keys():
    head = torch.nn.Sequential(torch.nn.Conv2d(8, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 1))
    keys, weight = list(head.state_dict()), head[0].weight
    assert use_fast_convs(head) == 1
    assert isinstance(head[0], Conv3x3) and head[0].weight is weight and list(head.state_dict()) == keys


# -- efficient decoder ---------------------------------------------------------------------
def test_efficient_decoder_shapes_and_gradients():
    model = tiny(decoder="efficient", sources={"S2": 10, "HLSL30": 6}).train()
    assert isinstance(model.neck, EfficientDecoder)
    x = {"S2": torch.randn(2, 8, 10, 48, 48), "HLSL30": torch.randn(2, 8, 6, 17, 17)}
    feats = model.forward_features(x)
    neck = model.neck({s: f["encoder_features"] for s, f in feats.items()},
                      {s: f["features_list"] for s, f in feats.items()}, out_size=(48, 48))
    assert neck.shape == (2, TINY["decoder_dim"], 48, 48)
    model(x).square().mean().backward()
    assert all(p.grad is not None for p in model.neck.parameters())


def test_efficient_decoder_fast_path_matches_exact(winograd_everywhere):
    from agrifm.models.layers import set_fast

    model = tiny(decoder="efficient").eval()
    x = {"S2": torch.randn(2, 8, 10, 32, 32)}
    with torch.no_grad():
        set_fast(model, False)
        exact = model(x)
        set_fast(model, True)
        fast = model(x)
    assert any(isinstance(m, Conv3x3) for m in model.neck.modules())
    torch.testing.assert_close(fast, exact, atol=1e-4, rtol=1e-4)


def test_efficient_decoder_is_a_fraction_of_the_published_flops():
    from agrifm.commands.info import describe

    def decoder_gflops(decoder: str) -> float:
        cfg = ModelConfig(feature_size=(4, 4), out_size=(64, 64), decoder=decoder)
        return next(g for part, _, g in describe(cfg, 32, 64) if part == "decoder")

    assert decoder_gflops("efficient") < 0.05 * decoder_gflops("fusion")


# -- fallbacks: one warning naming what is missing, correct results -------------------------
def _one_warning(match: str, fn):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fn()
    ours = [w for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(ours) == 1 and match in str(ours[0].message), [str(w.message) for w in ours]
    return result


def test_cuda_request_without_cuda_falls_back_to_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    fast = _one_warning("CUDA", lambda: configure_fast_path(tiny().eval(), "cuda"))
    assert fast.device.type == "cpu"
    with torch.no_grad():
        assert fast({"S2": torch.randn(1, 4, 10, 16, 16)}).shape == (1, 2, 16, 16)


def test_missing_bf16_support_falls_back_to_fp32(monkeypatch):
    monkeypatch.setattr(fast_mod, "bf16_unavailable_reason", lambda device: "no AVX512-BF16")
    fast = _one_warning("bf16", lambda: configure_fast_path(tiny().eval(), "cpu", "bf16"))
    assert fast.precision == "fp32"


@pytest.mark.parametrize("what", ["compile", "flex"])
def test_missing_compiler_falls_back_with_one_warning(monkeypatch, what):
    monkeypatch.setitem(attention._COMPILER_MISSING, "cpu", "no C++ compiler (g++/clang++) on PATH")
    model = tiny().eval()
    x = {"S2": torch.randn(1, 4, 10, 16, 16)}
    with torch.no_grad():
        ref = model.set_attention("exact")(x)
    kw = {"compile": True} if what == "compile" else {"attention": "flex"}
    fast = _one_warning("C++ compiler", lambda: configure_fast_path(model, "cpu", **kw))
    assert not fast.compiled and fast.attention in ("auto", "sdpa")
    with torch.no_grad():
        torch.testing.assert_close(fast(x), ref, atol=1e-4, rtol=1e-4)


def test_compile_failure_at_first_call_falls_back_to_eager(monkeypatch):
    def broken_compile(model, **kw):
        def run(*a, **k):
            raise RuntimeError("backend compiler failed: simulated")
        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    model = tiny().eval()
    x = {"S2": torch.randn(1, 4, 10, 16, 16)}
    fast = configure_fast_path(model, "cpu", compile=True)
    with torch.no_grad():
        ref = model(x)
        out = _one_warning("torch.compile", lambda: fast(x))
        torch.testing.assert_close(out, ref)
        assert not fast.compiled and fast(x).shape == ref.shape


def test_flex_runtime_failure_falls_back_to_sdpa(monkeypatch):
    def broken():
        def run(*a, **k):
            raise RuntimeError("simulated kernel failure")
        return run

    monkeypatch.setattr(attention, "_compiled_flex", broken)
    monkeypatch.setattr(attention, "_FLEX", {})
    model = tiny().eval()
    x = {"S2": torch.randn(1, 8, 10, 24, 24)}
    with torch.no_grad():
        ref = model.set_attention("sdpa")(x)
        out = _one_warning("FlexAttention", lambda: model.set_attention("flex")(x))
    torch.testing.assert_close(out, ref)
