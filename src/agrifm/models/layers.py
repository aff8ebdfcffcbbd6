"""Small building blocks shared by the model files (no timm dependency)."""

from __future__ import annotations

import math
from typing import Any, Callable, Hashable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "DropPath", "Mlp", "trunc_normal_", "ConvBlock", "Conv3x3", "EvalCache", "winograd_conv3x3", "winograd_kernel",
    "set_fast", "fast_layout", "use_fast_convs", "geometry_cached",
]


def trunc_normal_(tensor: torch.Tensor, std: float = 0.02) -> torch.Tensor:
    """Truncated normal init in [-2std, 2std] (what Swin uses)."""
    return nn.init.trunc_normal_(tensor, mean=0.0, std=std, a=-2 * std, b=2 * std)


class DropPath(nn.Module):
    """Stochastic depth: drop the residual branch per sample; identity in eval."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Mlp(nn.Module):
    """Linear -> GELU (exact erf) -> Linear, as in Swin."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


_GEOMETRY: dict[tuple, Any] = {}


def geometry_cached(key: tuple, make: Callable[[], Any]) -> Any:
    """``make()`` once per ``key``, for tensors that depend on shapes only (indices, masks).

    A plain dict, not ``lru_cache``: compiled graphs read its entries as constants. Built outside
    inference mode, so an entry first made under ``torch.inference_mode`` can serve autograd later.
    """
    hit = _GEOMETRY.get(key)
    if hit is None:
        if len(_GEOMETRY) > 512:
            _GEOMETRY.clear()
        with torch.inference_mode(False):
            hit = _GEOMETRY[key] = make()
    return hit


class EvalCache(nn.Module):
    """Caches tensors derived from parameters (attention bias, Winograd kernels) in eval mode.

    Why: gathering/transforming them costs a pass over the weights on every call. A cached
    value is used only when no gradient can flow to the parameter, and is dropped on
    ``train()`` and when weights are loaded; keys carry the parameter's ``_version`` so an
    in-place update (optimiser step, ``copy_``) misses the cache.
    """

    def __init__(self) -> None:
        super().__init__()
        self._eval_cache: dict[Hashable, torch.Tensor] = {}

    def cached(self, param: torch.Tensor, key: Hashable, make: Callable[[], torch.Tensor]) -> torch.Tensor:
        """``make()`` or its cached value for ``key`` (derived from ``param``)."""
        if self.training or (torch.is_grad_enabled() and param.requires_grad) or torch.compiler.is_compiling():
            return make()  # (compiled graphs compute it in-graph rather than guard on a Python dict)
        key = (key, param._version, param.data_ptr(), param.device, param.dtype)
        hit = self._eval_cache.get(key)
        if hit is None:
            if len(self._eval_cache) >= 16:
                self._eval_cache.clear()
            hit = self._eval_cache[key] = make()
        return hit

    def train(self, mode: bool = True) -> "EvalCache":
        if mode:  # training changes the weights: free the memory now (eval() keeps a warm cache)
            self._eval_cache.clear()
        return super().train(mode)

    def _load_from_state_dict(self, *args, **kwargs) -> None:  # weights change: drop cached values
        self._eval_cache.clear()
        super()._load_from_state_dict(*args, **kwargs)


# Winograd F(2x2, 3x3): Y = Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A over 4x4 input tiles taken at stride 2.
_WINOGRAD_G = ((1.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0.0, 0.0, 1.0))


def winograd_kernel(weight: torch.Tensor) -> torch.Tensor:
    """(O, I, 3, 3) conv weight -> (16, O, I) transformed kernel G g Gᵀ (one GEMM with G ⊗ G)."""
    g = weight.new_tensor(_WINOGRAD_G)
    o, i = weight.shape[:2]
    return (weight.reshape(o * i, 9) @ torch.kron(g, g).T).T.contiguous().view(16, o, i)


def _input_transform(t: torch.Tensor, dim: int, n: int) -> list[torch.Tensor]:
    """Bᵀ along ``dim`` for ``n`` tiles: combinations of the taps 2i, 2i+1, 2i+2, 2i+3."""
    every_other = (slice(None),) * dim + (slice(None, None, 2),)
    r = [t.narrow(dim, i, 2 * n - 1)[every_other] for i in range(4)]
    return [r[0] - r[2], r[1] + r[2], r[2] - r[1], r[1] - r[3]]


