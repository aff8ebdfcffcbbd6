"""Build our model from a published ``model = dict(type='MultiUnifiedModel', ...)`` config."""

from __future__ import annotations

from typing import Any, Mapping

from agrifm.models.agrifm import AgriFM
from agrifm.models.config import ModelConfig

__all__ = ["model_from_official_config", "config_from_official"]

# Keys we read, and keys that only matter to the release's training scripts (ignored).
_BACKBONE_KEYS = {
    "type", "pretrained", "pretrained2d", "patch_size", "embed_dim", "depths", "num_heads", "window_size",
    "out_indices", "mlp_ratio", "qkv_bias", "qk_scale", "drop_rate", "attn_drop_rate", "drop_path_rate",
    "patch_norm", "frozen_stages", "use_checkpoint", "downsample_steps", "feature_fusion", "mean_frame_down",
    "in_chans", "norm_layer",
}
_TOP_KEYS = {"type", "encoders", "neck", "head", "train_cfg", "test_cfg", "data_preprocessor", "init_cfg", "pretrained"}
_ENCODER_KEYS = {"type", "patch_emd_cfg", "backbone_cfg", "init_cfg"}
_NECK_KEYS = {"type", "embed_dim", "in_feature_key", "feature_size", "out_size", "in_fusion_key_list", "init_cfg"}
_HEAD_KEYS = {"type", "num_classes", "embed_dim", "loss_model", "init_cfg", "ignore_index"}


def _check_keys(d: Mapping[str, Any], allowed: set[str], where: str) -> None:
    extra = sorted(set(d) - allowed)
    if extra:
        raise ValueError(f"{where}: unsupported config key(s) {extra}; supported: {sorted(allowed)}")


def _expect_type(d: Mapping[str, Any], types: tuple[str, ...], where: str) -> None:
    if d.get("type") not in types:
        raise ValueError(f"{where}: type {d.get('type')!r} is not supported (expected {' or '.join(types)})")


def config_from_official(model_cfg: Mapping[str, Any]) -> ModelConfig:
    """Translate a published model dict into our :class:`ModelConfig`."""
    if "model" in model_cfg and "type" not in model_cfg:  # a whole config file's names were passed
        model_cfg = model_cfg["model"]
    _expect_type(model_cfg, ("MultiUnifiedModel",), "model")
    _check_keys(model_cfg, _TOP_KEYS, "model")
    enc = model_cfg["encoders"]
    _expect_type(enc, ("MultiModalEncoder",), "model.encoders")
    _check_keys(enc, {"type", "encoders_cfg", "init_cfg"}, "model.encoders")
    sources: dict[str, int] = {}
    backbone: dict[str, Any] | None = None
    patch = None
    for name, ecfg in enc["encoders_cfg"].items():
        where = f"model.encoders.encoders_cfg.{name}"
        _check_keys(ecfg, _ENCODER_KEYS, where)
        pcfg, bcfg = ecfg["patch_emd_cfg"], ecfg["backbone_cfg"]
        _check_keys(pcfg, {"type", "patch_size", "in_chans", "embed_dim", "norm_layer"}, f"{where}.patch_emd_cfg")
        _check_keys(bcfg, _BACKBONE_KEYS, f"{where}.backbone_cfg")
        if pcfg.get("norm_layer") is not None:
            raise ValueError(f"{where}.patch_emd_cfg: norm_layer is not supported (the release uses none)")
        if tuple(pcfg["patch_size"]) != tuple(bcfg.get("patch_size", pcfg["patch_size"])):
            raise ValueError(f"{where}: patch_emd_cfg.patch_size {pcfg['patch_size']} != backbone_cfg.patch_size {bcfg['patch_size']}")
        if pcfg["embed_dim"] != bcfg["embed_dim"]:
            raise ValueError(f"{where}: patch_emd_cfg.embed_dim {pcfg['embed_dim']} != backbone_cfg.embed_dim {bcfg['embed_dim']}")
        core = {k: v for k, v in bcfg.items() if k not in ("type", "pretrained", "pretrained2d", "frozen_stages", "in_chans")}
        if backbone is not None and core != backbone:
            diff = sorted(k for k in set(core) | set(backbone) if core.get(k) != backbone.get(k))
            raise ValueError(f"{where}: backbone settings {diff} differ between sources; one backbone config is supported")
        backbone, patch = core, tuple(pcfg["patch_size"])
        sources[name] = int(pcfg["in_chans"])
    assert backbone is not None and patch is not None
    n_layers = len(backbone["depths"])
    if list(backbone.get("out_indices", range(n_layers))) != list(range(n_layers)):
        raise ValueError(f"backbone_cfg.out_indices {backbone['out_indices']} is not supported (all stages are used)")
    if backbone.get("feature_fusion", "cat") != "cat":
        raise ValueError(f"backbone_cfg.feature_fusion {backbone['feature_fusion']!r}: the release only has 'cat'")
    neck, head = model_cfg["neck"], model_cfg["head"]
    _expect_type(neck, ("MultiFusionNeck",), "model.neck")
    _check_keys(neck, _NECK_KEYS, "model.neck")
    _expect_type(head, ("CropFCNHead",), "model.head")
    _check_keys(head, _HEAD_KEYS, "model.head")
    if head["embed_dim"] != neck["embed_dim"]:
        raise ValueError(f"model.head.embed_dim {head['embed_dim']} != model.neck.embed_dim {neck['embed_dim']}")
    return ModelConfig(
        sources=sources,
        num_classes=int(head["num_classes"]),
        head="segmentation",
        patch_size=patch,
        embed_dim=int(backbone["embed_dim"]),
        depths=tuple(backbone["depths"]),
        num_heads=tuple(backbone["num_heads"]),
        window_size=tuple(backbone["window_size"]),
        mlp_ratio=float(backbone.get("mlp_ratio", 4.0)),
        qkv_bias=bool(backbone.get("qkv_bias", True)),
        qk_scale=backbone.get("qk_scale"),
        drop_rate=float(backbone.get("drop_rate", 0.0)),
        attn_drop_rate=float(backbone.get("attn_drop_rate", 0.0)),
        drop_path_rate=float(backbone.get("drop_path_rate", 0.2)),
        patch_norm=bool(backbone.get("patch_norm", False)),
        downsample_steps=tuple(tuple(s) for s in backbone.get("downsample_steps", [(2, 2, 2)] * n_layers)),
        mean_frame_down=bool(backbone.get("mean_frame_down", True)),
        use_checkpoint=bool(backbone.get("use_checkpoint", False)),
        feature_fusion="cat",
        merge_pad="published",
        rel_pos="published",
        decoder="fusion",
        decoder_dim=int(neck["embed_dim"]),
        in_feature_key=list(neck["in_feature_key"]),
        fusion_keys=[dict(k) for k in neck["in_fusion_key_list"]],
        feature_size=tuple(neck["feature_size"]),
        out_size=tuple(neck["out_size"]),
        num_frames=32,
    )


def model_from_official_config(model_cfg: Mapping[str, Any]) -> AgriFM:
    """Build our model from a published-format ``model`` dict (or a whole parsed config)."""
    return AgriFM(config_from_official(model_cfg))
