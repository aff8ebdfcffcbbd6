"""Per-source 3-D patch embedding."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PatchEmbed3D", "DateEncoding"]


class PatchEmbed3D(nn.Module):
    """(B, T, C, H, W) -> (B, E, D, H', W') with a Conv3d of kernel = stride = patch (t, h, w).

    Zero-pads W, then H, then T at the end up to multiples of the patch, as the release does.
    """

    def __init__(self, in_chans: int, embed_dim: int, patch_size: tuple[int, int, int], norm: bool = False,
                 kernel_t: int | None = None) -> None:
        super().__init__()
        self.in_chans, self.embed_dim, self.patch_size = in_chans, embed_dim, tuple(patch_size)
        # kernel_t > patch t (ours, not in the release): overlapping temporal patches, a small
        # convolutional stem that sees each frame's neighbours (helps on small labelled sets).
        kt = kernel_t or self.patch_size[0]
        pad_t = (kt - self.patch_size[0]) // 2 if kt > self.patch_size[0] else 0
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=(kt, *self.patch_size[1:]), stride=self.patch_size,
                              padding=(pad_t, 0, 0))
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


class DateEncoding(nn.Module):
    """Day-of-year Fourier features -> embedding, added to each temporal patch (not in the release).

    Swin's relative bias only sees frame offsets inside a window; phenology also depends on
    *when* in the year a frame is, and gaps make frame index a poor proxy. ``dates`` are days
    since 1970-01-01, (B, T); a temporal patch gets the mean date of its frames.
    """

    def __init__(self, embed_dim: int, patch_t: int, harmonics: int = 8) -> None:
        super().__init__()
        self.patch_t = patch_t
        self.register_buffer("freqs", torch.arange(1, harmonics + 1, dtype=torch.float32) * (2 * torch.pi / 365.25), persistent=False)
        self.proj = nn.Linear(2 * harmonics, embed_dim)

    def forward(self, dates: torch.Tensor, frames: int) -> torch.Tensor:
        """(B, T) days -> (B, E, D, 1, 1) with D = ceil(T / patch_t)."""
        d = dates.float()
        if d.shape[1] % self.patch_t:  # pad with the last date, like the zero-padded frames
            d = torch.cat([d, d[:, -1:].expand(-1, self.patch_t - d.shape[1] % self.patch_t)], dim=1)
        d = d.view(d.shape[0], -1, self.patch_t).mean(-1)  # (B, D)
        angles = d[..., None] * self.freqs  # (B, D, H)
        enc = self.proj(torch.cat([angles.sin(), angles.cos()], dim=-1))  # (B, D, E)
        return enc.permute(0, 2, 1)[..., None, None]
