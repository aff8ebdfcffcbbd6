"""Temporal fusion of stage features and the multi-source, multi-stage fusion neck.

``cat`` (published) folds time into channels, (B, C, D, H, W) -> (B, C·D, H, W), so decoder
widths depend on the number of frames. ``mean`` and ``attention`` pool each stage's time
axis instead, so one set of weights serves any season length (early-season inputs).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from agrifm.models.layers import ConvBlock, fast_layout

__all__ = ["TemporalFusion", "MultiFusionNeck", "TEMPORAL_FUSIONS", "resize", "upsample2"]

TEMPORAL_FUSIONS = ("cat", "mean", "attention")  # per level; the config's "attention-cat" mixes them (level_fusions)


class TemporalFusion(nn.Module):
    """(B, C, D, H, W) -> (B, C', H, W)."""

    def __init__(self, mode: str, channels: int) -> None:
        super().__init__()
        if mode not in TEMPORAL_FUSIONS:
            raise ValueError(f"feature_fusion {mode!r}: expected one of {TEMPORAL_FUSIONS}")
        self.mode = mode
        # A per-stage learned score over frames: softmax over D weights each frame's features.
        self.score = nn.Linear(channels, 1) if mode == "attention" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, d, h, w = x.shape
        if self.mode == "cat":
            return x.reshape(b, c * d, h, w)  # channel index c·D + d, as released
        if self.mode == "mean":
            return x.mean(2)
        weights = self.score(x.permute(0, 2, 3, 4, 1)).softmax(dim=1)  # (B, D, H, W, 1)
        return (x * weights.permute(0, 4, 1, 2, 3)).sum(2)


def resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear, align_corners False (every resize of the published neck); no-op at the same size."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def upsample2(x: torch.Tensor) -> torch.Tensor:
    """×2 bilinear upsampling (scale_factor 2, align_corners False)."""
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


class MultiFusionNeck(nn.Module):
    """The published "versatile decoder".

    Encoder features of every source are resized to ``feature_size`` and fused (``in_conv``);
    then each entry of ``fusion_keys`` upsamples ×2 and fuses that level's features of the
    named sources (entry i takes ``features_list[L-1-i]``); ``out_conv`` and a final resize to
    ``out_size``. ``feature_size``/``out_size`` of None follow the input (our default).
    ``encoder_widths`` None is the published rule (every width from the config): ``in_conv`` is
    the identity for one source and fuses ``len(in_feature_key)·embed_dim`` channels otherwise;
    given, ``in_conv`` fuses those widths and is the identity only for one source already at
    ``embed_dim``.
    ``fast`` (default): channels-last on CUDA and Winograd 3x3 convs on CPU (see ``Conv3x3``);
    ``fast = False`` (via ``AgriFM.set_attention('exact')``) is the published computation.
    """

    def __init__(
        self,
        embed_dim: int,
        in_feature_key: Sequence[str],
        encoder_widths: dict[str, int] | None,
        fusion_keys: Sequence[dict[str, int]],
        feature_size: Sequence[int] | None = None,
        out_size: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.in_feature_key = list(in_feature_key)
        self.fusion_keys = [dict(k) for k in fusion_keys]
        self.feature_size = None if feature_size is None else tuple(feature_size)
        self.out_size = None if out_size is None else tuple(out_size)
        if encoder_widths is None:
            self.in_widths = {s: embed_dim for s in self.in_feature_key}
        else:
            self.in_widths = {s: encoder_widths[s] for s in self.in_feature_key}
        in_width = sum(self.in_widths.values())
        if len(self.in_feature_key) == 1 and in_width == embed_dim:
            self.in_conv: nn.Module = nn.Identity()
        else:
            self.in_conv = ConvBlock(in_width, embed_dim)
        self.fusion_list = nn.ModuleList(ConvBlock(embed_dim + sum(k.values()), embed_dim) for k in self.fusion_keys)
        self.out_conv = ConvBlock(embed_dim, embed_dim)
        self.fast = True

    def forward(
        self,
        encoder_features: dict[str, torch.Tensor],
        features: dict[str, list[torch.Tensor]],
        out_size: Sequence[int] | None = None,
    ) -> torch.Tensor:
        for src, width in self.in_widths.items():
            if encoder_features[src].shape[1] != width:
                raise ValueError(
                    f"decoder input: source {src!r} has {encoder_features[src].shape[1]} channels, the decoder takes {width} "
                    "(with 'cat' fusion widths depend on the number of frames)"
                )
        first = encoder_features[self.in_feature_key[0]]
        size = self.feature_size or tuple(first.shape[-2:])
        x = torch.cat([fast_layout(resize(encoder_features[s], size), self.fast) for s in self.in_feature_key], dim=1)
        x = self.in_conv(x)
        n = len(self.fusion_keys)
        for i, (keys, conv) in enumerate(zip(self.fusion_keys, self.fusion_list)):
            x = upsample2(x)
            level = n - 1 - i
            parts = [x]
            for src, width in keys.items():
                f = features[src][level]
                if f.shape[1] != width:
                    raise ValueError(
                        f"decoder level {level}: source {src!r} has {f.shape[1]} channels, config says {width} "
                        "(with 'cat' fusion widths depend on the number of frames)"
                    )
                parts.append(fast_layout(resize(f, x.shape[-2:]), self.fast))
            x = conv(torch.cat(parts, dim=1))
        x = self.out_conv(x)
        return resize(x, self.out_size or out_size or x.shape[-2:])
