"""An efficient decoder (ours, not in the release): ``ModelConfig(decoder='efficient')``.

The published neck runs full-width (1024-channel) 3x3 convolutions on concatenated features at
every level: ~80 % of the model's FLOPs. This FPN-lite keeps its interface and data flow
(start from the encoder map at ``feature_size``, one upsampling path that adds each level's
features of every source, a final resize to ``out_size``) but projects each level with a 1x1
lateral conv to a narrow width (a quarter of ``decoder_dim``) and refines each level with one
full 3x3 conv at that width, so it costs a few percent of the published decoder (``agrifm info``
with ``decoder: efficient``). An earlier version refined with depthwise-separable 3x3 convs
(~1/9 the cost): on the Belgium S2 cropland transfer task it lost ~0.09 mF1 to the published
decoder over 5 seeds; the full 3x3 closed the gap (docs/belgium.md).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from agrifm.models.config import ModelConfig
from agrifm.models.decoder import resize, upsample2
from agrifm.models.layers import Conv3x3, fast_layout

__all__ = ["EfficientDecoder", "RefineConv"]


def conv_bn_relu(in_ch: int, out_ch: int) -> nn.Sequential:
    """1x1 projection, BatchNorm, ReLU."""
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True))


class RefineConv(nn.Sequential):
    """Conv3x3 (Winograd on CPU inference, as the published neck's) -> BatchNorm -> ReLU."""

    def __init__(self, channels: int) -> None:
        super().__init__(Conv3x3(channels, channels, bias=False), nn.BatchNorm2d(channels), nn.ReLU(inplace=True))


class EfficientDecoder(nn.Module):
    """Drop-in for :class:`~agrifm.models.decoder.MultiFusionNeck`: same call, same output.

    ``widths``: per level channels after temporal fusion (``fused_widths(cfg)``: features_list
    levels, then the encoder output). As in the published neck, the L = len(depths) - 1 fusion
    steps take features_list[L-1], ..., [0]. Output (B, decoder_dim, H_out, W_out).
    """

    def __init__(self, cfg: ModelConfig, widths: Sequence[int], inner: int | None = None) -> None:
        super().__init__()
        self.sources = cfg.decoder_sources
        self.widths = list(widths)
        self.feature_size = None if cfg.feature_size is None else tuple(cfg.feature_size)
        self.out_size = None if cfg.out_size is None else tuple(cfg.out_size)
        self.inner = inner or max(32, cfg.decoder_dim // 4)
        n_src = len(self.sources)
        self.top = conv_bn_relu(n_src * self.widths[-1], self.inner)
        levels = len(cfg.depths) - 1
        self.lateral = nn.ModuleList(conv_bn_relu(n_src * self.widths[i], self.inner) for i in range(levels))
        self.refine = nn.ModuleList(RefineConv(self.inner) for _ in range(levels))
        self.out_proj = conv_bn_relu(self.inner, cfg.decoder_dim)
        self.fast = True

    def _gather(self, maps: dict[str, torch.Tensor], level: int, size: Sequence[int]) -> torch.Tensor:
        """Every source's map of ``level`` resized to ``size`` and concatenated: (B, S·width, *size)."""
        parts = []
        for src in self.sources:
            f = maps[src]
            if f.shape[1] != self.widths[level]:
                raise ValueError(
                    f"efficient decoder level {level}: source {src!r} has {f.shape[1]} channels, expected "
                    f"{self.widths[level]} (with 'cat' fusion widths depend on the number of frames)"
                )
            parts.append(fast_layout(resize(f, size), self.fast))
        return torch.cat(parts, dim=1)

    def forward(
        self,
        encoder_features: dict[str, torch.Tensor],
        features: dict[str, list[torch.Tensor]],
        out_size: Sequence[int] | None = None,
    ) -> torch.Tensor:
        size = self.feature_size or tuple(encoder_features[self.sources[0]].shape[-2:])
        x = self.top(self._gather(encoder_features, -1, size))
        for level in reversed(range(len(self.lateral))):  # coarse to fine, as the published neck
            x = upsample2(x)
            lateral = self._gather({s: features[s][level] for s in self.sources}, level, x.shape[-2:])
            x = self.refine[level](x + self.lateral[level](lateral))
        x = self.out_proj(x)
        return resize(x, self.out_size or out_size or x.shape[-2:])