def _output_transform(m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Aᵀ along dim 0 (4 -> 2 outputs)."""
    return m[0] + m[1] + m[2], m[1] - m[2] - m[3]


def winograd_conv3x3(x: torch.Tensor, kernel: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """3x3 convolution, stride 1, zero padding 1: (B, I, H, W) -> (B, O, H, W).

    ``kernel`` is :func:`winograd_kernel` of the weight. 16 (O×I)·(I×tiles) GEMMs replace 36
    multiply-adds per 2x2 output block with 16 (2.25x fewer); in fp32 its rounding error is
    no larger than the direct convolution's (measured against float64).
    """
    b, c, h, w = x.shape
    nh, nw = (h + 1) // 2, (w + 1) // 2
    # Batch next to the tiles so the 16 products are one plain bmm: (16, O, I) @ (16, I, B·tiles).
    x = F.pad(x.transpose(0, 1), (1, 2 * nw + 1 - w, 1, 2 * nh + 1 - h))  # (I, B, 2nh+2, 2nw+2)
    tiles = [t for rows in _input_transform(x, 2, nh) for t in _input_transform(rows, 3, nw)]
    v = torch.stack(tiles).reshape(16, c, b * nh * nw)
    m = torch.bmm(kernel, v).reshape(4, 4, -1, b, nh, nw)  # (4, 4, O, B, nh, nw)
    rows = [_output_transform(r) for r in _output_transform(m)]  # [[y00, y01], [y10, y11]], (O, B, nh, nw) each
    y = torch.stack([torch.stack([t.transpose(0, 1) for t in r], dim=-1) for r in rows], dim=3)  # (B, O, nh, 2, nw, 2)
    y = y.reshape(b, -1, 2 * nh, 2 * nw)[:, :, :h, :w]
    return y if bias is None else y + bias.to(y.dtype)[:, None, None]


class Conv3x3(nn.Conv2d, EvalCache):
    """3x3 conv, padding 1, with the same parameters (and state-dict keys) as ``nn.Conv2d``.

    ``fast`` (default) runs Winograd F(2x2,3x3) on CPU for wide layers at inference: the decoder's
    3x3 convs are most of the model's FLOPs and oneDNN has no Winograd kernel on this hardware,
    so this roughly halves their time (the transformed kernel is cached in eval: +16/9 of the
    weights' memory). On CUDA the direct call lets cuDNN choose (it has its own).
    ``fast = False`` is the plain convolution (the exact path).
    """

    winograd_min_channels = 1 << 14  # in·out below which the direct convolution is faster

    def __init__(self, in_ch: int, out_ch: int, bias: bool = True) -> None:
        super().__init__(in_ch, out_ch, 3, padding=1, bias=bias)  # nn.Conv2d, then EvalCache via the MRO
        self.fast = True

    def _winograd_dtype(self, x: torch.Tensor) -> torch.dtype | None:
        """The dtype to run Winograd in, or None for the direct convolution."""
        if not self.fast or x.device.type != "cpu" or self.in_channels * self.out_channels < self.winograd_min_channels:
            return None
        if torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad):
            return None  # training: Winograd's forward + backward measured no faster than oneDNN's
        if torch.compiler.is_compiling():
            return None  # Inductor lowers (and may prepack) the direct convolution itself
        dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
        return dtype if dtype in (torch.float32, torch.bfloat16) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = self._winograd_dtype(x)
        if dtype is None:
            return super().forward(x)
        kernel = self.cached(self.weight, ("winograd", dtype), lambda: winograd_kernel(self.weight.float()).to(dtype))
        return winograd_conv3x3(x.to(dtype), kernel, self.bias)


def use_fast_convs(module: nn.Module) -> int:
    """Route every plain 3x3/stride-1/padding-1 ``nn.Conv2d`` under ``module`` through :class:`Conv3x3`.

    The replacement shares the original Parameter objects, so state-dict keys, optimiser
    references and outputs stay the same. For modules built with ``nn.Conv2d`` (the task
    heads). Returns the number of convolutions replaced.
    """
    count = 0
    for name, child in module.named_children():
        if type(child) is nn.Conv2d and _plain_3x3(child):
            with torch.device("meta"):  # no allocation: the parameters are the original ones
                fast = Conv3x3(child.in_channels, child.out_channels, bias=child.bias is not None)
            fast.weight, fast.bias = child.weight, child.bias
            fast.train(child.training)
            setattr(module, name, fast)
            count += 1
        else:
            count += use_fast_convs(child)
    return count


def _plain_3x3(conv: nn.Conv2d) -> bool:
    return (conv.kernel_size == (3, 3) and conv.stride == (1, 1) and conv.padding == (1, 1) and conv.dilation == (1, 1)
            and conv.groups == 1 and conv.padding_mode == "zeros")


def set_fast(module: nn.Module, enabled: bool) -> None:
    """Switch every sub-module with a ``fast`` flag (``Conv3x3``, decoders) between fast and exact."""
    for m in module.modules():
        if hasattr(m, "fast"):
            m.fast = enabled


CHANNELS_LAST_DEVICES = ("cuda",)


def fast_layout(x: torch.Tensor, fast: bool) -> torch.Tensor:
    """Channels-last on CUDA when ``fast``: cuDNN's NHWC kernels (tensor cores) avoid layout
    transposes around every conv. CPU keeps NCHW (oneDNN was slower with NHWC input here)."""
    if fast and x.ndim == 4 and x.device.type in CHANNELS_LAST_DEVICES:
        return x.contiguous(memory_format=torch.channels_last)
    return x


class ConvBlock(nn.Sequential):
    """Conv3x3 -> BatchNorm -> ReLU -> Conv3x3 (indices 0..3 match the published neck keys)."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__(Conv3x3(in_ch, out_ch), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True), Conv3x3(out_ch, out_ch))


def init_weights(module: nn.Module) -> None:
    """Swin-style init for our own (non-published) models."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.Conv2d, nn.Conv3d, nn.Conv1d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                fan_in = m.weight[0].numel()
                nn.init.uniform_(m.bias, -1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in))
