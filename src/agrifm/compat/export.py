"""Our model -> the published release's layout: a ``model.pth`` state dict and a ``config.py``.

The reverse of :mod:`agrifm.compat.checkpoint` and :mod:`agrifm.compat.model`: a model fine-tuned
with agrifm in the published layout ('cat' fusion, published padding and relative positions,
the fusion decoder) goes back to the release's own tools. The state dict holds plain tensors
under the published keys, every ``relative_position_index`` buffer included; the config is
read back by :func:`~agrifm.compat.load_official_config` (and by the release's builder).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from agrifm.compat.checkpoint import ours_to_official, with_index_buffers
from agrifm.compat.errors import CompatError
from agrifm.models.agrifm import AgriFM
from agrifm.models.config import ModelConfig, fused_widths

__all__ = ["published_model_dict", "published_state_dict", "published_config_text", "check_exportable"]


def check_exportable(cfg: ModelConfig) -> None:
    """Raise :class:`CompatError` naming every setting the release's model cannot express."""
    wrong = {
        "head": (cfg.head, "segmentation"), "feature_fusion": (cfg.feature_fusion, "cat"),
        "decoder": (cfg.decoder, "fusion"), "merge_pad": (cfg.merge_pad, "published"),
        "rel_pos": (cfg.rel_pos, "published"), "date_encoding": (cfg.date_encoding, False),
        "patch_norm": (cfg.patch_norm, False),
    }
    problems = [f"{k} {have!r} (the release has {want!r})" for k, (have, want) in wrong.items() if have != want]
    if cfg.embed_kernel_t not in (None, cfg.patch_size[0]):
        problems.append(f"embed_kernel_t {cfg.embed_kernel_t} (the release's patch embedding has kernel = patch)")
    if not problems and cfg.fusion_keys is None and fused_widths(cfg)[-1] != cfg.decoder_dim:
        problems.append(f"the decoder fuses {fused_widths(cfg)[-1]}-channel encoder features into {cfg.decoder_dim} "
                        "(the release's decoder takes them at its embed_dim)")
    if problems:
        raise CompatError("not expressible in the published layout: " + "; ".join(problems))


def published_model_dict(cfg: ModelConfig) -> dict[str, Any]:
    """The published ``model = dict(type='MultiUnifiedModel', ...)`` for ``cfg`` (feature/out size set)."""
    check_exportable(cfg)
    if cfg.feature_size is None or cfg.out_size is None:
        raise CompatError("the model follows its input size (feature_size/out_size unset); give the input size to fix them")
    n = len(cfg.depths)
    fusion = cfg.fusion_keys
    if fusion is None:  # our default: every decoder source at every level below the encoder output
        widths = fused_widths(cfg)
        fusion = [{s: widths[n - 2 - i] for s in cfg.decoder_sources} for i in range(n - 1)]
    backbone = dict(
        type="SwinTransformer3D", pretrained=None, pretrained2d=False, patch_size=tuple(cfg.patch_size),
        embed_dim=cfg.embed_dim, depths=list(cfg.depths), num_heads=list(cfg.num_heads),
        window_size=tuple(cfg.window_size), out_indices=tuple(range(n)), mlp_ratio=cfg.mlp_ratio,
        qkv_bias=cfg.qkv_bias, qk_scale=cfg.qk_scale, drop_rate=cfg.drop_rate, attn_drop_rate=cfg.attn_drop_rate,
        drop_path_rate=cfg.drop_path_rate, patch_norm=False, frozen_stages=-1, use_checkpoint=False,
        downsample_steps=tuple(tuple(s) for s in cfg.downsample_steps), feature_fusion="cat",
        mean_frame_down=cfg.mean_frame_down,
    )
    encoders = {
        src: dict(
            type="PretrainingSwinTransformer3DEncoder",
            patch_emd_cfg=dict(type="SwinPatchEmbed3D", patch_size=tuple(cfg.patch_size), in_chans=bands,
                               embed_dim=cfg.embed_dim),
            backbone_cfg=dict(backbone),
            init_cfg=None,
        )
        for src, bands in cfg.sources.items()
    }
    return dict(
        type="MultiUnifiedModel",
        encoders=dict(type="MultiModalEncoder", encoders_cfg=encoders),
        neck=dict(type="MultiFusionNeck", embed_dim=cfg.decoder_dim, in_feature_key=tuple(cfg.decoder_sources),
                  feature_size=tuple(cfg.feature_size), out_size=tuple(cfg.out_size),
                  in_fusion_key_list=tuple(dict(k) for k in fusion)),
        head=dict(type="CropFCNHead", num_classes=cfg.num_classes, embed_dim=cfg.decoder_dim,
                  loss_model=dict(type="CropCEloss")),
    )


def published_state_dict(model: AgriFM) -> dict[str, torch.Tensor]:
    """Our weights under the published keys, plain contiguous CPU tensors, index buffers included."""
    check_exportable(model.config)
    state = {ours_to_official(k): v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
    return with_index_buffers(state, model.config.window_size)


def _format(value: Any, indent: int = 0) -> str:
    """Python source for a config value: ``dict(key=...)`` for identifier keys, literals otherwise."""
    pad, inner = "    " * indent, "    " * (indent + 1)
    if isinstance(value, dict):
        if not value:
            return "dict()"
        if all(isinstance(k, str) and k.isidentifier() for k in value):
            body = ",\n".join(f"{inner}{k}={_format(v, indent + 1)}" for k, v in value.items())
            return f"dict(\n{body},\n{pad})"
        body = ",\n".join(f"{inner}{k!r}: {_format(v, indent + 1)}" for k, v in value.items())
        return f"{{\n{body},\n{pad}}}"
    if isinstance(value, (list, tuple)) and any(isinstance(v, dict) for v in value):
        open_, close = ("[", "]") if isinstance(value, list) else ("(", ")")
        body = ",\n".join(f"{inner}{_format(v, indent + 1)}" for v in value)
        return f"{open_}\n{body},\n{pad}{close}"
    return repr(value)


def published_config_text(cfg: ModelConfig, *, class_names: Sequence[str] = (),
                          mean: Mapping[str, Sequence[float]] | None = None,
                          std: Mapping[str, Sequence[float]] | None = None, origin: str = "") -> str:
    """A published-format ``config.py``: the model dict plus the season, classes and normalisation."""
    lines = [f"# Published-format config written by agrifm export-published{f' from {origin}' if origin else ''}.",
             "# The model dict is what the release's builder takes; mean/std are the per-band z-score",
             "# statistics of each source (MapNormalize), in the band order of the weights.",
             "custom_imports = dict(imports=['AgriFM'], allow_failed_imports=False)", "",
             f"num_frames = {cfg.num_frames}", f"num_classes = {cfg.num_classes}"]
    if class_names:
        lines.append(f"class_names = {list(class_names)!r}")
    if mean and std:
        lines += [f"mean = {_format({k: [float(x) for x in v] for k, v in mean.items()})}",
                  f"std = {_format({k: [float(x) for x in v] for k, v in std.items()})}"]
    lines += ["", f"model = {_format(published_model_dict(cfg))}", ""]
    return "\n".join(lines)
