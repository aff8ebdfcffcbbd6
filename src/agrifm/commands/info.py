"""``agrifm info``: parameters and FLOPs per part for a config and input size.

FLOPs are counted on the ``meta`` device (no memory, no compute), so the published 196 M
parameter model at 32×256×256 is described in seconds on a laptop.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import torch

from agrifm.errors import AgrifmError
from agrifm.models.agrifm import AgriFM
from agrifm.models.config import ModelConfig, fused_widths

__all__ = ["describe", "main", "resolve_config", "for_frames"]


def resolve_config(spec: str) -> ModelConfig:
    """A preset name, a published ``.py`` config, a YAML/JSON model config or our checkpoint."""
    from agrifm.models.presets import PRESETS, preset

    if spec in PRESETS:
        return preset(spec)
    path = Path(spec)
    if not path.is_file():
        raise AgrifmError(f"{spec}: neither a preset ({', '.join(sorted(PRESETS))}) nor an existing file")
    if path.suffix == ".py":
        from agrifm.compat import official_model_config

        return official_model_config(path)[0]
    try:
        if path.suffix == ".safetensors":
            from agrifm.checkpoint import read_metadata

            meta = read_metadata(path)
            if meta.frames:
                meta.model.num_frames = meta.frames
            return meta.model
        import yaml

        d = yaml.safe_load(path.read_text())
        d = d.get("model", d) if isinstance(d, dict) else d
        if isinstance(d, dict) and "preset" in d:
            d = dict(d)
            return preset(d.pop("preset"), **d)
        if not isinstance(d, dict):
            raise ValueError("expected a mapping of model settings")
        return ModelConfig.from_dict(d)
    except AgrifmError:
        raise
    except Exception as exc:  # unreadable file, unknown preset or keys: one line naming the file
        raise AgrifmError(f"{spec}: not a model config or agrifm checkpoint ({exc})") from None


def for_frames(cfg: ModelConfig, frames: int) -> ModelConfig:
    """``cfg`` for a season of ``frames``: with 'cat' fusion the decoder widths follow the frames."""
    if frames < 1:
        raise AgrifmError(f"--frames {frames}: expected at least 1 frame")
    if cfg.feature_fusion != "cat" or cfg.head != "segmentation" or frames == cfg.num_frames:
        return cfg
    widths = fused_widths(cfg, frames)
    if cfg.fusion_keys is not None:  # published layout: the config's widths, rewritten for this season
        levels = len(cfg.fusion_keys)
        cfg.fusion_keys = [{s: widths[levels - 1 - i] for s in keys} for i, keys in enumerate(cfg.fusion_keys)]
        if widths[-1] != cfg.decoder_dim:  # the published decoder takes encoder features at its own width
            print(f"note: {frames} frames give {widths[-1]}-channel encoder features; shown with neck and head "
                  f"embed_dim {widths[-1]} (was {cfg.decoder_dim}), as a published config for this season needs")
            cfg.decoder_dim = widths[-1]
    cfg.num_frames = frames
    return cfg


def _point_model(cfg: ModelConfig) -> bool:
    """A pixel time-series model: no spatial patching or merging (its inputs are 1x1)."""
    return cfg.patch_size[1:] == (1, 1) and all(tuple(s[1:]) == (1, 1) for s in cfg.downsample_steps)


def _parts(model: AgriFM) -> dict[str, str]:
    """Module name -> the part a reader cares about (modules that are parts, not containers)."""
    parts = {}
    for src, enc in model.encoders.items():
        parts[f"encoders.{src}.patch_emd"] = f"{src} patch embedding"
        for i in range(len(enc.backbone.layers)):
            parts[f"encoders.{src}.backbone.layers.{i}"] = f"{src} stage {i}"
        parts[f"encoders.{src}.backbone.norm"] = f"{src} final norm"
        parts[f"encoders.{src}.fusion"] = f"{src} temporal fusion"
    parts.update({"neck": "decoder", "head": "head"})
    return parts


def describe(cfg: ModelConfig, frames: int, size: int | tuple[int, int], batch: int = 1) -> list[tuple[str, int, float]]:
    """[(part, parameters, forward GFLOP per sample)] with a total row last."""
    from torch.utils.flop_counter import FlopCounterMode

    h, w = (size, size) if isinstance(size, int) else size
    with torch.device("meta"):
        model = AgriFM(cfg).eval()
    parts = _parts(model)
    params: dict[str, int] = defaultdict(int)
    for name, p in model.named_parameters():
        owner = next((m for m in parts if name.startswith(m + ".")), None)
        params[parts[owner] if owner else "other"] += p.numel()
    inputs = {}
    for i, (src, bands) in enumerate(cfg.sources.items()):
        # Other sources cover the same footprint at a coarser grid: scale by resolution ratio.
        from agrifm.sensors import SOURCES

        ratio = 1.0
        if i and src in SOURCES and next(iter(cfg.sources)) in SOURCES:
            ratio = SOURCES[next(iter(cfg.sources))].resolution_m / SOURCES[src].resolution_m
        inputs[src] = torch.zeros(batch, frames, bands, max(1, round(h * ratio)), max(1, round(w * ratio)), device="meta")
    counter = FlopCounterMode(display=False, depth=None)
    with counter, torch.no_grad():
        model(inputs)
    counts = {k.split(".", 1)[1]: sum(v.values()) for k, v in counter.get_flop_counts().items() if k.startswith("AgriFM.")}
    per_part = {label: counts.get(name, 0.0) for name, label in parts.items()}  # the counter nests parents
    total_flops = sum(counter.get_flop_counts().get("Global", {}).values())
    rows = [(label, params.get(label, 0), per_part.get(label, 0.0) / batch / 1e9) for label in dict.fromkeys(parts.values())]
    rows = [r for r in rows if r[1] or r[2]]
    rows.append(("total", sum(params.values()), total_flops / batch / 1e9))
    return rows


def main(argv: list[str] | None = None) -> int:
    from agrifm.models.presets import PRESETS

    ap = argparse.ArgumentParser(
        prog="agrifm info", description="Parameters and FLOPs per part for a config and input size.",
        epilog=f"presets: {', '.join(sorted(PRESETS))}")
    ap.add_argument("config", nargs="?", default="published",
                    help="preset name, published .py config, YAML model config or agrifm .safetensors (default: published)")
    ap.add_argument("--frames", type=int, default=None, help="input frames T (default: the config's num_frames)")
    ap.add_argument("--size", type=int, default=None, help="input rows = cols of the first source (default: out_size or 256)")
    args = ap.parse_args(argv)
    cfg = resolve_config(args.config)
    frames = cfg.num_frames if args.frames is None else args.frames
    cfg = for_frames(cfg, frames)
    if args.size is not None and args.size < 1:
        raise AgrifmError(f"--size {args.size}: expected at least 1 pixel")
    size = args.size or (cfg.out_size[0] if cfg.out_size else 1 if _point_model(cfg) else 256)
    if args.size and cfg.out_size:  # --size rescales a published config: out_size and feature_size follow
        cfg.out_size = (size, size)
        cfg.feature_size = (size // 16, size // 16)
    rows = describe(cfg, frames, size)
    print(f"AgriFM {args.config}: sources {cfg.sources}, head {cfg.head}, input {frames}x{size}x{size}, "
          f"fusion {cfg.feature_fusion}")
    width = max(len(r[0]) for r in rows)
    print(f"{'part':<{width}}  {'params':>12}  {'GFLOP/sample':>13}")
    for part, n, g in rows:
        if part == "total":
            print("-" * (width + 29))
        print(f"{part:<{width}}  {n:>12,}  {g:>13.2f}")
    members = _members(args.config)
    if members > 1:
        print(f"an ensemble of {members} such models: {members}x the parameters and GFLOP")
    return 0


def _members(spec: str) -> int:
    if not spec.endswith(".safetensors"):
        return 1
    from agrifm.checkpoint import read_metadata

    return read_metadata(spec).members
