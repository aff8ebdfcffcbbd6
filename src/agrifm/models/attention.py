"""3-D window multi-head self-attention with relative position bias.

One module, several numerically equivalent implementations (a flag, not several models):
- ``exact``: the published computation (q·scale @ kᵀ + bias + mask, softmax, @ v);
- ``sdpa``: ``scaled_dot_product_attention`` with bias and shift mask as one additive mask,
  gathered once per window shape and cached in eval mode;
- ``flex``: compiled FlexAttention with the bias table and shift mask read in a ``score_mod``
  (nothing (windows, heads, N, N)-sized is materialised);
- ``auto`` (the fast default): ``flex`` for large windows on CUDA (it wins at N = 392 tokens),
  ``sdpa`` otherwise (it wins at N = 98, and on CPU).
A ``flex`` request where FlexAttention cannot be compiled falls back to ``sdpa`` with one warning.
"""

from __future__ import annotations

import os
import shutil
import warnings
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from agrifm.models.layers import EvalCache, geometry_cached, trunc_normal_

__all__ = [
    "WindowAttention3D", "relative_position_index", "ATTENTION_IMPLS", "flex_available", "flex_unavailable_reason",
    "compiler_missing",
]

ATTENTION_IMPLS = ("exact", "sdpa", "flex", "auto")
FLEX_MIN_TOKENS = 256  # 'auto' uses FlexAttention on CUDA for windows of at least this many tokens


def _rel_index(window: tuple[int, int, int], actual: tuple[int, int, int]) -> torch.Tensor:
    wd, wh, ww = window
    coords = torch.stack(torch.meshgrid(*(torch.arange(a) for a in actual), indexing="ij")).flatten(1)
    rel = coords[:, :, None] - coords[:, None, :]  # (3, N, N): query minus key
    return (rel[0] + wd - 1) * (2 * wh - 1) * (2 * ww - 1) + (rel[1] + wh - 1) * (2 * ww - 1) + (rel[2] + ww - 1)


