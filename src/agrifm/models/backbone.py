"""Video Swin Transformer with synchronised spatio-temporal downsampling.

Each stage runs (shifted) 3-D window attention, then patch merging halves frames, rows and
columns together (frames by a temporal mean), so deeper stages see coarser space *and* time.
Feature maps are channels-last inside a stage: (B, D, H, W, C).

Blocks run the published data movement (pad, roll, partition, reverse, roll back, crop) on the
exact path; the fast path does pad+roll+partition and reverse+roll+crop as one cached gather
each, and applies the per-token qkv/output projections to real tokens only (a padded token's
qkv is the projection bias: a single appended zero token stands for all of them).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from agrifm.models.attention import WindowAttention3D
from agrifm.models.layers import DropPath, Mlp, geometry_cached

__all__ = ["SwinTransformer3D", "PatchMerging3D", "SwinBlock3D", "SwinStage", "clip_window"]

Triple = tuple[int, int, int]


def clip_window(size: Sequence[int], window: Triple, shift: Triple) -> tuple[Triple, Triple]:
    """Axes no larger than the window use the feature size as window and no shift."""
    w, s = list(window), list(shift)
    for i in range(3):
        if size[i] <= window[i]:
            w[i], s[i] = size[i], 0
    return tuple(w), tuple(s)


def padded_size(size: Sequence[int], window: Triple) -> Triple:
    """Each axis rounded up to a multiple of the window (where the release zero-pads)."""
    return tuple(a + (-a) % wa for a, wa in zip(size, window))


def window_partition(x: torch.Tensor, w: Triple) -> torch.Tensor:
    """(B, D, H, W, C) -> (B·nW, wd·wh·ww, C), windows ordered (d, h, w)."""
    b, d, h, ww, c = x.shape
    x = x.view(b, d // w[0], w[0], h // w[1], w[1], ww // w[2], w[2], c)
    return x.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(-1, w[0] * w[1] * w[2], c)


def window_reverse(windows: torch.Tensor, w: Triple, b: int, d: int, h: int, ww: int) -> torch.Tensor:
    """(B·nW, N, C) -> (B, D, H, W, C)."""
    x = windows.view(b, d // w[0], h // w[1], ww // w[2], w[0], w[1], w[2], -1)
    return x.permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(b, d, h, ww, -1)


def _shift_mask(dp: int, hp: int, wp: int, window: Triple, shift: Triple) -> torch.Tensor:
    img = torch.zeros((1, dp, hp, wp, 1))
    cnt = 0
    # The release labels regions with Python slices, so a zero shift gives slice(-0, None)
    # == the whole axis (one region); we keep the same slices to match it exactly.
    for sd in (slice(-window[0]), slice(-window[0], -shift[0]), slice(-shift[0], None)):
        for sh in (slice(-window[1]), slice(-window[1], -shift[1]), slice(-shift[1], None)):
            for sw in (slice(-window[2]), slice(-window[2], -shift[2]), slice(-shift[2], None)):
                img[:, sd, sh, sw, :] = cnt
                cnt += 1
    win = window_partition(img, window).squeeze(-1)  # (nW, N)
    mask = win[:, None, :] - win[:, :, None]
    return mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)


def _window_order(d: int, h: int, w: int, window: Triple, shift: Triple) -> tuple[torch.Tensor, torch.Tensor]:
    """(gather (nW·N,), scatter (D·H·W,)): token indices that pad, roll and partition in one copy.

    ``gather`` indexes the D·H·W tokens plus one zero token (index D·H·W) standing for every pad
    position, in the order of ``window_partition(roll(pad(x), -shift))``; ``scatter`` gives each
    real token's position in that order (reverse + roll back + crop).
    """
    dp, hp, wp = padded_size((d, h, w), window)
    grid = torch.full((dp, hp, wp), d * h * w, dtype=torch.long)
    grid[:d, :h, :w] = torch.arange(d * h * w).view(d, h, w)
    if any(shift):
        grid = torch.roll(grid, shifts=(-shift[0], -shift[1], -shift[2]), dims=(0, 1, 2))
    gather = window_partition(grid[None, ..., None], window).reshape(-1)
    real = gather < d * h * w
    scatter = torch.empty(d * h * w, dtype=torch.long)
    scatter[gather[real]] = torch.arange(gather.numel())[real]
    return gather, scatter


def shift_mask(dp: int, hp: int, wp: int, window: Triple, shift: Triple, device: torch.device) -> tuple[torch.Tensor, tuple]:
    """Shift-window attention mask (nW, N, N) on ``device`` and its geometry key."""
    key = ("shift_mask", dp, hp, wp, window, shift, str(device))
    return geometry_cached(key, lambda: _shift_mask(dp, hp, wp, window, shift).to(device)), key


def window_order(d: int, h: int, w: int, window: Triple, shift: Triple, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_window_order` on ``device``."""
    key = ("window_order", d, h, w, window, shift, str(device))
    return geometry_cached(key, lambda: tuple(t.to(device) for t in _window_order(d, h, w, window, shift)))


