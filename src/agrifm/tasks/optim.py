"""The optimiser and learning-rate schedule of every agrifm training loop (fine-tuning and
pre-training): AdamW without weight decay on norms, biases and relative-position tables, a
linear warm-up, then a cosine decay to ``min_lr`` per step (the published recipe)."""

from __future__ import annotations

import math
from typing import Any

import torch

__all__ = ["warmup_cosine", "adamw_warmup_cosine"]


def warmup_cosine(step: int, *, warmup: int, total: int, base_lr: float, min_lr: float) -> float:
    """Multiplier for LambdaLR: linear warm-up then cosine to ``min_lr`` (the published recipe)."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return (min_lr + 0.5 * (base_lr - min_lr) * (1 + math.cos(math.pi * progress))) / base_lr


def adamw_warmup_cosine(model: torch.nn.Module, *, lr: float, weight_decay: float, warmup_steps: int,
                        min_lr: float, total_steps: int) -> dict[str, Any]:
    """Lightning ``configure_optimizers`` result for ``model``'s trainable parameters; the
    warm-up is at most a tenth of ``total_steps``, ``min_lr`` at most ``lr``."""
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 or n.endswith("relative_position_bias_table") else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=lr)
    warm = min(warmup_steps, max(1, total_steps // 10))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: warmup_cosine(s, warmup=warm, total=total_steps, base_lr=lr, min_lr=min(min_lr, lr)))
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
