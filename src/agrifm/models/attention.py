"""3-D window multi-head self-attention with relative position bias.

Two numerically equivalent paths (a flag, not two models):
- ``exact``: the published computation (q·scale @ kᵀ + bias + mask, softmax, @ v);
- ``sdpa``: ``torch.nn.functional.scaled_dot_product_attention`` with bias and shift mask as
  one additive mask, gathered once per window shape and cached in eval mode.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

from agrifm.models.layers import trunc_normal_

__all__ = ["WindowAttention3D", "relative_position_index"]

ATTENTION_IMPLS = ("exact", "sdpa")


@lru_cache(maxsize=64)
def _rel_index_cpu(window: tuple[int, int, int], actual: tuple[int, int, int]) -> torch.Tensor:
    wd, wh, ww = window
    coords = torch.stack(torch.meshgrid(*(torch.arange(a) for a in actual), indexing="ij")).flatten(1)
    rel = coords[:, :, None] - coords[:, None, :]  # (3, N, N): query minus key
    return (rel[0] + wd - 1) * (2 * wh - 1) * (2 * ww - 1) + (rel[1] + wh - 1) * (2 * ww - 1) + (rel[2] + ww - 1)


def relative_position_index(
    window: tuple[int, int, int], actual: tuple[int, int, int], mode: str = "published"
) -> torch.Tensor:
    """Index into the bias table for a window of shape ``actual`` (≤ the configured ``window``).

    ``published`` reproduces the release: the leading N×N block of the configured window's
    index (exact when only time is clipped, not when rows/cols are); ``corrected`` indexes
    the clipped window's true offsets.
    """
    if mode == "published":
        n = actual[0] * actual[1] * actual[2]
        return _rel_index_cpu(tuple(window), tuple(window))[:n, :n]
    if mode == "corrected":
        return _rel_index_cpu(tuple(window), tuple(actual))
    raise ValueError(f"relative position mode {mode!r}: expected 'published' or 'corrected'")


class WindowAttention3D(nn.Module):
    """W-MSA over windows: (B·nW, N, C) -> (B·nW, N, C)."""

    def __init__(
        self,
        dim: int,
        window: tuple[int, int, int],
        num_heads: int,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        impl: str = "sdpa",
        rel_pos: str = "published",
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention dim {dim} is not divisible by {num_heads} heads")
        self.dim, self.window, self.num_heads = dim, tuple(window), num_heads
        self.head_dim = dim // num_heads
        self.scale = qk_scale or self.head_dim**-0.5
        wd, wh, ww = self.window
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * wd - 1) * (2 * wh - 1) * (2 * ww - 1), num_heads))
        trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.impl = impl
        self.rel_pos = rel_pos
        self._bias_cache: dict[tuple, torch.Tensor] = {}

    @property
    def impl(self) -> str:
        return self._impl

    @impl.setter
    def impl(self, value: str) -> None:
        if value not in ATTENTION_IMPLS:
            raise ValueError(f"attention impl {value!r}: expected one of {ATTENTION_IMPLS}")
        self._impl = value

    def train(self, mode: bool = True) -> "WindowAttention3D":
        self._bias_cache.clear()
        return super().train(mode)

    def _load_from_state_dict(self, *args, **kwargs) -> None:  # weights change: drop cached bias
        self._bias_cache.clear()
        super()._load_from_state_dict(*args, **kwargs)

    def relative_bias(self, actual: tuple[int, int, int]) -> torch.Tensor:
        """(heads, N, N) bias for a window of shape ``actual``."""
        table = self.relative_position_bias_table
        idx = relative_position_index(self.window, actual, self.rel_pos).to(table.device)
        n = idx.shape[0]
        return table[idx.reshape(-1)].reshape(n, n, -1).permute(2, 0, 1)

    def _additive_mask(
        self, actual: tuple[int, int, int], mask: torch.Tensor | None, mask_key: tuple | None, dtype: torch.dtype
    ) -> torch.Tensor:
        """Bias (+ shift mask) as one additive mask: (1, H, N, N) or (nW, H, N, N)."""
        key = (actual, mask_key if mask is not None else None, dtype, str(self.relative_position_bias_table.device))
        cacheable = not torch.is_grad_enabled() or not self.relative_position_bias_table.requires_grad
        cacheable = cacheable and not self.training and (mask is None or mask_key is not None)
        if cacheable:
            key = key + (self.relative_position_bias_table._version,)
            hit = self._bias_cache.get(key)
            if hit is not None:
                return hit
        bias = self.relative_bias(actual)
        add = bias[None] if mask is None else bias[None] + mask[:, None].to(bias.dtype)
        add = add.to(dtype)
        if cacheable:
            if len(self._bias_cache) > 16:
                self._bias_cache.clear()
            self._bias_cache[key] = add
        return add

    def forward(
        self,
        x: torch.Tensor,
        actual: tuple[int, int, int],
        mask: torch.Tensor | None = None,
        mask_key: tuple | None = None,
    ) -> torch.Tensor:
        """``actual``: this window's shape; ``mask``: (nW, N, N) shift mask, ``mask_key`` its geometry."""
        bw, n, c = x.shape
        qkv = self.qkv(x).reshape(bw, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B·nW, heads, N, hd)
        if self._impl == "exact":
            out = self._exact(q, k, v, actual, mask)
        else:
            add = self._additive_mask(actual, mask, mask_key, q.dtype)
            if mask is not None:  # (nW, H, N, N): fold windows into heads so the mask broadcasts over B
                nw = mask.shape[0]
                q, k, v = (t.reshape(bw // nw, nw * self.num_heads, n, self.head_dim) for t in (q, k, v))
                add = add.reshape(1, nw * self.num_heads, n, n)
            p = self.attn_drop.p if self.training else 0.0
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=add, dropout_p=p, scale=self.scale)
            out = out.reshape(bw, self.num_heads, n, self.head_dim)
        out = out.transpose(1, 2).reshape(bw, n, c)
        return self.proj_drop(self.proj(out))

    def _exact(self, q, k, v, actual, mask):
        bw, _, n, _ = q.shape
        attn = (q * self.scale) @ k.transpose(-2, -1)
        attn = attn + self.relative_bias(actual)[None]
        if mask is not None:
            nw = mask.shape[0]
            attn = attn.view(bw // nw, nw, self.num_heads, n, n) + mask[None, :, None].to(attn.dtype)
            attn = attn.view(-1, self.num_heads, n, n)
        attn = self.attn_drop(attn.softmax(dim=-1))
        return attn @ v

    def extra_repr(self) -> str:
        return f"dim={self.dim}, window={self.window}, heads={self.num_heads}, impl={self._impl}, rel_pos={self.rel_pos}"
