"""The pre-training model: one shared Video Swin backbone, a patch embedding per source, a fraction head.

Sources are not paired in pre-training (each batch holds one source), so every source runs
through the *same* backbone; only the patch embedding (and the optional date encoding) is per
source. Module names make the state dict map 1:1 onto the published pre-trained layout
(``backbone.*`` + ``<SRC>_patch_emd.*``), so :func:`published_state_dict` is a rename-free copy.

Heavy libraries stay out: this module needs torch and the model code only.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from agrifm.compat.checkpoint import encoder_to_published
from agrifm.models.agrifm import AgriFM, SourceEncoder
from agrifm.models.config import ModelConfig
from agrifm.models.embed import DateEncoding, PatchEmbed3D
from agrifm.models.heads import FractionHead
from agrifm.models.layers import init_weights

__all__ = [
    "PretrainModel",
    "fraction_l1",
    "fraction_ce",
    "ema_update",
    "published_state_dict",
    "to_agrifm",
    "from_agrifm",
    "load_pretrain_model",
]

EMBED_SUFFIX = "_patch_emd"
DATE_SUFFIX = "_date_emd"


class PretrainModel(nn.Module):
    """``model(source, x (B, T, C, H, W), dates (B, T), grid=(gh, gw)) -> fractions (B, K, gh, gw)``.

    The last backbone stage is averaged over time, brought to the sample's cell grid (area
    pooling when finer, bilinear when coarser) and classified per cell (softmax over K classes).
    ``config.sources`` gives the band count per source; ``config.num_classes`` the classes.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = cfg = config
        # Reuse the fine-tuning encoder's constructor so the backbone arguments live in one place.
        self.backbone = SourceEncoder(1, cfg).backbone
        for name, bands in cfg.sources.items():
            embed = PatchEmbed3D(bands, cfg.embed_dim, cfg.patch_size, cfg.patch_norm, cfg.embed_kernel_t)
            self.add_module(name + EMBED_SUFFIX, embed)
            if cfg.date_encoding:
                self.add_module(name + DATE_SUFFIX, DateEncoding(cfg.embed_dim, cfg.patch_size[0]))
        self.head = FractionHead(self.backbone.num_features, cfg.num_classes)
        init_weights(self)

    @property
    def sources(self) -> list[str]:
        return list(self.config.sources)

    def patch_embed(self, source: str) -> PatchEmbed3D:
        if source not in self.config.sources:
            raise KeyError(f"unknown source {source!r}; this model has sources {self.sources}")
        return getattr(self, source + EMBED_SUFFIX)

    def encode(self, source: str, x: torch.Tensor, dates: torch.Tensor | None = None) -> torch.Tensor:
        """Last-stage features averaged over time: (B, C, h, w)."""
        embed = self.patch_embed(source)
        if x.ndim != 5 or x.shape[2] != embed.in_chans:
            raise ValueError(f"source {source!r}: expected (B, T, {embed.in_chans}, H, W), got shape {tuple(x.shape)}")
        emb = embed(x)
        if self.config.date_encoding:
            if dates is None:
                raise ValueError("this model encodes acquisition dates: pass dates (B, T) days since 1970-01-01")
            emb = emb + getattr(self, source + DATE_SUFFIX)(dates, x.shape[1])
        return self.backbone(emb)[-1].mean(2)

    def forward(
        self, source: str, x: torch.Tensor, dates: torch.Tensor | None = None, grid: Sequence[int] | None = None
    ) -> torch.Tensor:
        feat = self.encode(source, x, dates)
        if grid is not None and (feat.shape[-2] < grid[0] or feat.shape[-1] < grid[1]):
            feat = F.interpolate(feat, size=tuple(grid), mode="bilinear", align_corners=False)
        return self.head(feat, grid)

    def set_checkpointing(self, enabled: bool = True) -> "PretrainModel":
        """Activation checkpointing per backbone block (memory for compute)."""
        self.backbone.set_checkpointing(enabled)
        self.config.use_checkpoint = enabled
        return self

    def set_attention(self, impl: str) -> "PretrainModel":
        self.backbone.set_attention(impl)
        self.config.attn_impl = impl
        return self


def fraction_l1(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum over valid cells of the per-cell L1 distance between fraction vectors, number of valid cells).

    Per cell the distance is ``sum_k |p_k - t_k|`` (0..2). Returned as a sum and a count so
    the caller can normalise by the *global* cell count across ranks and micro-batches.
    """
    dist = (pred.float() - target.float()).abs().sum(1)  # (B, gh, gw)
    mask = valid.to(dist.dtype)
    return (dist * mask).sum(), mask.sum()


def fraction_ce(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Sum over valid cells of the soft cross-entropy ``-sum_k t_k log p_k`` (optional auxiliary loss).

    L1 alone drives each class towards its conditional *median*; on skewed products (most cells
    one class) that is the majority class everywhere, and the softmax saturates there for good
    (see docs/pretraining.md). Cross-entropy's optimum is the mean and its gradient never vanishes.
    """
    ce = -(target.float() * pred.float().clamp_min(1e-8).log()).sum(1)
    return (ce * valid.to(ce.dtype)).sum()


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """``teacher = momentum * teacher + (1 - momentum) * student``, parameter by parameter.

    Works on plain and on sharded (FSDP2 DTensor) parameters: both models are sharded alike,
    so each rank updates its own shards only.
    """
    t_params = [_local(p) for p in teacher.parameters()]
    s_params = [_local(p).detach() for p in student.parameters()]
    if len(t_params) != len(s_params):
        raise ValueError("teacher and student have different parameter lists")
    torch._foreach_lerp_(t_params, s_params, 1.0 - momentum)


