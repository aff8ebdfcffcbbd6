"""``agrifm export-published MODEL.safetensors OUT_DIR``: our model -> the published release's files.

Writes ``OUT_DIR/model.pth`` (published key layout, plain tensors, every buffer) and
``OUT_DIR/config.py`` (a published-format config the release's builder accepts).
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch

from agrifm.errors import AgrifmError
from agrifm.io import atomic_output, write_text_atomic

__all__ = ["main", "export_published"]


def _load(path: Path):
    from agrifm.checkpoint import load_model

    if not path.is_file():
        raise AgrifmError(f"{path}: no such file")
    try:
        return load_model(path)
    except AgrifmError:
        raise
    except (ValueError, KeyError, TypeError, OSError) as exc:
        raise AgrifmError(f"{path}: not an agrifm model checkpoint ({exc})") from None


def _encoder_size(model, size: tuple[int, int]) -> tuple[int, int]:
    """Rows and columns of the first decoder source's encoder features for a ``size`` input (meta device)."""
    cfg = model.config
    src = cfg.decoder_sources[0]
    with torch.device("meta"):
        probe = type(model)(copy.deepcopy(cfg))
    x = torch.zeros(1, cfg.num_frames, cfg.sources[src], *size, device="meta")
    with torch.no_grad():
        enc, _ = probe.encoders[src](x)
    return tuple(enc.shape[-2:])


def export_published(model_path: str | Path, out_dir: str | Path, *, overwrite: bool = False,
                     input_size: tuple[int, int] | None = None) -> tuple[Path, Path]:
    """Write ``model.pth`` and ``config.py`` under ``out_dir``; returns their paths."""
    from agrifm.compat.errors import CompatError
    from agrifm.compat.export import published_config_text, published_state_dict

    model_path, out_dir = Path(model_path), Path(out_dir)
    weights, config = out_dir / "model.pth", out_dir / "config.py"
    if out_dir.exists() and not out_dir.is_dir():
        raise AgrifmError(f"{out_dir}: exists and is not a folder")
    existing = [str(p) for p in (weights, config) if p.exists()]
    if existing and not overwrite:
        raise AgrifmError(f"{', '.join(existing)} already exist(s); pass --overwrite to replace")
    model = _load(model_path)
    meta = model.meta
    if getattr(meta, "members", 1) > 1:
        raise AgrifmError(f"{model_path}: an ensemble of {meta.members} models; the release has single models")
    cfg = copy.deepcopy(model.config)
    if input_size is not None:
        if min(input_size) < 1:
            raise AgrifmError(f"--input-size {input_size[0]} {input_size[1]}: expected positive rows and columns")
        if cfg.feature_size is None:
            cfg.feature_size = _encoder_size(model, input_size)
        if cfg.out_size is None:
            cfg.out_size = tuple(input_size)
    elif cfg.head == "segmentation" and (cfg.feature_size is None or cfg.out_size is None):
        raise AgrifmError(f"{model_path}: the model follows its input size; the release fixes it: "
                          "pass --input-size ROWS COLS (the first decoder source's input)")
    model.config = cfg
    try:
        text = published_config_text(
            cfg, class_names=meta.class_names, origin=model_path.name,
            mean={k: s.mean for k, s in meta.sources.items()}, std={k: s.std for k, s in meta.sources.items()})
        state = published_state_dict(model)
    except CompatError as exc:
        raise AgrifmError(f"{model_path}: {exc}") from None
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_output(weights) as tmp:
        torch.save(state, tmp)
    write_text_atomic(config, text)
    return weights, config


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="agrifm export-published", description=__doc__.splitlines()[0])
    ap.add_argument("model", help="agrifm .safetensors checkpoint of a published-layout model")
    ap.add_argument("out_dir", help="folder for model.pth and config.py")
    ap.add_argument("--overwrite", action="store_true", help="replace model.pth/config.py already in OUT_DIR")
    ap.add_argument("--input-size", type=int, nargs=2, metavar=("ROWS", "COLS"), default=None,
                    help="input size that fixes feature_size/out_size for models that follow their input")
    args = ap.parse_args(argv)
    weights, config = export_published(args.model, args.out_dir, overwrite=args.overwrite,
                                       input_size=tuple(args.input_size) if args.input_size else None)
    print(f"wrote {weights} and {config}")
    return 0
