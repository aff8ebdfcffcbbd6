"""Several AgriFM models of one config that decide together (a deep ensemble).

Independently trained members disagree most where a single model is least sure (rare classes,
few samples); averaging their class probabilities removes much of the seed-to-seed swing of one
model. The ensemble looks like one model to its users: same inputs, same call, and its output
``log(mean_m softmax(logits_m))`` are logits whose softmax is the members' mean probability.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch
from torch import nn

from agrifm.models.agrifm import AgriFM
from agrifm.models.config import ModelConfig

__all__ = ["Ensemble", "ENSEMBLE_HEADS", "member_state"]

# Heads whose output is one softmax over classes (a boundary model's extra channel is not).
ENSEMBLE_HEADS = ("classification", "segmentation")


def member_state(state: Mapping[str, torch.Tensor], index: int) -> dict[str, torch.Tensor]:
    """Member ``index``'s weights from an ensemble's state dict (keys ``members.{index}.*``)."""
    prefix = f"members.{index}."
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


class Ensemble(nn.Module):
    """``Ensemble([model, ...])(inputs, dates) -> log of the members' mean class probability``."""

    def __init__(self, members: Sequence[AgriFM]) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        first = members[0].config
        if first.head not in ENSEMBLE_HEADS:
            raise ValueError(f"ensembles average class probabilities; a {first.head!r} head has none")
        for i, m in enumerate(members[1:], 1):
            if m.config.to_dict() != first.to_dict():
                raise ValueError(f"ensemble member {i} has a different model config from member 0")
        self.members = nn.ModuleList(members)

    @classmethod
    def build(cls, config: ModelConfig, size: int) -> "Ensemble":
        return cls([AgriFM(ModelConfig.from_dict(config.to_dict())) for _ in range(size)])

    @property
    def config(self) -> ModelConfig:
        return self.members[0].config

    def __len__(self) -> int:
        return len(self.members)

    def forward(self, inputs: Mapping[str, torch.Tensor], dates: Mapping[str, torch.Tensor] | None = None,
                weights: torch.Tensor | None = None) -> torch.Tensor:
        logp = torch.stack([m(inputs, dates, weights=weights).float().log_softmax(dim=1) for m in self.members])
        return torch.logsumexp(logp, dim=0) - math.log(len(self.members))

    def set_attention(self, impl: str) -> "Ensemble":
        for m in self.members:
            m.set_attention(impl)
        return self

    def set_checkpointing(self, enabled: bool = True) -> "Ensemble":
        for m in self.members:
            m.set_checkpointing(enabled)
        return self

    def output_stride(self) -> int:
        return self.members[0].output_stride()