def relative_position_index(
    window: tuple[int, int, int], actual: tuple[int, int, int], mode: str = "published", device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Index into the bias table for a window of shape ``actual`` (≤ the configured ``window``).

    ``published`` reproduces the release: the leading N×N block of the configured window's
    index (exact when only time is clipped, not when rows/cols are); ``corrected`` indexes
    the clipped window's true offsets.
    """
    window, actual = tuple(window), tuple(actual)
    if mode == "published":
        n = actual[0] * actual[1] * actual[2]
        make = lambda: _rel_index(window, window)[:n, :n].contiguous().to(device)  # noqa: E731
    elif mode == "corrected":
        make = lambda: _rel_index(window, actual).to(device)  # noqa: E731
    else:
        raise ValueError(f"relative position mode {mode!r}: expected 'published' or 'corrected'")
    return geometry_cached(("rel_index", window, actual, mode, str(torch.device(device))), make)


# -- FlexAttention: compiled once per process; failures recorded per (device type, needs grad) ----
_FLEX: dict[object, object] = {}
# Memoised per device type in plain dicts (not lru_cache): compiled graphs read them as constants.
_COMPILER_MISSING: dict[str, str | None] = {}


def compiler_missing(device: torch.device | str) -> str | None:
    """What ``torch.compile`` (Inductor) lacks to build kernels for ``device``; None when nothing.

    CUDA kernels are generated with Triton, CPU kernels with a C++ compiler.
    """
    device_type = torch.device(device).type
    if device_type not in _COMPILER_MISSING:
        _COMPILER_MISSING[device_type] = _compiler_missing(device_type)
    return _COMPILER_MISSING[device_type]


def _compiler_missing(device_type: str) -> str | None:
    if not hasattr(torch, "compile"):
        return f"torch {torch.__version__} has no torch.compile"
    if device_type == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError:
            return "Triton is not installed"
        return None
    if device_type == "cpu":
        cxx = os.environ.get("CXX")
        if not any(shutil.which(c) for c in ([cxx] if cxx else []) + ["g++", "c++", "clang++"]):
            return "no C++ compiler (g++/clang++) on PATH"
        return None
    return f"no compile support wired up for device type {device_type!r}"


def flex_unavailable_reason(device: torch.device | str) -> str | None:
    """Why compiled FlexAttention cannot run on ``device`` (None when it can)."""
    if "import" not in _FLEX:
        try:
            from torch.nn.attention.flex_attention import flex_attention  # noqa: F401

            _FLEX["import"] = None
        except ImportError:
            _FLEX["import"] = f"torch {torch.__version__} has no FlexAttention (needs >= 2.5)"
    return _FLEX["import"] or compiler_missing(device)  # type: ignore[return-value]


def flex_available(device: torch.device | str) -> bool:
    """True when compiled FlexAttention should work on ``device``."""
    return flex_unavailable_reason(device) is None


def _compiled_flex() -> Callable:
    fn = _FLEX.get("fn")
    if fn is None:
        from torch.nn.attention.flex_attention import flex_attention

        fn = _FLEX["fn"] = torch.compile(flex_attention, dynamic=False)
    return fn  # type: ignore[return-value]


def _warn_flex_fallback(reason: str) -> None:
    if not _FLEX.get("warned"):
        _FLEX["warned"] = True
        warnings.warn(f"FlexAttention requested but unavailable ({reason}); using SDPA instead", RuntimeWarning, stacklevel=3)


class WindowAttention3D(EvalCache):
    """W-MSA over windows: (B·nW, N, C) -> (B·nW, N, C).

    ``forward`` = qkv projection, :meth:`attend`, output projection. The backbone's fast
    path calls the three parts itself so the per-token projections skip padded tokens.
    """

    def __init__(
        self,
        dim: int,
        window: tuple[int, int, int],
        num_heads: int,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        impl: str = "auto",
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

    @property
    def impl(self) -> str:
        return self._impl

    @impl.setter
    def impl(self, value: str) -> None:
        if value not in ATTENTION_IMPLS:
            raise ValueError(f"attention impl {value!r}: expected one of {ATTENTION_IMPLS}")
        self._impl = value

    def resolved_impl(self, n: int, device: torch.device) -> str:
        """The implementation a window of ``n`` tokens on ``device`` runs with."""
        impl = self._impl
        if impl == "auto":
            impl = "flex" if device.type == "cuda" and n >= FLEX_MIN_TOKENS and flex_available(device) else "sdpa"
        if impl == "flex" and (self.training and self.attn_drop.p > 0):
            impl = "sdpa"  # FlexAttention has no attention dropout
        return impl

    def _index(self, actual: tuple[int, int, int], device: torch.device) -> torch.Tensor:
        return relative_position_index(self.window, actual, self.rel_pos, device)

    def relative_bias(self, actual: tuple[int, int, int]) -> torch.Tensor:
        """(heads, N, N) bias for a window of shape ``actual``."""
        table = self.relative_position_bias_table
        idx = self._index(actual, table.device)
        n = idx.shape[0]
        return table[idx.reshape(-1)].reshape(n, n, -1).permute(2, 0, 1)

    def _additive_mask(
        self, actual: tuple[int, int, int], mask: torch.Tensor | None, mask_key: tuple | None, dtype: torch.dtype
    ) -> torch.Tensor:
        """Bias (+ shift mask) as one additive mask: (1, H, N, N) or (nW, H, N, N)."""

        def make() -> torch.Tensor:
            bias = self.relative_bias(actual)
            add = bias[None] if mask is None else bias[None] + mask[:, None].to(bias.dtype)
            return add.to(dtype)

        if mask is not None and mask_key is None:  # unknown geometry: cannot be cached
            return make()
        return self.cached(self.relative_position_bias_table, ("bias", actual, mask_key, dtype), make)

    def forward(
        self,
        x: torch.Tensor,
        actual: tuple[int, int, int],
        mask: torch.Tensor | None = None,
        mask_key: tuple | None = None,
    ) -> torch.Tensor:
        """``actual``: this window's shape; ``mask``: (nW, N, N) shift mask, ``mask_key`` its geometry."""
        return self.proj_drop(self.proj(self.attend(self.qkv(x), actual, mask, mask_key)))

    def attend(
        self, qkv: torch.Tensor, actual: tuple[int, int, int], mask: torch.Tensor | None = None, mask_key: tuple | None = None
    ) -> torch.Tensor:
        """Projected windows (B·nW, N, 3C) -> attention output (B·nW, N, C), before ``proj``."""
        bw, n, c3 = qkv.shape
        q, k, v = qkv.reshape(bw, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        impl = self.resolved_impl(n, q.device)
        if impl == "flex":
            out = self._flex(q, k, v, actual, mask, mask_key)
        elif impl == "sdpa":
            out = self._sdpa(q, k, v, actual, mask, mask_key)
        else:
            out = self._exact(q, k, v, actual, mask)
        return out.transpose(1, 2).reshape(bw, n, c3 // 3)

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

    def _sdpa(self, q, k, v, actual, mask, mask_key):
        bw, _, n, hd = q.shape
        add = self._additive_mask(actual, mask, mask_key, q.dtype)
        if mask is not None:  # (nW, H, N, N): fold windows into heads so the mask broadcasts over B
            nw = mask.shape[0]
            q, k, v = (t.reshape(bw // nw, nw * self.num_heads, n, hd) for t in (q, k, v))
            add = add.reshape(1, nw * self.num_heads, n, n)
        p = self.attn_drop.p if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=add, dropout_p=p, scale=self.scale)
        return out.reshape(bw, self.num_heads, n, hd)

    def _flex(self, q, k, v, actual, mask, mask_key):
        score_mod = self.score_mod(actual, mask, q.device)
        if torch.compiler.is_compiling():  # inside a compiled model: dynamo traces FlexAttention itself
            from torch.nn.attention.flex_attention import flex_attention

            return flex_attention(q, k, v, score_mod=score_mod, scale=self.scale)
        mode = (q.device.type, torch.is_grad_enabled() and (q.requires_grad or self.relative_position_bias_table.requires_grad))
        reason = flex_unavailable_reason(q.device) or _FLEX.get(mode)
        if reason is None:
            try:
                return _compiled_flex()(q, k, v, score_mod=score_mod, scale=self.scale)
            except Exception as err:  # noqa: BLE001 - compile/runtime failure (old GPU, no CPU backward): never crash
                reason = _FLEX[mode] = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
        _warn_flex_fallback(reason)
        return self._sdpa(q, k, v, actual, mask, mask_key)

    def score_mod(self, actual: tuple[int, int, int], mask: torch.Tensor | None, device: torch.device) -> Callable:
        """FlexAttention ``score_mod``: + table[index[q, k], head] (+ shift mask of window b mod nW)."""
        table, idx = self.relative_position_bias_table, self._index(actual, device)
        if mask is None:
            return lambda score, b, h, q, k: score + table[idx[q, k], h]
        nw = mask.shape[0]
        return lambda score, b, h, q, k: score + table[idx[q, k], h] + mask[b % nw, q, k]

    def extra_repr(self) -> str:
        return f"dim={self.dim}, window={self.window}, heads={self.num_heads}, impl={self._impl}, rel_pos={self.rel_pos}"
