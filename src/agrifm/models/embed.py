"""Per-source 3-D patch embedding."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PatchEmbed3D"]


class PatchEmbed3D(nn.Module):
    """(B, T, C, H, W) -> (B, E, D, H', W') with a Conv3d of kernel = stride = patch (t, h, w).

    Zero-pads W, then H, then T at the end up to multiples of the patch, as the release does.
    """

    def __init__(self, in_chans: int, embed_dim: int, patch_size: tuple[int, int, int], norm: bool = False) -> None:
        super().__init__()
        self.in_chans, self.embed_dim, self.patch_size = in_chans, embed_dim, tuple(patch_size)
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=self.patch_size, stride=self.patch_size)
        self.norm = nn.LayerNorm(embed_dim) if norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 1, 3, 4)  # (B, T, C, H, W) -> (B, C, T, H, W)
        _, _, t, h, w = x.shape
        pt, ph, pw = self.patch_size
        if w % pw:
            x = F.pad(x, (0, pw - w % pw))
        if h % ph:
            x = F.pad(x, (0, 0, 0, ph - h % ph))
        if t % pt:
            x = F.pad(x, (0, 0, 0, 0, 0, pt - t % pt))
        x = self.proj(x)
        if self.norm is not None:
            x = self.norm(x.permute(0, 2, 3, 4, 1)).permute(0, 4, 1, 2, 3)
        return x
