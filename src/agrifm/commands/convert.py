"""``agrifm convert CONFIG.py CHECKPOINT OUT.safetensors``: published weights -> our format.

The checkpoint may be a plain state dict, a pre-trained file, or a training checkpoint of the
release (mmengine: config text, message hub, optimizer state): nothing in it is executed, only
its ``state_dict`` is kept. Normalisation comes from the config's own ``mean``/``std``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any, Mapping

from agrifm.checkpoint import default_colors, save_model
from agrifm.errors import AgrifmError
from agrifm.sensors import Source, get_source

__all__ = ["main", "convert", "config_statistics"]


def config_statistics(names: Mapping[str, Any], sources: Mapping[str, int]) -> dict[str, tuple[list[float], list[float]]]:
    """{source: (mean, std)} from a published config's top-level ``mean``/``std`` (dicts per source,
    or one list for a single source), for the sources whose band counts match."""
    mean, std = names.get("mean"), names.get("std")
    if isinstance(mean, (list, tuple)) and isinstance(std, (list, tuple)) and len(sources) == 1:
        mean, std = {next(iter(sources)): mean}, {next(iter(sources)): std}
    if not isinstance(mean, Mapping) or not isinstance(std, Mapping):
        return {}
    out = {}
    for name, bands in sources.items():
        m, s = mean.get(name), std.get(name)
        if isinstance(m, (list, tuple)) and isinstance(s, (list, tuple)) and len(m) == len(s) == bands:
            out[name] = ([float(x) for x in m], [float(x) for x in s])
    return out


def _sources_for(model, names: Mapping[str, Any]) -> dict[str, Source]:
    """Registry band names where they fit; the config's mean/std, else the registry's, else neutral."""
    stats = config_statistics(names, model.config.sources)
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
        if name in stats:
            src = dataclasses.replace(src, mean=tuple(stats[name][0]), std=tuple(stats[name][1]))
        out[name] = src
    return out


def convert(config_path: str, checkpoint: str, out: str, class_names: list[str] | None = None, *,
            overwrite: bool = False) -> str:
    from agrifm.compat import load_official_checkpoint, official_model_config
    from agrifm.compat.model import build_official_model

    if Path(out).exists() and not overwrite:
        raise AgrifmError(f"{out} already exists; pass --overwrite to replace it")
    if Path(out).suffix != ".safetensors":
        raise AgrifmError(f"{out}: the output must be a .safetensors file")
    cfg, names = official_model_config(config_path)
    try:
        model = build_official_model(cfg)
    except AgrifmError as exc:
        raise AgrifmError(f"{config_path}: {exc}") from None
    report = load_official_checkpoint(model, checkpoint)
    if report.kind != "full":
        raise AgrifmError(f"{checkpoint}: a pre-trained encoder without decoder/head; fine-tune it with 'agrifm fit' instead")
    k = model.config.num_classes
    names_given = class_names or names.get("class_names")
    if not (isinstance(names_given, (list, tuple)) and all(isinstance(n, str) for n in names_given)):
        names_given = [f"class_{i}" for i in range(k)]
    if len(names_given) != k:
        raise AgrifmError(f"{len(names_given)} class names given for a {k}-class model ({config_path})")
    save_model(model, out, task="segmentation", sources=_sources_for(model, names), class_names=list(names_given),
               class_colors=default_colors(k), frames=model.config.num_frames,
               extra={"converted_from": {"config": str(config_path), "checkpoint": str(checkpoint)}})
    print(report)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="agrifm convert", description=__doc__.splitlines()[0])
    ap.add_argument("config", help="published .py config (read, never executed)")
    ap.add_argument("checkpoint", help="published checkpoint: .pth/.pt (never executed) or .safetensors")
    ap.add_argument("out", help="output .safetensors")
    ap.add_argument("--class-names", default=None, help="JSON list of class names (default: the config's class_names)")
    ap.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    args = ap.parse_args(argv)
    names = None
    if args.class_names:
        try:
            names = json.loads(args.class_names)
        except json.JSONDecodeError as exc:
            raise AgrifmError(f"--class-names: not a JSON list ({exc})") from None
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise AgrifmError("--class-names: expected a JSON list of strings, e.g. '[\"other\", \"cropland\"]'")
    convert(args.config, args.checkpoint, args.out, names, overwrite=args.overwrite)
    print(f"wrote {args.out}")
    return 0
