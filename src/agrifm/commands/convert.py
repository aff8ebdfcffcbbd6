"""``agrifm convert CONFIG.py CHECKPOINT OUT.safetensors``: published weights -> our format."""

from __future__ import annotations

import argparse
import json

from agrifm.checkpoint import default_colors, save_model
from agrifm.compat import load_official_checkpoint, load_official_config, model_from_official_config
from agrifm.sensors import Source, get_source

__all__ = ["main", "convert"]


def _sources_for(model) -> dict[str, Source]:
    """Registry descriptions for the model's sources; unknown names get neutral statistics."""
    out = {}
    for name, bands in model.config.sources.items():
        try:
            src = get_source(name)
        except KeyError:
            src = None
        if src is None or src.num_bands != bands:
            src = Source(name=name, bands=tuple(f"band{i + 1}" for i in range(bands)), resolution_m=10.0,
                         units="unknown", mean=(0.0,) * bands, std=(1.0,) * bands,
                         description="converted from a published checkpoint; set band names and statistics")
        out[name] = src
    return out


def convert(config_path: str, checkpoint: str, out: str, class_names: list[str] | None = None) -> str:
    cfg = load_official_config(config_path)
    if "model" not in cfg:
        raise ValueError(f"{config_path}: no top-level 'model = dict(...)' assignment")
    model = model_from_official_config(cfg["model"])
    report = load_official_checkpoint(model, checkpoint)
    if report.kind != "full":
        raise ValueError(f"{checkpoint}: a pre-trained encoder without decoder/head; fine-tune it with 'agrifm fit' instead")
    k = model.config.num_classes
    names = class_names or [f"class_{i}" for i in range(k)]
    if len(names) != k:
        raise ValueError(f"{len(names)} class names given for a {k}-class model")
    save_model(model, out, task="segmentation", sources=_sources_for(model), class_names=names,
               class_colors=default_colors(k), frames=model.config.num_frames,
               extra={"converted_from": {"config": str(config_path), "checkpoint": str(checkpoint)}})
    print(report)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="agrifm convert", description=__doc__.splitlines()[0])
    ap.add_argument("config", help="published .py config (read, never executed)")
    ap.add_argument("checkpoint", help="published checkpoint (.pth/.pt read with weights_only=True, or .safetensors)")
    ap.add_argument("out", help="output .safetensors")
    ap.add_argument("--class-names", default=None, help="JSON list of class names")
    args = ap.parse_args(argv)
    convert(args.config, args.checkpoint, args.out, json.loads(args.class_names) if args.class_names else None)
    print(f"wrote {args.out}")
    return 0
