"""The one optimiser + schedule of fine-tuning and pre-training."""

from __future__ import annotations

import pytest
import torch

from agrifm.tasks.optim import adamw_warmup_cosine


def test_adamw_groups_and_warmup_cosine_schedule() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    cfg = adamw_warmup_cosine(model, lr=1e-3, weight_decay=0.05, warmup_steps=1000, min_lr=1e-5, total_steps=100)
    opt, sched = cfg["optimizer"], cfg["lr_scheduler"]["scheduler"]
    assert cfg["lr_scheduler"]["interval"] == "step"
    decay, no_decay = opt.param_groups
    assert [p.ndim for p in decay["params"]] == [2] and decay["weight_decay"] == 0.05
    assert len(no_decay["params"]) == 3 and no_decay["weight_decay"] == 0.0  # bias, norm weight and bias
    lrs = []
    for _ in range(120):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:10] == pytest.approx([1e-3 * (s + 1) / 10 for s in range(10)])  # warm-up: a tenth of 100 steps
    assert lrs[10] == pytest.approx(1e-3) and lrs[55] == pytest.approx((1e-3 + 1e-5) / 2)
    assert lrs[100:] == pytest.approx([1e-5] * 20)  # stays at min_lr after the last step
