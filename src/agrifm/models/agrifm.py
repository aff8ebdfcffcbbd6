"""The assembled AgriFM model: one encoder per source, a fusion decoder, a task head."""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from agrifm.models.backbone import SwinTransformer3D
from agrifm.models.config import ModelConfig, fused_widths, level_fusions
from agrifm.models.decoder import MultiFusionNeck, TemporalFusion
from agrifm.models.embed import DateEncoding, PatchEmbed3D
from agrifm.models.heads import ClassificationHead, FractionHead, SegmentationHead
from agrifm.models.layers import init_weights, set_fast

__all__ = ["AgriFM", "SourceEncoder", "build_model"]


class SourceEncoder(nn.Module):
    """Patch embedding + backbone + temporal fusion of one source.

    ``forward(x (B, T, C, H, W))`` -> (encoder_features (B, C', h, w), features_list [4-D maps]).
    """

    def __init__(self, in_chans: int, cfg: ModelConfig) -> None:
        super().__init__()
        self.patch_emd = PatchEmbed3D(in_chans, cfg.embed_dim, cfg.patch_size, cfg.patch_norm, cfg.embed_kernel_t)
        self.date_emd = DateEncoding(cfg.embed_dim, cfg.patch_size[0]) if cfg.date_encoding else None
        self.backbone = SwinTransformer3D(
            cfg.embed_dim, cfg.depths, cfg.num_heads, cfg.window_size, cfg.mlp_ratio, cfg.qkv_bias, cfg.qk_scale,
            cfg.drop_rate, cfg.attn_drop_rate, cfg.drop_path_rate, cfg.downsample_steps, cfg.mean_frame_down,
            cfg.merge_pad, cfg.attn_impl, cfg.rel_pos, cfg.use_checkpoint,
        )
        n = len(cfg.depths)
        chans = [cfg.embed_dim * 2**i for i in range(n)] + [cfg.embed_dim * 2 ** (n - 1)]
        self.fusion = nn.ModuleList(TemporalFusion(mode, c) for mode, c in zip(level_fusions(cfg), chans))

    def forward(self, x: torch.Tensor, dates: torch.Tensor | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        emb = self.patch_emd(x)  # (B, E, D, H, W)
        if self.date_emd is not None:
            if dates is None:
                raise ValueError("this model encodes acquisition dates: pass dates={source: (B, T) days since 1970-01-01}")
            emb = emb + self.date_emd(dates, x.shape[1])
        stages = self.backbone(emb)
        maps = [emb, *stages]
        fused = [f(m) for f, m in zip(self.fusion, maps)]
        return fused[-1], fused[:-1]


class AgriFM(nn.Module):
    """``model({source: (B, T, C, H, W)}) -> logits``.

    Segmentation: (B, K, H_out, W_out) with (H_out, W_out) = ``out_size`` or the first
    decoder source's input size. Classification: (B, K). Fraction: (B, K, h, w) probabilities.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = cfg = config
        # NaN/inf guard on inputs (one device sync per call; benchmarks may switch it off).
        self.check_finite = True
        self.encoders = nn.ModuleDict({name: SourceEncoder(c, cfg) for name, c in cfg.sources.items()})
        widths = fused_widths(cfg)
        self.neck: nn.Module | None = None
        if cfg.head == "segmentation":
            fusion_keys = cfg.fusion_keys
            if fusion_keys is None:
                levels = len(cfg.depths) - 1
                fusion_keys = [{s: widths[levels - 1 - i] for s in cfg.decoder_sources} for i in range(levels)]
            if cfg.decoder == "efficient":
                from agrifm.models.efficient import EfficientDecoder

                self.neck = EfficientDecoder(cfg, widths)
            else:
                # Widths given by the config (published layout): the published in_conv rule.
                enc_widths = None if cfg.fusion_keys is not None else {s: widths[-1] for s in cfg.decoder_sources}
                self.neck = MultiFusionNeck(
                    cfg.decoder_dim, cfg.decoder_sources, enc_widths,
                    fusion_keys, cfg.feature_size, cfg.out_size,
                )
            self.head: nn.Module = SegmentationHead(cfg.decoder_dim, cfg.num_classes)
        elif cfg.head == "classification":
            self.head = ClassificationHead(widths[1:] * len(cfg.sources), cfg.num_classes, dropout=cfg.head_dropout)
        else:
            self.head = FractionHead(widths[-1] * len(cfg.sources), cfg.num_classes)
        init_weights(self)
        self.set_attention(cfg.attn_impl)

    # -- input checks ---------------------------------------------------------------------
    def _check_inputs(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if not isinstance(inputs, Mapping):
            raise TypeError(f"AgriFM takes a dict {{source: tensor (B, T, C, H, W)}}, got {type(inputs).__name__}")
        unknown = [s for s in inputs if s not in self.encoders]
        if unknown:
            raise KeyError(f"unknown source(s) {unknown}; this model has sources {list(self.encoders)}")
        missing = [s for s in self.config.decoder_sources if s not in inputs]
        if missing:
            raise KeyError(f"missing source(s) {missing}; this model needs {self.config.decoder_sources}")
        out = {}
        for name, x in inputs.items():
            if x.ndim == 4:
                x = x.unsqueeze(1)  # (B, C, H, W) -> T = 1
            if x.ndim != 5:
                raise ValueError(f"source {name!r}: expected (B, T, C, H, W), got shape {tuple(x.shape)}")
            want = self.config.sources[name]
            if x.shape[2] != want:
                raise ValueError(f"source {name!r}: expected {want} bands (dim 2 of (B, T, C, H, W)), got shape {tuple(x.shape)}")
            if not torch.is_floating_point(x):
                raise TypeError(f"source {name!r}: expected a floating-point tensor, got {x.dtype}")
            if self.check_finite and x.device.type != "meta" and not torch.isfinite(x).all():
                bad = (~torch.isfinite(x)).sum().item()
                raise ValueError(f"source {name!r}: {bad} NaN/inf values in the input; fill gaps before the model")
            out[name] = x
        return out

    # -- forward --------------------------------------------------------------------------
    def forward_features(
        self, inputs: Mapping[str, torch.Tensor], dates: Mapping[str, torch.Tensor] | None = None
    ) -> dict[str, dict[str, object]]:
        """``{source: {"encoder_features": (B, C, h, w), "features_list": [(B, C_i, h_i, w_i), ...]}}``.

        ``dates`` ({source: (B, T) days since 1970-01-01}) are used by models with
        ``date_encoding``; others ignore them.
        """
        inputs = self._check_inputs(inputs)
        feats = {}
        for name, x in inputs.items():
            d = None if dates is None else dates.get(name)
            if d is not None and tuple(d.shape) != tuple(x.shape[:2]):
                raise ValueError(f"source {name!r}: dates shape {tuple(d.shape)} does not match (B, T) = {tuple(x.shape[:2])}")
            enc, lst = self.encoders[name](x, d)
            feats[name] = {"encoder_features": enc, "features_list": lst}
        return feats

    def forward(
        self,
        inputs: Mapping[str, torch.Tensor],
        dates: Mapping[str, torch.Tensor] | None = None,
        weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``weights`` (B, H, W): optional parcel mask for the classification head's pooling."""
        feats = self.forward_features(inputs, dates)
        cfg = self.config
        if cfg.head == "segmentation":
            ref = inputs[cfg.decoder_sources[0]]
            x = self.neck(
                {s: f["encoder_features"] for s, f in feats.items()},
                {s: f["features_list"] for s, f in feats.items()},
                out_size=tuple(ref.shape[-2:]),
            )
            return self.head(x).contiguous()  # NCHW logits even when the fast CUDA decoder ran channels-last
        if cfg.head == "classification":
            maps = [m for s in cfg.sources for m in (*feats[s]["features_list"][1:], feats[s]["encoder_features"])]
            return self.head(maps, weights)
        enc = [feats[s]["encoder_features"] for s in cfg.sources]
        size = enc[0].shape[-2:]
        enc = [nn.functional.interpolate(e, size=size, mode="bilinear", align_corners=False) for e in enc]
        return self.head(torch.cat(enc, dim=1))

    # -- performance switches ---------------------------------------------------------------
    def set_attention(self, impl: str) -> "AgriFM":
        """``exact``: the published computation throughout (attention, window copies, decoder convs);
        ``auto`` (default), ``sdpa`` or ``flex``: the fast path (see models/attention.py, layers.Conv3x3)."""
        for enc in self.encoders.values():
            enc.backbone.set_attention(impl)
        set_fast(self, impl != "exact")
        self.config.attn_impl = impl
        return self

    def set_checkpointing(self, enabled: bool = True) -> "AgriFM":
        """Activation checkpointing per backbone block (memory for compute)."""
        for enc in self.encoders.values():
            enc.backbone.set_checkpointing(enabled)
        self.config.use_checkpoint = enabled
        return self

    def output_stride(self) -> int:
        return self.config.patch_size[1] * 2 ** (len(self.config.depths) - 1)


def build_model(config: ModelConfig | Mapping) -> AgriFM:
    """Build from a :class:`ModelConfig` or its dict form."""
    if not isinstance(config, ModelConfig):
        config = ModelConfig.from_dict(dict(config))
    return AgriFM(config)