class SwinBlock3D(nn.Module):
    """x + DropPath(W-MSA(LN(x))); x + DropPath(MLP(LN(x))). Input (B, D, H, W, C)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window: Triple,
        shift: Triple,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        attn_impl: str = "auto",
        rel_pos: str = "published",
    ) -> None:
        super().__init__()
        self.window, self.shift = tuple(window), tuple(shift)
        self.norm1 = nn.LayerNorm(dim, eps=1e-5)
        self.attn = WindowAttention3D(dim, self.window, num_heads, qkv_bias, qk_scale, attn_drop, drop, attn_impl, rel_pos)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=1e-5)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)

    def _attend(self, x: torch.Tensor) -> torch.Tensor:
        return self._attend_exact(x) if self.attn.impl == "exact" else self._attend_fast(x)

    def _attend_fast(self, x: torch.Tensor) -> torch.Tensor:
        b, d, h, w, c = x.shape
        win, shift = clip_window((d, h, w), self.window, self.shift)
        gather, scatter = window_order(d, h, w, win, shift, x.device)
        n = win[0] * win[1] * win[2]
        x = self.norm1(x).reshape(b, d * h * w, c)
        if gather.numel() > d * h * w:  # padded: one zero token (its qkv is the bias) for all pad positions
            x = F.pad(x, (0, 0, 0, 1))
        qkv = self.attn.qkv(x).index_select(1, gather)  # (B, nW·N, 3C): pad + roll + partition
        mask, key = shift_mask(*padded_size((d, h, w), win), win, shift, x.device) if any(shift) else (None, None)
        out = self.attn.attend(qkv.view(-1, n, 3 * c), win, mask, key)  # (B·nW, N, C)
        out = out.view(b, -1, c).index_select(1, scatter)  # (B, D·H·W, C): reverse + roll back + crop
        return self.attn.proj_drop(self.attn.proj(out)).view(b, d, h, w, c)

    def _attend_exact(self, x: torch.Tensor) -> torch.Tensor:
        """The published sequence: LN, pad, roll, partition, attention, reverse, roll back, crop."""
        b, d, h, w, c = x.shape
        win, shift = clip_window((d, h, w), self.window, self.shift)
        x = self.norm1(x)
        dp, hp, wp = padded_size((d, h, w), win)
        pd, ph, pw = dp - d, hp - h, wp - w
        if pd or ph or pw:  # padded tokens are not masked: they act as keys/values (as released)
            x = F.pad(x, (0, 0, 0, pw, 0, ph, 0, pd))
        shifted = any(shift)
        if shifted:
            x = torch.roll(x, shifts=(-shift[0], -shift[1], -shift[2]), dims=(1, 2, 3))
            mask, key = shift_mask(dp, hp, wp, win, shift, x.device)
        else:
            mask, key = None, None
        out = self.attn(window_partition(x, win), win, mask, key)
        x = window_reverse(out, win, b, dp, hp, wp)
        if shifted:
            x = torch.roll(x, shifts=shift, dims=(1, 2, 3))
        if pd or ph or pw:
            x = x[:, :d, :h, :w].contiguous()
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self._attend(x))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging3D(nn.Module):
    """Synchronised downsampling (B, D, H, W, C) -> (B, D/sd, H/sh, W/sw, 2C).

    Spatial 2×2 phases are concatenated (4C), time is averaged over ``sd`` frames (zero padding
    at the end counts in the mean) or subsampled; then LayerNorm(4C) and Linear(4C -> 2C).
    ``pad="published"`` pads odd H/W whatever the step (the release); ``"minimal"`` pads an
    axis only when its step is 2.
    """

    def __init__(self, dim: int, step: Triple = (2, 2, 2), mean_frame_down: bool = True, pad: str = "published") -> None:
        super().__init__()
        if pad not in ("published", "minimal"):
            raise ValueError(f"patch merging pad {pad!r}: expected 'published' or 'minimal'")
        self.step, self.mean_frame_down, self.pad = tuple(step), mean_frame_down, pad
        self.norm = nn.LayerNorm(4 * dim, eps=1e-5)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sd, sh, sw = self.step
        _, d, h, w, _ = x.shape
        ph, pw = h % 2, w % 2
        if self.pad == "minimal":
            ph, pw = ph * (sh == 2), pw * (sw == 2)
        if ph or pw:
            x = F.pad(x, (0, 0, 0, pw, 0, ph))
        h1, w1 = (1 if sh == 2 else 0), (1 if sw == 2 else 0)
        phases = [x[:, :, hh::sh, ww::sw] for hh, ww in ((0, 0), (h1, 0), (0, w1), (h1, w1))]
        x = torch.cat(phases, dim=-1)
        if sd > 1:
            if self.mean_frame_down:
                if d % sd:
                    x = F.pad(x, (0, 0, 0, 0, 0, 0, 0, sd - d % sd))
                b, dd, hh, ww, c = x.shape
                x = x.view(b, dd // sd, sd, hh, ww, c).mean(2)
            else:
                x = x[:, ::sd]
        return self.reduction(self.norm(x))


class SwinStage(nn.Module):
    """``depth`` blocks alternating no shift / half-window shift, then optional merging."""

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window: Triple,
        drop_path: Sequence[float],
        downsample: nn.Module | None,
        use_checkpoint: bool = False,
        **block_kw,
    ) -> None:
        super().__init__()
        shift = tuple(i // 2 for i in window)
        self.blocks = nn.ModuleList(
            SwinBlock3D(dim, num_heads, window, (0, 0, 0) if i % 2 == 0 else shift, drop_path=drop_path[i], **block_kw)
            for i in range(depth)
        )
        self.downsample = downsample
        self.use_checkpoint = use_checkpoint

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            if self.use_checkpoint and self.training and torch.is_grad_enabled():
                x = checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
        if self.downsample is not None:
            x = self.downsample(x)
        return x


class SwinTransformer3D(nn.Module):
    """The AgriFM backbone (no patch embedding: one per source lives outside).

    ``forward(x (B, E, D, H, W))`` returns the list of 5-D maps (B, C, D, H, W):
    [stage-0 output after merging, stage-1 ..., stage-2 ..., final-normed last stage].
    """

    def __init__(
        self,
        embed_dim: int = 128,
        depths: Sequence[int] = (2, 2, 18, 2),
        num_heads: Sequence[int] = (4, 8, 16, 32),
        window_size: Triple = (8, 7, 7),
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.2,
        downsample_steps: Sequence[Triple] = ((2, 2, 2),) * 4,
        mean_frame_down: bool = True,
        merge_pad: str = "published",
        attn_impl: str = "auto",
        rel_pos: str = "published",
        use_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        if len(depths) != len(num_heads):
            raise ValueError(f"depths {list(depths)} and num_heads {list(num_heads)} differ in length")
        if len(downsample_steps) < len(depths) - 1:
            raise ValueError(f"need {len(depths) - 1} downsample steps, got {len(downsample_steps)}")
        self.num_layers = len(depths)
        self.embed_dim = embed_dim
        self.pos_drop = nn.Dropout(drop_rate)
        total = sum(depths)
        dpr = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        self.layers = nn.ModuleList()
        for i, depth in enumerate(depths):
            dim = embed_dim * 2**i
            last = i == self.num_layers - 1
            merge = None if last else PatchMerging3D(dim, tuple(downsample_steps[i]), mean_frame_down, merge_pad)
            self.layers.append(SwinStage(
                dim, depth, num_heads[i], tuple(window_size), dpr[sum(depths[:i]) : sum(depths[: i + 1])], merge,
                use_checkpoint, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, qk_scale=qk_scale, drop=drop_rate,
                attn_drop=attn_drop_rate, attn_impl=attn_impl, rel_pos=rel_pos,
            ))
        self.num_features = embed_dim * 2 ** (self.num_layers - 1)
        self.norm = nn.LayerNorm(self.num_features, eps=1e-5)

    def set_attention(self, impl: str) -> None:
        for m in self.modules():
            if isinstance(m, WindowAttention3D):
                m.impl = impl

    def set_checkpointing(self, enabled: bool) -> None:
        for layer in self.layers:
            layer.use_checkpoint = enabled

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.pos_drop(x).permute(0, 2, 3, 4, 1)  # (B, C, D, H, W) -> (B, D, H, W, C)
        outs = []
        for i, layer in enumerate(self.layers):
            x = layer(x.contiguous())
            if i == self.num_layers - 1:
                x = self.norm(x)
            outs.append(x.permute(0, 4, 1, 2, 3))
        return outs
