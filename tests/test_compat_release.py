"""The release's other artefacts: its training checkpoints, exported pre-trained encoders, and
the way back (agrifm export-published)."""

from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest
import torch

from agrifm.compat import load_official_checkpoint, load_official_config, model_from_official_config
from conftest import FIXTURES, need


def _fixture(case="official_tiny_s2"):
    from safetensors.torch import load_file

    meta = json.loads(need(FIXTURES / f"{case}.json").read_text())
    t = load_file(str(FIXTURES / f"{case}.safetensors"))
    sd = {k[len("state_dict/"):]: v for k, v in t.items() if k.startswith("state_dict/")}
    inputs = {k[len("input/"):]: v.float() for k, v in t.items() if k.startswith("input/")}
    return meta, sd, inputs, t["output/logits"]


def _config_file(tmp_path, meta, extra=""):
    path = tmp_path / "config.py"
    path.write_text(extra + "model = " + repr(meta["model"]) + "\n")
    return path


# -- mmengine training checkpoints ---------------------------------------------------------


def _mmengine_checkpoint(path, state_dict, payload=None):
    """What mmengine's Runner.save_checkpoint writes, made without mmengine: stand-in classes
    registered under mmengine's module paths while pickling, removed before loading."""
    names = ["mmengine", "mmengine.logging", "mmengine.logging.history_buffer", "mmengine.logging.message_hub"]
    saved = {n: sys.modules.get(n) for n in names}
    hist = types.ModuleType("mmengine.logging.history_buffer")

    class HistoryBuffer:
        def __init__(self):
            self.max_length, self._log_history, self._count_history = 1000000, np.array([0.5, 0.4]), np.array([1, 1])

    HistoryBuffer.__module__ = hist.__name__
    HistoryBuffer.__qualname__ = "HistoryBuffer"
    hist.HistoryBuffer = HistoryBuffer
    try:
        for n in names[:2]:
            sys.modules[n] = types.ModuleType(n)
        sys.modules[hist.__name__] = hist
        ckpt = {
            "meta": {"cfg": "model = dict(type='MultiUnifiedModel')", "epoch": 12, "iter": 3000,
                     "mmengine_version": "0.10.3", "seed": np.int64(42), "hook_msgs": {"best_score": np.float64(0.81)}},
            "state_dict": dict(state_dict),
            "message_hub": {"log_scalars": {"train/loss": HistoryBuffer()},
                            "runtime_info": {"best_score": np.float64(0.81), "epoch": 12}, "resumed_keys": {}},
            "optimizer": {"state": {0: {"step": torch.tensor(3000.0), "exp_avg": torch.zeros(3)}},
                          "param_groups": [{"lr": 6e-5, "betas": (0.9, 0.999), "params": [0]}]},
            "param_schedulers": [{"start_factor": 0.01, "base_lrs": [6e-5], "last_step": 3000}],
        }
        if payload is not None:
            ckpt["payload"] = payload
        torch.save(ckpt, path)
    finally:
        for n, m in saved.items():
            if m is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = m
    assert "mmengine" not in sys.modules or saved["mmengine"] is not None
    with pytest.raises(Exception):
        torch.load(path, weights_only=True)  # what agrifm convert used to stop at


def test_convert_mmengine_checkpoint_gives_the_plain_state_dict_logits(tmp_path):
    from agrifm import load_model
    from agrifm.commands.convert import main as convert_main

    meta, sd, inputs, logits = _fixture()
    cfg = _config_file(tmp_path, meta)
    plain, training = tmp_path / "plain.pth", tmp_path / "epoch_12.pth"
    torch.save(sd, plain)
    _mmengine_checkpoint(training, sd)
    outs = []
    for ckpt in (plain, training):
        out = tmp_path / f"{ckpt.stem}.safetensors"
        assert convert_main([str(cfg), str(ckpt), str(out)]) == 0
        outs.append(load_model(out))
    with torch.no_grad():
        a, b = outs[0](inputs), outs[1](inputs)
    assert torch.equal(a, b) and torch.allclose(b, logits, atol=1e-4, rtol=1e-4)


