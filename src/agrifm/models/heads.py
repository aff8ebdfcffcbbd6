"""Task heads on top of the decoder or the pooled encoder features."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

__all__ = ["SegmentationHead", "ClassificationHead", "FractionHead"]


class SegmentationHead(nn.Module):
    """CropFCNHead: Conv3x3(E -> E/2), ReLU, Conv1x1(E/2 -> K). (B, E, H, W) -> (B, K, H, W)."""

    def __init__(self, embed_dim: int, num_classes: int) -> None:
        super().__init__()
        self.head = nn.Sequential(
            nn.Conv2d(embed_dim, embed_dim // 2, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(embed_dim // 2, num_classes, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)


class ClassificationHead(nn.Module):
    """Point / parcel classification: pool every level's map over space, concatenate, classify.

    Input: a list of (B, C_i, H_i, W_i) maps (all sources, all levels); optional (B, H, W)
    ``weights`` restrict the pooling to a parcel (mask) -- otherwise a plain spatial mean.
    """

    def __init__(self, in_widths: Sequence[int], num_classes: int, hidden: int | None = None, dropout: float = 0.1) -> None:
        super().__init__()
        width = int(sum(in_widths))
        self.norm = nn.LayerNorm(width)
        hidden = hidden or max(64, min(512, width))
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, num_classes))

    def forward(self, maps: Sequence[torch.Tensor], weights: torch.Tensor | None = None) -> torch.Tensor:
        pooled = []
        for m in maps:
            if weights is None:
                pooled.append(m.mean(dim=(-2, -1)))
            else:
                w = nn.functional.interpolate(weights[:, None].float(), size=m.shape[-2:], mode="area")
                pooled.append((m * w).sum(dim=(-2, -1)) / w.sum(dim=(-2, -1)).clamp_min(1e-6))
        return self.mlp(self.norm(torch.cat(pooled, dim=1)))


class FractionHead(nn.Module):
    """Land-cover fractions per target cell: softmax over classes. (B, C, h, w) -> (B, K, gh, gw)."""

    def __init__(self, in_dim: int, num_classes: int) -> None:
        super().__init__()
        self.proj = nn.Sequential(nn.Conv2d(in_dim, in_dim, 1), nn.GELU(), nn.Conv2d(in_dim, num_classes, 1))

    def forward(self, x: torch.Tensor, grid: Sequence[int] | None = None) -> torch.Tensor:
        if grid is not None and tuple(x.shape[-2:]) != tuple(grid):
            x = nn.functional.adaptive_avg_pool2d(x, tuple(grid))
        return self.proj(x).softmax(dim=1)
