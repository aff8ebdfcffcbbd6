"""The model configuration: one plain dataclass that round-trips through JSON."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

__all__ = ["ModelConfig", "level_shapes"]

HEADS = ("segmentation", "classification", "fraction")


@dataclass
class ModelConfig:
    """Everything needed to build an :class:`~agrifm.models.agrifm.AgriFM`.

    ``sources`` maps source name -> band count, in the order the decoder concatenates them.
    Published defaults otherwise (``configs/cropland_mapping.py`` of the release).
    """

    sources: dict[str, int] = field(default_factory=lambda: {"S2": 10})
    num_classes: int = 2
    head: str = "segmentation"
    num_frames: int = 32
    patch_size: tuple[int, int, int] = (4, 2, 2)
    embed_dim: int = 128
    depths: tuple[int, ...] = (2, 2, 18, 2)
    num_heads: tuple[int, ...] = (4, 8, 16, 32)
    window_size: tuple[int, int, int] = (8, 7, 7)
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    qk_scale: float | None = None
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.2
    patch_norm: bool = False
    downsample_steps: tuple[tuple[int, int, int], ...] = ((2, 2, 2), (2, 2, 2), (2, 2, 2), (2, 2, 2))
    mean_frame_down: bool = True
    feature_fusion: str = "cat"
    merge_pad: str = "published"
    rel_pos: str = "published"
    attn_impl: str = "auto"  # 'exact' = the published computation; 'auto'/'sdpa'/'flex' fused (models/attention.py)
    use_checkpoint: bool = False
    decoder: str = "fusion"
    decoder_dim: int = 1024
    in_feature_key: list[str] | None = None
    fusion_keys: list[dict[str, int]] | None = None
    feature_size: tuple[int, int] | None = None
    out_size: tuple[int, int] | None = None
    head_dropout: float = 0.1
    date_encoding: bool = False  # ours: day-of-year features added to the patch embedding
    embed_kernel_t: int | None = None  # ours: temporal kernel of the patch embedding (> patch t overlaps frames)

    def __post_init__(self) -> None:
        self.patch_size = tuple(self.patch_size)
        self.depths = tuple(self.depths)
        self.num_heads = tuple(self.num_heads)
        self.window_size = tuple(self.window_size)
        self.downsample_steps = tuple(tuple(s) for s in self.downsample_steps)
        if self.feature_size is not None:
            self.feature_size = tuple(self.feature_size)
        if self.out_size is not None:
            self.out_size = tuple(self.out_size)
        if self.head not in HEADS:
            raise ValueError(f"head {self.head!r}: expected one of {HEADS}")
        if not self.sources:
            raise ValueError("a model needs at least one source")
        if self.in_feature_key is not None:
            unknown = [s for s in self.in_feature_key if s not in self.sources]
            if unknown:
                raise ValueError(f"in_feature_key names unknown sources {unknown}; sources: {list(self.sources)}")

    @property
    def decoder_sources(self) -> list[str]:
        return list(self.in_feature_key or self.sources)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = [list(x) if isinstance(x, tuple) else x for x in v]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unsupported model config keys {unknown}; supported: {sorted(known)}")
        return cls(**d)


def level_shapes(cfg: ModelConfig, frames: int) -> list[tuple[int, int]]:
    """(channels, frames) of features_list[0..L-1] and the encoder output (last entry)."""
    d = math.ceil(frames / cfg.patch_size[0])
    out = [(cfg.embed_dim, d)]
    for i in range(len(cfg.depths) - 1):
        sd = cfg.downsample_steps[i][0]
        d = math.ceil(d / sd)
        out.append((cfg.embed_dim * 2 ** (i + 1), d))
    out.append(out[-1])  # the last stage does not merge: same (C, D) as the last merge output
    return out


def level_fusions(cfg: ModelConfig) -> list[str]:
    """Temporal fusion of each level (``features_list`` then the encoder output).

    ``attention-cat``: attention pooling on every level but the encoder output, whose frames are
    concatenated: the coarsest (whole-season) tokens keep their place in the season, as in the
    release's ``cat``, while the finer levels stay independent of the series length."""
    n = len(cfg.depths) + 1
    if cfg.feature_fusion == "attention-cat":
        return ["attention"] * (n - 1) + ["cat"]
    return [cfg.feature_fusion] * n


def needs_fixed_frames(cfg: ModelConfig) -> bool:
    """Whether the model takes exactly ``num_frames`` frames (some level concatenates frames)."""
    return "cat" in level_fusions(cfg)


def fused_widths(cfg: ModelConfig, frames: int | None = None) -> list[int]:
    """Channel width of each level after temporal fusion."""
    shapes = level_shapes(cfg, frames or cfg.num_frames)
    return [c * d if mode == "cat" else c for (c, d), mode in zip(shapes, level_fusions(cfg))]
