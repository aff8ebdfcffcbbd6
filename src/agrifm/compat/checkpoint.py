"""Load published AgriFM weights (fine-tuned full models or pre-trained encoders).

Files are data, not code: ``.pth``/``.pt`` are read with ``torch.load(weights_only=True)``
(training checkpoints with other objects by a restricted unpickler that runs nothing),
``.safetensors`` with safetensors. Published key names are mapped to ours here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from agrifm.compat.errors import CompatError

__all__ = ["load_official_checkpoint", "LoadReport", "read_state_dict", "read_checkpoint", "official_to_ours", "ours_to_official",
           "PATCH_EMBED_BY_BANDS", "encoder_to_published", "with_index_buffers"]

# The release picks a pre-trained patch embedding by band count.
PATCH_EMBED_BY_BANDS = {10: "S2", 6: "HLSL30", 7: "Modis"}
_INDEX = "relative_position_index"


@dataclass
class LoadReport:
    """What a load did: ``kind`` is 'full' or 'encoder'."""

    kind: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)  # model source -> checkpoint patch embedding

    def __str__(self) -> str:
        s = f"{self.kind} checkpoint: {len(self.loaded)} tensors loaded, {len(self.missing)} missing, {len(self.unexpected)} unexpected"
        if self.missing:
            s += f"\n  missing: {_summarise(self.missing)}"
        if self.unexpected:
            s += f"\n  unexpected: {_summarise(self.unexpected)}"
        return s


def _summarise(keys: list[str], n: int = 8) -> str:
    return ", ".join(keys[:n]) + (f" ... (+{len(keys) - n})" if len(keys) > n else "")


def read_checkpoint(path: str | Path) -> Any:
    """The object a checkpoint file holds: safetensors, tensor-only pickles, or training checkpoints.

    ``.pth`` files are first read with ``torch.load(weights_only=True)``; files that need more
    (mmengine's training checkpoints: config text, message hub, optimizer state) are read by
    :func:`~agrifm.compat.unpickle.load_inert`, which rebuilds tensors and plain containers and
    leaves every other object inert. Nothing in a file is ever executed.
    """
    path = Path(path)
    if not path.is_file():
        raise CompatError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:
            raise CompatError(f"{path}: not a readable .safetensors file ({exc})") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        pass  # a training checkpoint with other objects, or not a checkpoint at all
    from agrifm.compat.unpickle import load_inert

    try:
        return load_inert(path)
    except Exception as exc:
        raise CompatError(f"{path}: not a readable torch checkpoint ({type(exc).__name__}: {str(exc)[:200]})") from None


def read_state_dict(path_or_dict: str | Path | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A flat tensor dict from a file or dict; unwraps ``state_dict``/``model`` and ``module.``."""
    where = "state dict" if isinstance(path_or_dict, Mapping) else str(path_or_dict)
    sd = path_or_dict if isinstance(path_or_dict, Mapping) else read_checkpoint(path_or_dict)
    if not isinstance(sd, Mapping):
        raise CompatError(f"{where}: holds a {type(sd).__name__}, not a dict of tensors")
    sd = dict(sd)
    for wrapper in ("state_dict", "model", "module"):
        if wrapper in sd and isinstance(sd[wrapper], Mapping):
            sd = dict(sd[wrapper])
    sd = {k: v for k, v in sd.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    # mmengine's data preprocessor (normalisation constants) is not part of the network.
    sd = {k: v for k, v in sd.items() if not k.startswith("data_preprocessor.")}
    if not sd:
        raise CompatError(f"{where}: no tensors found")
    return sd


def official_to_ours(key: str) -> str:
    """Published fine-tuned key -> our key."""
    if key.startswith("encoders.encoders."):
        return "encoders." + key[len("encoders.encoders."):]
    if key.startswith("heads."):
        return "head." + key[len("heads."):]
    return key


def ours_to_official(key: str) -> str:
    if key.startswith("encoders."):
        return "encoders.encoders." + key[len("encoders."):]
    if key.startswith("head."):
        return "heads." + key[len("head."):]
    return key


def _is_encoder_file(sd: Mapping[str, torch.Tensor]) -> bool:
    return any(k.startswith("backbone.") for k in sd) and not any(k.startswith("encoders.") for k in sd)


def _patch_embeds(sd: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    out: dict[str, dict[str, torch.Tensor]] = {}
    for k, v in sd.items():
        m = re.match(r"^(.+?)_patch_emd\.(.+)$", k)
        if m:
            rest = m.group(2) if m.group(2).startswith("proj.") else "proj." + m.group(2)
            out.setdefault(m.group(1), {})[rest] = v
    return out


def _encoder_state(model: nn.Module, sd: Mapping[str, torch.Tensor], report: LoadReport,
                   source_map: Mapping[str, str] | None) -> dict[str, torch.Tensor]:
    """Expand a pre-trained file (shared backbone + per-source patch embeddings) to our keys."""
    embeds = _patch_embeds(sd)
    backbone = {k[len("backbone."):]: v for k, v in sd.items() if k.startswith("backbone.") and not k.endswith(_INDEX)}
    used = {k for k in sd if k.startswith("backbone.")}
    out: dict[str, torch.Tensor] = {}
    for name, enc in model.encoders.items():
        for k, v in backbone.items():
            out[f"encoders.{name}.backbone.{k}"] = v
        bands = enc.patch_emd.in_chans
        pick = (source_map or {}).get(name)
        if pick is None:
            pick = name if name in embeds else PATCH_EMBED_BY_BANDS.get(bands)
        if pick in embeds:
            report.sources[name] = pick
            for k, v in embeds[pick].items():
                out[f"encoders.{name}.patch_emd.{k}"] = v
            used.update(f"{pick}_patch_emd.{k}" for k in sd if k.startswith(f"{pick}_patch_emd."))
    report.unexpected.extend(sorted(k for k in sd if k not in used and not k.endswith(_INDEX) and not any(
        k.startswith(f"{p}_patch_emd.") for p in embeds)))
    return out


def load_official_checkpoint(
    model: nn.Module,
    state_dict_or_path: str | Path | Mapping[str, torch.Tensor],
    *,
    source_map: Mapping[str, str] | None = None,
    strict: bool = True,
) -> LoadReport:
    """Load published weights into our model and say what happened.

    A fine-tuned full model: every key must match (missing, unexpected or mis-shaped keys are
    one error naming them). A pre-trained encoder file (``<SRC>_patch_emd.*`` + shared
    ``backbone.*``): every encoder key must be covered; the decoder/head it lacks are listed
    in ``report.missing``. ``relative_position_index`` buffers are accepted present or absent.
    ``source_map`` picks a checkpoint patch embedding for a model source (default: same name,
    else by band count as the release does). ``strict=False`` reports instead of raising.
    """
    sd = read_state_dict(state_dict_or_path)
    encoder_only = _is_encoder_file(sd)
    report = LoadReport(kind="encoder" if encoder_only else "full")
    if encoder_only:
        mapped = _encoder_state(model, sd, report, source_map)
    else:
        mapped = {}
        for k, v in sd.items():
            if k.endswith(_INDEX):
                continue
            mapped[official_to_ours(k)] = v
    own = model.state_dict()
    shape_errors = [
        f"{ours_to_official(k)}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in mapped.items() if k in own and own[k].shape != v.shape
    ]
    unexpected = sorted(ours_to_official(k) for k in mapped if k not in own)
    missing = sorted(k for k in own if k not in mapped)
    # Our own additions (temporal-attention fusion, date encoding) have no published weights.
    enc_missing = [k for k in missing if k.startswith("encoders.") and ".fusion." not in k and ".date_emd." not in k]
    report.unexpected = sorted(set(report.unexpected) | set(unexpected))
    report.missing = [ours_to_official(k) for k in missing]
    problems = []
    if shape_errors:
        problems.append("shape mismatch: " + "; ".join(shape_errors[:10]) + (" ..." if len(shape_errors) > 10 else ""))
    if report.unexpected:
        problems.append(f"unexpected keys: {_summarise(report.unexpected)}")
    fatal_missing = enc_missing if encoder_only else missing
    if fatal_missing:
        problems.append(f"missing keys: {_summarise([ours_to_official(k) for k in fatal_missing])}")
    if problems and strict:
        src = state_dict_or_path if not isinstance(state_dict_or_path, Mapping) else "state dict"
        raise CompatError(f"{src} does not fit this model ({report.kind} checkpoint): " + "; ".join(problems))
    loadable = {k: v for k, v in mapped.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(loadable, strict=False)
    report.loaded = sorted(ours_to_official(k) for k in loadable)
    return report


def with_index_buffers(state: Mapping[str, torch.Tensor], window_size: tuple[int, int, int]) -> dict[str, torch.Tensor]:
    """``state`` plus the ``relative_position_index`` buffer of every attention block, as the release stores.

    The release registers, per block, the index of its *configured* window (the leading block
    of it is taken at run time for clipped windows), so every buffer is the same tensor.
    """
    from agrifm.models.attention import relative_position_index

    window = tuple(int(w) for w in window_size)
    index = relative_position_index(window, window).clone()
    out = dict(state)
    for key in state:
        if key.endswith(".relative_position_bias_table"):
            out[key[: -len("relative_position_bias_table")] + _INDEX] = index.clone()
    return out


def encoder_to_published(encoder_state: Mapping[str, torch.Tensor], patch_embeds: Mapping[str, Mapping[str, torch.Tensor]],
                         window_size: tuple[int, int, int]) -> dict[str, torch.Tensor]:
    """Our backbone + per-source patch embeddings -> the published pre-trained layout, every buffer included."""
    out = {f"backbone.{k}": v.detach().clone().contiguous() for k, v in encoder_state.items()}
    for src, sd in patch_embeds.items():
        out.update({f"{src}_patch_emd.{k}": v.detach().clone().contiguous() for k, v in sd.items()})
    return with_index_buffers(out, window_size)
