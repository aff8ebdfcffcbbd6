"""Rank/world size and training precision: one answer for every entry point."""

from __future__ import annotations

import pytest
import torch

from agrifm.runtime import cpu_description, rank_world, trainer_precision


def test_rank_world_from_arguments_then_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert rank_world() == (0, 1)
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "4")  # torchrun, before any process group
    assert rank_world() == (2, 4) and rank_world(1, 3) == (1, 3) and rank_world(world_size=3) == (2, 3)
    with pytest.raises(ValueError, match="rank 4 is not in"):
        rank_world(4)


def test_trainer_precision(monkeypatch: pytest.MonkeyPatch) -> None:
    assert trainer_precision("16-mixed") == "16-mixed"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert trainer_precision() == "32-true"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert trainer_precision("auto") == "bf16-mixed"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert trainer_precision() == "16-mixed"


def test_cpu_description_names_the_kernels_torch_uses() -> None:
    # Benchmark JSON records it: training results differ in the last digits between machines
    # whose CPU kernels differ (AVX2 vs AVX512), so the record must say which ones ran.
    text = cpu_description()
    capability = torch.backends.cpu.get_cpu_capability()
    assert text.endswith(f"torch CPU capability {capability}")
    assert text.split(",")[0].strip()  # a CPU name before the capability
