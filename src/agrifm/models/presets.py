"""Named model configurations."""

from __future__ import annotations

from typing import Any

from agrifm.models.config import ModelConfig

__all__ = ["PRESETS", "preset"]

PRESETS: dict[str, dict[str, Any]] = {
    # The release's configs/cropland_mapping.py (196 M parameters, ~2.97 TFLOP per 32x256x256 sample).
    "published": dict(feature_size=(16, 16), out_size=(256, 256)),
    # Same backbone, decoder independent of the number of frames (early-season capable).
    "base-vt": dict(feature_fusion="mean", decoder_dim=256),
    # A small dense model for CPU fine-tuning and tests.
    "small": dict(embed_dim=32, depths=(2, 2, 2, 2), num_heads=(2, 4, 8, 16), decoder_dim=64,
                  feature_fusion="mean", drop_path_rate=0.1),
    # Pixel time-series classification (points/parcels): time-only windows, no spatial merging.
    "point-small": dict(head="classification", patch_size=(1, 1, 1), embed_dim=48, depths=(2, 2, 2, 1),
                        num_heads=(2, 4, 8, 8), window_size=(8, 1, 1), drop_path_rate=0.1,
                        downsample_steps=((2, 1, 1),) * 4, merge_pad="minimal", feature_fusion="mean"),
}


def preset(name: str, **overrides: Any) -> ModelConfig:
    """A :class:`ModelConfig` from a named preset plus overrides."""
    if name not in PRESETS:
        raise KeyError(f"unknown model preset {name!r}; presets: {sorted(PRESETS)}")
    return ModelConfig.from_dict({**PRESETS[name], **overrides})
