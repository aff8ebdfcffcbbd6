"""Build our model from a published ``model = dict(type='MultiUnifiedModel', ...)`` config."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from agrifm.compat.errors import CompatError
from agrifm.models.agrifm import AgriFM
from agrifm.models.config import ModelConfig, level_shapes

__all__ = ["model_from_official_config", "config_from_official", "official_model_config", "season_lengths",
           "official_init_checkpoint", "config_init_checkpoint", "build_official_model"]

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
MAX_FRAMES = 10_000  # longest season searched for when reading the frames off the widths
MAX_PARAMETERS = 4_000_000_000
MAX_WIDTH = 1 << 20  # widest channel count accepted (the published model's widest is 1024)
_HEAD_KEYS = {"type", "num_classes", "embed_dim", "loss_model", "init_cfg", "ignore_index"}


def _check_keys(d: Mapping[str, Any], allowed: set[str], where: str) -> None:
    extra = sorted(set(d) - allowed)
    if extra:
        raise CompatError(f"{where}: unsupported config key(s) {extra}; supported: {sorted(allowed)}")


def _expect_type(d: Any, types: tuple[str, ...], where: str) -> None:
    if not isinstance(d, Mapping):
        raise CompatError(f"{where}: expected dict(type={types[0]!r}, ...), got {type(d).__name__}")
    if d.get("type") not in types:
        raise CompatError(f"{where}: type {d.get('type')!r} is not supported (expected {' or '.join(types)})")


def _need(d: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in d:
        raise CompatError(f"{where}: required key {key!r} is missing")
    return d[key]


def _backbone(enc: Mapping[str, Any]) -> tuple[dict[str, int], dict[str, Any], tuple[int, ...]]:
    """(sources {name: bands}, the one backbone config, patch size) of ``model.encoders``."""
    cfgs = _need(enc, "encoders_cfg", "model.encoders")
    if not isinstance(cfgs, Mapping) or not cfgs:
        raise CompatError("model.encoders.encoders_cfg: expected a dict of one encoder per source")
    sources: dict[str, int] = {}
    backbone: dict[str, Any] | None = None
    patch: tuple[int, ...] = ()
    for name, ecfg in cfgs.items():
        where = f"model.encoders.encoders_cfg.{name}"
        _expect_type(ecfg, ("PretrainingSwinTransformer3DEncoder",), where)
        _check_keys(ecfg, _ENCODER_KEYS, where)
        pcfg, bcfg = _need(ecfg, "patch_emd_cfg", where), _need(ecfg, "backbone_cfg", where)
        _check_keys(pcfg, {"type", "patch_size", "in_chans", "embed_dim", "norm_layer"}, f"{where}.patch_emd_cfg")
        _check_keys(bcfg, _BACKBONE_KEYS, f"{where}.backbone_cfg")
        if pcfg.get("norm_layer") is not None:
            raise CompatError(f"{where}.patch_emd_cfg: norm_layer is not supported (the release uses none)")
        p_patch = tuple(_need(pcfg, "patch_size", f"{where}.patch_emd_cfg"))
        if p_patch != tuple(bcfg.get("patch_size", p_patch)):
            raise CompatError(f"{where}: patch_emd_cfg.patch_size {pcfg['patch_size']} != backbone_cfg.patch_size {bcfg['patch_size']}")
        if _need(pcfg, "embed_dim", f"{where}.patch_emd_cfg") != _need(bcfg, "embed_dim", f"{where}.backbone_cfg"):
            raise CompatError(f"{where}: patch_emd_cfg.embed_dim {pcfg['embed_dim']} != backbone_cfg.embed_dim {bcfg['embed_dim']}")
        core = {k: v for k, v in bcfg.items() if k not in ("type", "pretrained", "pretrained2d", "frozen_stages", "in_chans")}
        if backbone is not None and core != backbone:
            diff = sorted(k for k in set(core) | set(backbone) if core.get(k) != backbone.get(k))
            raise CompatError(f"{where}: backbone settings {diff} differ between sources; one backbone config is supported")
        backbone, patch = core, p_patch
        sources[name] = int(_need(pcfg, "in_chans", f"{where}.patch_emd_cfg"))
    assert backbone is not None
    return sources, backbone, patch


def season_lengths(cfg: ModelConfig, limit: int | None = None) -> list[int]:
    """Every number of frames for which a published-layout config's widths fit, ascending.

    With 'cat' fusion a level's width is (stage channels) x (its frames). The published decoder
    takes each source's encoder features at ``decoder_dim`` channels and entry i of
    ``fusion_keys`` at the widths of ``features_list[L-1-i]``; a season fits when all agree.
    """
    assert cfg.fusion_keys is not None
    n, levels = len(cfg.depths), len(cfg.fusion_keys)
    stage = cfg.embed_dim * 2 ** (n - 1)
    frames_last = cfg.decoder_dim // stage
    if limit is None:
        span = 1
        for step in cfg.downsample_steps[: n - 1]:
            span *= max(1, step[0])
        limit = min(MAX_FRAMES, cfg.patch_size[0] * span * max(1, frames_last))
    out = []
    for t in range(1, limit + 1):
        shapes = level_shapes(cfg, t)
        if shapes[-1][0] * shapes[-1][1] != cfg.decoder_dim:
            continue
        if all(w == shapes[levels - 1 - i][0] * shapes[levels - 1 - i][1]
               for i, keys in enumerate(cfg.fusion_keys) for w in keys.values()):
            out.append(t)
    return out


def config_from_official(model_cfg: Mapping[str, Any], num_frames: int | None = None) -> ModelConfig:
    """Translate a published model dict (or a whole parsed config) into our :class:`ModelConfig`.

    The structure follows the config alone (widths, ``in_conv`` by the number of decoder
    sources). ``num_frames`` (recorded as the model's season) is the one the decoder widths
    fit; the config's own top-level ``num_frames`` (or the argument) breaks ties.
    """
    if isinstance(model_cfg, Mapping) and "model" in model_cfg and "type" not in model_cfg:  # a whole config file
        num_frames = num_frames if num_frames is not None else model_cfg.get("num_frames")
        model_cfg = model_cfg["model"]
    _expect_type(model_cfg, ("MultiUnifiedModel",), "model")
    _check_keys(model_cfg, _TOP_KEYS, "model")
    enc = _need(model_cfg, "encoders", "model")
    _expect_type(enc, ("MultiModalEncoder",), "model.encoders")
    _check_keys(enc, {"type", "encoders_cfg", "init_cfg"}, "model.encoders")
    sources, backbone, patch = _backbone(enc)
    n_layers = len(_need(backbone, "depths", "backbone_cfg"))
    if list(backbone.get("out_indices", range(n_layers))) != list(range(n_layers)):
        raise CompatError(f"backbone_cfg.out_indices {backbone['out_indices']} is not supported (all stages are used)")
    if backbone.get("feature_fusion", "cat") != "cat":
        raise CompatError(f"backbone_cfg.feature_fusion {backbone['feature_fusion']!r}: the release only has 'cat'")
    neck, head = _need(model_cfg, "neck", "model"), _need(model_cfg, "head", "model")
    _expect_type(neck, ("MultiFusionNeck",), "model.neck")
    _check_keys(neck, _NECK_KEYS, "model.neck")
    _expect_type(head, ("CropFCNHead",), "model.head")
    _check_keys(head, _HEAD_KEYS, "model.head")
    if _need(head, "embed_dim", "model.head") != _need(neck, "embed_dim", "model.neck"):
        raise CompatError(f"model.head.embed_dim {head['embed_dim']} != model.neck.embed_dim {neck['embed_dim']}")
    fusion = _need(neck, "in_fusion_key_list", "model.neck")
    if not isinstance(fusion, (list, tuple)) or not all(isinstance(k, Mapping) for k in fusion):
        raise CompatError(f"model.neck.in_fusion_key_list: expected a list of dicts {{source: width}}, got {fusion!r}")
    if len(fusion) > n_layers:
        raise CompatError(f"model.neck.in_fusion_key_list has {len(fusion)} entries; the encoder gives {n_layers} feature levels")
    in_keys = list(neck.get("in_feature_key", ("S2",)))  # published defaults where a key is absent
    unknown = sorted((set(in_keys) | {s for k in fusion for s in k}) - set(sources))
    if unknown:
        raise CompatError(f"model.neck names source(s) {unknown} that have no encoder; encoders: {list(sources)}")
    try:
        cfg = ModelConfig(
            sources=sources,
            num_classes=int(_need(head, "num_classes", "model.head")),
            head="segmentation",
            patch_size=patch,
            embed_dim=int(backbone["embed_dim"]),
            depths=tuple(backbone["depths"]),
            num_heads=tuple(_need(backbone, "num_heads", "backbone_cfg")),
            window_size=tuple(_need(backbone, "window_size", "backbone_cfg")),
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
            in_feature_key=in_keys,
            fusion_keys=[{str(s): int(w) for s, w in k.items()} for k in fusion],
            feature_size=tuple(neck.get("feature_size", (16, 16))),
            out_size=tuple(neck.get("out_size", (256, 256))),
        )
    except (TypeError, ValueError) as exc:
        raise CompatError(f"model: {exc}") from None
    if len(cfg.downsample_steps) < n_layers - 1 or any(len(s) != 3 for s in cfg.downsample_steps):
        raise CompatError(f"backbone_cfg.downsample_steps {backbone.get('downsample_steps')}: one (t, h, w) step per stage")
    _check_sizes(cfg)
    cfg.num_frames = _pick_season(cfg, num_frames)
    return cfg


def _check_sizes(cfg: ModelConfig) -> None:
    """Sizes the model can be built with, checked before anything is allocated."""
    def positive(values, what, top=MAX_WIDTH):
        if not all(isinstance(v, int) and not isinstance(v, bool) and 0 < v <= top for v in values):
            raise CompatError(f"{what} {list(values)}: expected whole numbers from 1 to {top:,}")

    positive(cfg.patch_size, "patch_size", 64)
    positive(cfg.window_size, "backbone_cfg.window_size", 64)
    positive(cfg.depths, "backbone_cfg.depths", 256)
    positive(cfg.num_heads, "backbone_cfg.num_heads", 1024)
    positive([s for step in cfg.downsample_steps for s in step], "backbone_cfg.downsample_steps", 8)
    positive([cfg.embed_dim * 2 ** (len(cfg.depths) - 1), cfg.decoder_dim, cfg.num_classes], "embed_dim, neck embed_dim, num_classes")
    positive([w for k in cfg.fusion_keys or [] for w in k.values()], "model.neck.in_fusion_key_list widths")
    positive([*(cfg.feature_size or ()), *(cfg.out_size or ())], "model.neck feature_size/out_size", 1 << 16)
    positive(list(cfg.sources.values()), "patch_emd_cfg.in_chans", 4096)
    if len(cfg.num_heads) != len(cfg.depths):
        raise CompatError(f"backbone_cfg: {len(cfg.depths)} depths but {len(cfg.num_heads)} num_heads")
    for i, heads in enumerate(cfg.num_heads):
        if (cfg.embed_dim * 2**i) % heads:
            raise CompatError(f"backbone_cfg: stage {i} width {cfg.embed_dim * 2**i} is not divisible by {heads} heads")


def _pick_season(cfg: ModelConfig, hint: Any) -> int:
    fits = season_lengths(cfg)
    if isinstance(hint, int) and not isinstance(hint, bool) and hint > 0 and (hint in fits or not fits):
        return hint
    if fits:
        return fits[-1]
    stage = cfg.embed_dim * 2 ** (len(cfg.depths) - 1)
    raise CompatError(
        f"model.neck: no number of frames fits its widths (embed_dim {cfg.decoder_dim}, in_fusion_key_list "
        f"{cfg.fusion_keys}); with 'cat' fusion each source's encoder features are {stage} x (frames of the last stage) "
        "channels and must equal the neck's embed_dim; set num_frames = T at the config's top level to name the season"
    )


def official_model_config(path: str | Path) -> tuple[ModelConfig, dict[str, Any]]:
    """(our config, every top-level name) of a published ``.py`` config file; errors name the file."""
    from agrifm.compat.config import ConfigSyntaxError, load_official_config

    names = load_official_config(path)
    if "model" not in names:
        raise CompatError(f"{path}: no top-level 'model = dict(...)' assignment")
    try:
        return config_from_official(names), names
    except ConfigSyntaxError:
        raise
    except CompatError as exc:
        raise CompatError(f"{path}: {exc}") from None


def official_init_checkpoint(names: Mapping[str, Any]) -> str | None:
    """The pre-trained weights a published config initialises its encoders from (``init_cfg``), or None."""
    model = names.get("model", names)
    found: list[str] = []
    for holder in (model, model.get("encoders", {}), *model.get("encoders", {}).get("encoders_cfg", {}).values()):
        init = holder.get("init_cfg") if isinstance(holder, Mapping) else None
        if isinstance(init, Mapping) and isinstance(init.get("checkpoint"), str):
            found.append(init["checkpoint"])
    if isinstance(model.get("pretrained"), str):
        found.append(model["pretrained"])
    return found[0] if found else None


def config_init_checkpoint(path: str | Path) -> str | None:
    """The pre-trained weights a published config file names (``init_cfg``), checked to exist; None if none.

    A named file that is absent is an error (never silently ignored): the release's configs name
    placeholders such as 'Path to weights/AgriFM.pth'.
    """
    from agrifm.compat.config import load_official_config

    named = official_init_checkpoint(load_official_config(path))
    if named is None:
        return None
    if not Path(named).is_file():
        raise CompatError(
            f"{path}: init_cfg names pretrained weights {named!r}, which is not a file; put them there, pass "
            "init_checkpoint: PATH (model.init_args), or set init_cfg=None in the config to start from random weights"
        )
    return named


def build_official_model(cfg: ModelConfig) -> AgriFM:
    """Our model for a translated config; sizes are checked on the meta device before any memory is used."""
    import torch

    try:
        with torch.device("meta"):
            n = sum(p.numel() for p in AgriFM(cfg).parameters())
        if n > MAX_PARAMETERS:
            raise CompatError(f"model: {n:,} parameters; more than {MAX_PARAMETERS:,} is not a model this reads")
        return AgriFM(cfg)
    except (ValueError, RuntimeError) as exc:
        if isinstance(exc, CompatError):
            raise
        raise CompatError(f"model: cannot be built ({exc})") from None


def model_from_official_config(model_cfg: Mapping[str, Any], num_frames: int | None = None) -> AgriFM:
    """Build our model from a published-format ``model`` dict (or a whole parsed config)."""
    return build_official_model(config_from_official(model_cfg, num_frames))
