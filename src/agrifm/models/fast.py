"""Put a model on its fastest numerically equivalent path for a device, in one call.

    fast = configure_fast_path(model, "cuda", precision="bf16", compile=True)
    logits = fast(inputs)                  # autocast + (compiled) forward
    with fast.autocast():                  # training: same context around the loss
        loss = criterion(fast(inputs), target)

What is switched on (each piece is also a flag of its module; ``model.set_attention('exact')``
switches them all back to the published computation):
- attention ``auto``: compiled FlexAttention for large windows on CUDA, SDPA otherwise;
- fused window copies and projections on real tokens only (backbone);
- Winograd 3x3 convolutions on CPU, channels-last on CUDA (decoder; the head's 3x3 conv too);
- optional bf16 autocast and ``torch.compile``.
A request the hardware or this torch cannot honour (CUDA, bf16, FlexAttention, compile) falls
back with one warning naming what is missing; it never crashes or silently changes results.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from agrifm.models.attention import compiler_missing, flex_unavailable_reason
from agrifm.models.layers import use_fast_convs

__all__ = ["FastPath", "configure_fast_path", "bf16_unavailable_reason", "PRECISIONS"]

PRECISIONS = ("fp32", "bf16")


def _fallback(what: str, reason: str, instead: str) -> str:
    msg = f"{what} requested but unavailable ({reason}); using {instead}"
    warnings.warn(msg, RuntimeWarning, stacklevel=3)
    return msg


def bf16_unavailable_reason(device: torch.device) -> str | None:
    """Why bf16 autocast would be slow or unsupported on ``device`` (None when it is fine)."""
    if device.type == "cuda":
        return None if torch.cuda.is_bf16_supported() else f"{torch.cuda.get_device_name(device)} has no bf16 support"
    if device.type == "cpu":
        try:
            ok = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
        except (AttributeError, RuntimeError):
            ok = False
        return None if ok else "this CPU lacks AVX512-BF16/AMX (or oneDNN is missing): bf16 would be emulated"
    return f"bf16 autocast is not set up for device type {device.type!r}"


def _resolve_device(device: torch.device | str, notes: list[str]) -> torch.device:
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        notes.append(_fallback("CUDA", f"torch {torch.__version__} sees no CUDA device", "the CPU"))
        return torch.device("cpu")
    return device


@dataclass
class FastPath:
    """A configured model: call it like the model; :meth:`autocast` wraps training code."""

    model: nn.Module
    device: torch.device
    precision: str
    attention: str
    compiled: bool
    fallbacks: list[str] = field(default_factory=list)
    _compiled_forward: Callable | None = None

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast on the device when ``precision == 'bf16'``, else a no-op context."""
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with self.autocast():
            if self._compiled_forward is None:
                return self.model(*args, **kwargs)
            try:
                return self._compiled_forward(*args, **kwargs)
            except Exception as err:  # noqa: BLE001 - a compile failure must not end the run
                out = self.model(*args, **kwargs)  # a genuine input error raises here, as without compile
                self._compiled_forward, self.compiled = None, False
                self.fallbacks.append(_fallback("torch.compile", f"{type(err).__name__}: {_first_line(err)}", "eager mode"))
                return out


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else "no message"


def configure_fast_path(
    model: nn.Module,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
    compile: bool = False,
    attention: str = "auto",
) -> FastPath:
    """Move ``model`` to ``device`` and switch on every fast piece the device supports.

    ``precision``: ``fp32`` (outputs equal to the exact path within 1e-4) or ``bf16``
    (autocast; see tests/test_fast_paths.py for the agreement it keeps). ``attention``:
    ``auto``/``sdpa``/``flex`` (``exact`` is accepted and gives the published computation).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: expected one of {PRECISIONS}")
    notes: list[str] = []
    device = _resolve_device(device, notes)
    if precision == "bf16":
        reason = bf16_unavailable_reason(device)
        if reason:
            notes.append(_fallback("bf16", reason, "fp32"))
            precision = "fp32"
    flex_reason = flex_unavailable_reason(device)  # also memoises it before any compiled trace reads it
    if attention == "flex" and flex_reason:
        notes.append(_fallback("FlexAttention", flex_reason, "SDPA"))
        attention = "sdpa"
    model.to(device)
    if hasattr(model, "head"):
        use_fast_convs(model.head)
    if hasattr(model, "set_attention"):
        model.set_attention(attention)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN time its conv algorithms once
    compiled = None
    if compile:
        reason = compiler_missing(device)
        if reason:
            notes.append(_fallback("torch.compile", reason, "eager mode"))
        else:
            compiled = torch.compile(model)
    return FastPath(model, device, precision, attention, compiled is not None, notes, compiled)
