"""Our checkpoint format: one ``.safetensors`` file, its metadata a JSON description.

The metadata (key ``agrifm``) holds the task, the sources with band names, units and
normalisation statistics, class names and colours, and the model config, so
:func:`load_model` rebuilds the model from the file alone. Nothing is unpickled.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from agrifm import __version__
from agrifm.io import atomic_output
from agrifm.models.agrifm import AgriFM
from agrifm.models.config import ModelConfig, needs_fixed_frames
from agrifm.models.ensemble import Ensemble
from agrifm.sensors import Source, get_source
from agrifm.errors import InputError

__all__ = ["save_model", "load_model", "read_metadata", "file_sha256", "default_colors", "CheckpointMeta",
           "load_predictor", "ModelPredictor"]

FORMAT = "agrifm/1"
TASKS = ("segmentation", "classification", "boundary", "pretrain")
ENSEMBLE_TASKS = ("segmentation", "classification")  # one softmax over classes: members' probabilities average


def default_colors(n: int) -> list[tuple[int, int, int]]:
    """Distinct colours (tab20-like) for ``n`` classes."""
    base = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
            (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207), (174, 199, 232), (255, 187, 120),
            (152, 223, 138), (255, 152, 150), (197, 176, 213), (196, 156, 148), (247, 182, 210), (199, 199, 199),
            (219, 219, 141), (158, 218, 229)]
    return [base[i % len(base)] for i in range(n)]


@dataclass
class CheckpointMeta:
    """What travels with the weights."""

    task: str
    model: ModelConfig
    sources: dict[str, Source]
    class_names: list[str]
    class_colors: list[tuple[int, int, int]] = field(default_factory=list)
    frames: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    members: int = 1  # > 1: an ensemble of that many models of ``model`` (weights ``members.{i}.*``)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise InputError(f"task {self.task!r}: expected one of {TASKS}")
        if not isinstance(self.members, int) or self.members < 1:
            raise InputError(f"members {self.members!r}: expected a positive whole number")
        if not self.class_colors:
            self.class_colors = default_colors(len(self.class_names))
        for name, n in self.model.sources.items():
            if name not in self.sources:
                raise InputError(f"model source {name!r} has no source description (bands, normalisation)")
            if self.sources[name].num_bands != n:
                raise InputError(f"source {name!r}: model takes {n} bands, description lists {self.sources[name].bands}")

    def to_json(self) -> str:
        return json.dumps({
            "format": FORMAT, "version": __version__, "task": self.task, "model": self.model.to_dict(),
            "sources": {k: v.to_dict() for k, v in self.sources.items()}, "class_names": list(self.class_names),
            "class_colors": [list(c) for c in self.class_colors], "frames": self.frames, "extra": self.extra,
            **({"members": self.members} if self.members > 1 else {}),  # single models: the format as before
        })

    @classmethod
    def from_json(cls, text: str, where: str = "checkpoint") -> "CheckpointMeta":
        d = json.loads(text)
        if d.get("format") != FORMAT:
            raise InputError(f"{where}: not an agrifm checkpoint (format {d.get('format')!r}, expected {FORMAT!r})")
        return cls(
            task=d["task"], model=ModelConfig.from_dict(d["model"]),
            sources={k: Source.from_dict(v) for k, v in d["sources"].items()},
            class_names=list(d["class_names"]), class_colors=[tuple(c) for c in d["class_colors"]],
            frames=d.get("frames"), extra=d.get("extra", {}), members=d.get("members", 1),
        )


def save_model(
    model: AgriFM | Ensemble,
    path: str | Path,
    *,
    task: str,
    sources: Mapping[str, Source] | None = None,
    class_names: Sequence[str] = (),
    class_colors: Sequence[tuple[int, int, int]] | None = None,
    frames: int | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write weights + description to one ``.safetensors`` file (atomically)."""
    from safetensors.torch import save_file

    if isinstance(model, Ensemble) and len(model) == 1:
        model = model.members[0]  # one member is a plain model, stored as one
    members = len(model) if isinstance(model, Ensemble) else 1
    if members > 1 and task not in ENSEMBLE_TASKS:
        raise InputError(f"an ensemble checkpoint needs a task whose output is class probabilities {ENSEMBLE_TASKS}, not {task!r}")
    sources = dict(sources or {name: get_source(name) for name in model.config.sources})
    meta = CheckpointMeta(task, model.config, sources, list(class_names), list(class_colors or []), frames,
                          dict(extra or {}), members)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    bad = _non_finite(tensors)
    if bad:
        raise InputError(f"{path}: not saved: weights {bad[:5]} hold NaN/inf values (a diverged training run?)")
    with atomic_output(path) as tmp:
        save_file(tensors, str(tmp), metadata={"agrifm": meta.to_json()})
        os.chmod(tmp, 0o666 & ~_umask())  # safetensors writes 0600; outputs get ordinary permissions
    return Path(path)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _non_finite(tensors: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of floating-point tensors holding a NaN or an infinity."""
    return [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]


def read_metadata(path: str | Path) -> CheckpointMeta:
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".ckpt":  # Lightning's training state, not a model file
        raise InputError(f"{path}: a Lightning training checkpoint; 'agrifm fit' exports the model as "
                         "model.safetensors in its run folder (trainer.default_root_dir) when training ends; "
                         "an interrupted run finishes and exports with 'agrifm fit --config CONFIG --ckpt_path last'")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as exc:
        raise InputError(f"{path}: not a readable .safetensors file ({exc})") from None
    if "agrifm" not in meta:
        raise InputError(f"{path}: a .safetensors file without agrifm metadata (convert published weights with 'agrifm convert')")
    try:
        return CheckpointMeta.from_json(meta["agrifm"], str(path))
    except (ValueError, KeyError, TypeError) as exc:  # a model config or description this version cannot use
        if isinstance(exc, InputError):
            raise
        raise InputError(f"{path}: unusable agrifm metadata ({exc.args[0] if exc.args else exc})") from None


def load_model(path: str | Path, device: str | torch.device = "cpu") -> AgriFM | Ensemble:
    """Rebuild a model (or an :class:`Ensemble`) from our checkpoint file alone; ``model.meta``
    holds its description."""
    from safetensors.torch import load_file

    meta = read_metadata(path)
    model = Ensemble.build(meta.model, meta.members) if meta.members > 1 else AgriFM(meta.model)
    try:
        state = load_file(str(path))
    except Exception as exc:  # safetensors' own errors: a truncated or damaged file
        raise InputError(f"{path}: damaged weights ({type(exc).__name__}: {exc})") from None
    bad = _non_finite(state)
    if bad:
        raise InputError(f"{path}: weights {bad[:5]}{' ...' if len(bad) > 5 else ''} ({len(bad)} tensors) hold "
                         "NaN/inf values: a damaged or diverged checkpoint; use another copy or retrain")
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise InputError(f"{path}: weights do not match the stored config (missing {result.missing_keys[:5]}, "
                         f"unexpected {result.unexpected_keys[:5]})")
    model.meta = meta
    return model.to(device).eval()


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


class ModelPredictor:
    """Adapts a loaded model to the scene engine's predictor protocol (probabilities out)."""

    def __init__(self, model: AgriFM | Ensemble, device: str | torch.device = "cpu", precision: str = "auto") -> None:
        meta: CheckpointMeta = model.meta
        if meta.task == "pretrain":
            raise InputError("this checkpoint is a pre-training encoder: fine-tune it before mapping ('agrifm fit')")
        self.model = model.to(device).eval()
        self.device = torch.device(device)
        self.sources = meta.sources
        self.class_names = meta.class_names
        self.class_colors = meta.class_colors
        self.kind = "point" if meta.task == "classification" else "dense"
        self.frames = meta.model.num_frames if needs_fixed_frames(meta.model) else None
        self.task = meta.task
        self.autocast = precision == "bf16" or (precision == "auto" and self.device.type == "cuda")
        # The scene engine passes acquisition dates to predictors that use them.
        self.uses_dates = bool(meta.model.date_encoding)
        smoothing = meta.extra.get("smoothing") or {}
        self.smoothing = float(smoothing.get("lambda", 0.0)) if smoothing.get("method") == "whittaker" else 0.0

    @torch.no_grad()
    def __call__(self, inputs: Mapping[str, torch.Tensor], dates: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        """``inputs`` normalised and gap-filled {src: (B, T, C, H, W)}; ``dates`` {src: (B, T) or (T,)} days."""
        inputs = {k: v.to(self.device, non_blocking=True) for k, v in inputs.items()}
        if self.smoothing > 0:  # the same smoother the training samples went through (linear: fine on z-scores)
            inputs = {k: _smoothed(v, self.smoothing, self.sources[k]) for k, v in inputs.items()}
        if dates is not None:
            dates = {k: (d if d.ndim == 2 else d[None].expand(inputs[k].shape[0], -1)).to(self.device)
                     for k, d in dates.items() if k in inputs}
        elif self.uses_dates:
            raise InputError("this checkpoint encodes acquisition dates: pass dates={source: days since 1970-01-01}")
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            logits = self.model(inputs, dates)
        logits = logits.float()
        if self.task == "boundary":  # channels: extent logits (K) then the boundary logit
            logits = logits[:, : len(self.class_names)]
        return logits.softmax(dim=1)


def load_predictor(path: str | Path, device: str | torch.device | None = None, precision: str = "auto") -> ModelPredictor:
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return ModelPredictor(load_model(path, device), device, precision)


def _smoothed(x: torch.Tensor, lam: float, source: Source) -> torch.Tensor:
    """Whittaker-smooth ``(B, T, C, ...)`` along time; the 0/1 observation band stays as it is."""
    from agrifm.data.smoothing import whittaker_torch
    from agrifm.data.tables import OBSERVED

    out = whittaker_torch(x, lam, dim=1)
    if OBSERVED in source.bands:
        i = source.bands.index(OBSERVED)
        out[:, :, i] = x[:, :, i]
    return out