def test_mmengine_checkpoint_payload_never_runs(tmp_path, capsys):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (exec, (f"open({str(marker)!r}, 'w').write('x'); print('ran')",))

    meta, sd, inputs, logits = _fixture()
    path = tmp_path / "epoch_1.pth"
    _mmengine_checkpoint(path, sd, payload={"deep": [Payload(), (Payload(),)]})
    model = model_from_official_config(meta["model"]).eval()
    report = load_official_checkpoint(model, path)
    assert report.kind == "full" and not marker.exists() and "ran" not in capsys.readouterr().out


def test_inert_reader_keeps_other_objects_as_data(tmp_path):
    from agrifm.compat.unpickle import Placeholder, load_inert

    meta, sd, _, _ = _fixture()
    path = tmp_path / "ckpt.pth"
    _mmengine_checkpoint(path, {"w": torch.arange(4.0)})
    ckpt = load_inert(path)
    assert torch.equal(ckpt["state_dict"]["w"], torch.arange(4.0))
    assert isinstance(ckpt["message_hub"]["log_scalars"]["train/loss"], Placeholder)
    assert isinstance(ckpt["message_hub"]["runtime_info"]["best_score"], Placeholder)
    assert "mmengine" not in sys.modules


# -- exported pre-trained encoders ---------------------------------------------------------


class _PublishedEncoder(torch.nn.Module):
    """The release's encoder layout: our encoder plus the relative_position_index buffer that the
    release registers in every attention block (patch_emd.*, backbone.*)."""

    def __init__(self, model, source):
        super().__init__()
        from agrifm.models.attention import relative_position_index

        enc = model.encoders[source]
        self.patch_emd, self.backbone = enc.patch_emd, enc.backbone
        for layer in self.backbone.layers:
            for block in layer.blocks:
                block.attn.register_buffer("relative_position_index", relative_position_index(block.attn.window, block.attn.window))


def test_encoder_published_loads_strictly_into_the_published_layout():
    from agrifm.compat.checkpoint import encoder_to_published

    meta, sd, _, _ = _fixture("official_tiny_three_sources")
    model = model_from_official_config(meta["model"])
    load_official_checkpoint(model, sd)
    backbone = {k: v for k, v in model.encoders["S2"].backbone.state_dict().items()}
    embeds = {s: model.encoders[s].patch_emd.state_dict() for s in ("S2", "HLSL30", "Modis")}
    pub = encoder_to_published(backbone, embeds, model.config.window_size)
    # every key, shape and dtype the release's encoder has (from the fixture's published listing)
    listing = {"backbone." + k.split(".backbone.", 1)[1]: (d, tuple(s)) for k, (d, s) in meta["official_state_dict"].items()
               if k.startswith("encoders.encoders.S2.backbone.")}
    ours = {k: (str(v.dtype).replace("torch.", ""), tuple(v.shape)) for k, v in pub.items() if k.startswith("backbone.")}
    assert ours == listing and sum(k.endswith("relative_position_index") for k in ours) == 8
    for src in ("S2", "HLSL30", "Modis"):  # the release's init_cfg: revise_keys <SRC>_patch_emd -> patch_emd, strict
        target = _PublishedEncoder(model_from_official_config(meta["model"]), src)
        revised = {k.replace(f"{src}_patch_emd", "patch_emd"): v for k, v in pub.items()
                   if k.startswith(("backbone.", f"{src}_patch_emd."))}
        target.load_state_dict(revised, strict=True)
        assert torch.equal(target.patch_emd.proj.weight, embeds[src]["proj.weight"])
    back = model_from_official_config(meta["model"])  # and agrifm reads its own export back
    report = load_official_checkpoint(back, pub)
    assert report.kind == "encoder" and not report.unexpected and report.sources == {s: s for s in embeds}
    assert torch.equal(back.encoders["Modis"].backbone.norm.weight, model.encoders["S2"].backbone.norm.weight)


# -- export-published ----------------------------------------------------------------------