def _local(t: torch.Tensor) -> torch.Tensor:
    """The local shard of a DTensor (a view), or the tensor itself."""
    return t.to_local() if hasattr(t, "to_local") else t


# ---------------------------------------------------------------------------------------------
# Exports
# ---------------------------------------------------------------------------------------------


def _sub_state(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def published_state_dict(state: Mapping[str, torch.Tensor], sources: Sequence[str],
                         window_size: tuple[int, int, int]) -> dict[str, torch.Tensor]:
    """A full :class:`PretrainModel` state dict -> the published pre-trained layout (no head, no date encoding;
    every buffer of the published encoder, so the release loads it with ``strict=True``)."""
    embeds = {s: _sub_state(state, s + EMBED_SUFFIX + ".") for s in sources}
    return encoder_to_published(_sub_state(state, "backbone."), embeds, window_size)


def _expand_head(head: Mapping[str, torch.Tensor], n: int) -> dict[str, torch.Tensor]:
    """Our per-source head -> AgriFM's fraction head over ``n`` concatenated sources.

    AgriFM's head sees ``cat(features of n sources)``; these weights make it compute our head
    on the *mean* of the sources' features exactly: the first 1x1 conv averages the sources
    into its first C outputs (the other outputs are 0, and GELU(0) = 0), the second reads those.
    """
    w1, b1, w2, b2 = head["proj.0.weight"], head["proj.0.bias"], head["proj.2.weight"], head["proj.2.bias"]
    c = w1.shape[0]
    big1 = w1.new_zeros(n * c, n * c, 1, 1)
    big1[:c] = torch.cat([w1 / n] * n, dim=1)
    big2 = w2.new_zeros(w2.shape[0], n * c, 1, 1)
    big2[:, :c] = w2
    return {"proj.0.weight": big1, "proj.0.bias": torch.cat([b1, b1.new_zeros((n - 1) * c)]),
            "proj.2.weight": big2, "proj.2.bias": b2.clone()}


def _shrink_head(head: Mapping[str, torch.Tensor], n: int) -> dict[str, torch.Tensor]:
    """Inverse of :func:`_expand_head`."""
    c = head["proj.0.weight"].shape[0] // n
    return {"proj.0.weight": head["proj.0.weight"][:c, :c] * n, "proj.0.bias": head["proj.0.bias"][:c],
            "proj.2.weight": head["proj.2.weight"][:, :c], "proj.2.bias": head["proj.2.bias"]}


def to_agrifm(state: Mapping[str, torch.Tensor], config: ModelConfig) -> AgriFM:
    """An :class:`AgriFM` (fraction head, one encoder per source) holding the pre-trained weights.

    Each source's encoder gets a copy of the shared backbone, so our checkpoint format (and
    ``agrifm.checkpoint.load_model``) and fine-tuning by key name work unchanged.
    """
    model = AgriFM(copy.deepcopy(config))
    out: dict[str, torch.Tensor] = {}
    backbone = _sub_state(state, "backbone.")
    for s in config.sources:
        out.update({f"encoders.{s}.backbone.{k}": v for k, v in backbone.items()})
        out.update({f"encoders.{s}.patch_emd.{k}": v for k, v in _sub_state(state, s + EMBED_SUFFIX + ".").items()})
        out.update({f"encoders.{s}.date_emd.{k}": v for k, v in _sub_state(state, s + DATE_SUFFIX + ".").items()})
    out.update({f"head.{k}": v for k, v in _expand_head(_sub_state(state, "head."), len(config.sources)).items()})
    model.load_state_dict(out, strict=True)
    return model


def from_agrifm(model: AgriFM) -> PretrainModel:
    """Inverse of :func:`to_agrifm`; the per-source backbones must be identical copies."""
    cfg = model.config
    if cfg.head != "fraction":
        raise ValueError(f"not a pre-training model: head {cfg.head!r}, expected 'fraction'")
    names = list(cfg.sources)
    first = model.encoders[names[0]].backbone.state_dict()
    for s in names[1:]:
        other = model.encoders[s].backbone.state_dict()
        if any(not torch.equal(v, other[k]) for k, v in first.items()):
            raise ValueError(f"sources {names[0]!r} and {s!r} have different backbones: not a shared-backbone pre-training model")
    out = PretrainModel(copy.deepcopy(cfg))
    state = {f"backbone.{k}": v for k, v in first.items()}
    for s in names:
        enc = model.encoders[s]
        state.update({f"{s}{EMBED_SUFFIX}.{k}": v for k, v in enc.patch_emd.state_dict().items()})
        if enc.date_emd is not None:
            state.update({f"{s}{DATE_SUFFIX}.{k}": v for k, v in enc.date_emd.state_dict().items()})
    state.update({f"head.{k}": v for k, v in _shrink_head(model.head.state_dict(), len(names)).items()})
    out.load_state_dict(state, strict=True)
    return out


def load_pretrain_model(path: str | Path, device: str | torch.device = "cpu") -> PretrainModel:
    """A :class:`PretrainModel` from a ``model.safetensors`` written by ``agrifm pretrain``."""
    from agrifm.checkpoint import load_model

    agri = load_model(path)
    if agri.meta.task != "pretrain":
        raise ValueError(f"{path}: a {agri.meta.task!r} checkpoint, not a pre-training one")
    model = from_agrifm(agri)
    model.meta = agri.meta
    return model.to(device).eval()