@pytest.mark.parametrize("case", ["official_tiny_s2", "official_tiny_three_sources", "official_tiny_s2_24frames"])
def test_export_published_round_trip(tmp_path, case):
    from agrifm import load_model
    from agrifm.cli import main as cli

    meta, sd, inputs, logits = _fixture(case)
    cfg = _config_file(tmp_path, meta)
    ckpt = tmp_path / "w.pth"
    torch.save(sd, ckpt)
    ours = tmp_path / "ours.safetensors"
    assert cli(["convert", str(cfg), str(ckpt), str(ours)]) == 0
    assert cli(["export-published", str(ours), str(tmp_path / "release")]) == 0
    state = torch.load(tmp_path / "release" / "model.pth", weights_only=True)
    listing = {k: tuple(s) for k, (_, s) in meta["official_state_dict"].items()}
    assert {k: tuple(v.shape) for k, v in state.items()} == listing  # every published key, buffers included
    back = model_from_official_config(load_official_config(tmp_path / "release" / "config.py")).eval()
    report = load_official_checkpoint(back, tmp_path / "release" / "model.pth")  # strict
    assert not report.missing and not report.unexpected
    with torch.no_grad():
        assert torch.equal(back(inputs), load_model(ours)(inputs))
        assert torch.allclose(back(inputs), logits, atol=1e-4, rtol=1e-4)


def test_export_published_of_a_model_that_follows_its_input(tmp_path, one_thread):
    from agrifm.checkpoint import save_model
    from agrifm.commands.export_published import export_published
    from agrifm.models.agrifm import AgriFM
    from agrifm.models.presets import preset

    cfg = preset("published", embed_dim=8, depths=(2, 2, 2, 2), num_heads=(1, 1, 2, 2), decoder_dim=64, num_frames=30,
                 feature_size=None, out_size=None, sources={"S2": 10, "HLSL30": 6})
    model = AgriFM(cfg).eval()
    torch.manual_seed(0)
    for p in model.parameters():
        p.data.normal_(0, 0.05)
    save_model(model, tmp_path / "m.safetensors", task="segmentation", class_names=["a", "b"], frames=30)
    weights, config = export_published(tmp_path / "m.safetensors", tmp_path / "out", input_size=(40, 36))
    names = load_official_config(config)
    assert names["num_frames"] == 30 and names["class_names"] == ["a", "b"] and len(names["mean"]["S2"]) == 10
    back = model_from_official_config(names).eval()
    assert back.config.num_frames == 30
    load_official_checkpoint(back, weights)
    x = {"S2": torch.randn(1, 30, 10, 40, 36), "HLSL30": torch.randn(1, 30, 6, 14, 12)}
    with torch.no_grad():
        assert torch.allclose(back(x), model(x), atol=1e-5)


def test_convert_uses_the_configs_normalisation(tmp_path):
    from agrifm.checkpoint import read_metadata
    from agrifm.commands.convert import main as convert_main

    meta, sd, _, _ = _fixture()
    mean, std = [float(i) for i in range(10)], [float(i + 1) for i in range(10)]
    cfg = _config_file(tmp_path, meta, extra=f"mean = dict(S2={mean})\nstd = {{'S2': {std}}}\nclass_names = ['a', 'b', 'c']\n")
    ckpt = tmp_path / "w.pth"
    torch.save(sd, ckpt)
    assert convert_main([str(cfg), str(ckpt), str(tmp_path / "m.safetensors")]) == 0
    m = read_metadata(tmp_path / "m.safetensors")
    assert list(m.sources["S2"].mean) == mean and list(m.sources["S2"].std) == std
    assert m.sources["S2"].bands[3] == "B08" and m.class_names == ["a", "b", "c"]


def test_inert_reader_never_calls_globals_reached_by_extension_codes(tmp_path):
    """Protocol-2 extension codes (copyreg) name globals too; they go through the same gate."""
    import copyreg
    import io
    import pickle

    from agrifm.compat.unpickle import Placeholder, _InertUnpickler

    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (exec, (f"open({str(marker)!r}, 'w')",))

    copyreg.add_extension("builtins", "exec", 240)
    try:
        data = pickle.dumps({"a": Payload()}, protocol=2)
        assert b"\x82" in data  # EXT1
        loaded = _InertUnpickler(io.BytesIO(data)).load()
    finally:
        copyreg.remove_extension("builtins", "exec", 240)
    assert isinstance(loaded["a"], Placeholder) and not marker.exists()
