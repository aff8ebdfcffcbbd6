"""What every AgriFM Lightning task shares: model building, the published optimiser recipe,
metrics, the NaN guard, and writing our checkpoint format.

The LightningModule owns loss, metrics, optimiser and schedule; the ``nn.Module`` (AgriFM)
owns only the computation.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info

from agrifm.checkpoint import save_model
from agrifm.errors import InputError
from agrifm.models.agrifm import AgriFM, build_model
from agrifm.models.config import ModelConfig
from agrifm.sensors import Source, get_source
from agrifm.tasks.metrics import classification_metrics, summarize
from agrifm.tasks.optim import adamw_warmup_cosine, warmup_cosine

__all__ = ["AgriFMTask", "warmup_cosine", "resolve_model_config"]


def resolve_model_config(model: ModelConfig | Mapping[str, Any] | str, **overrides: Any) -> ModelConfig:
    """A config object, its dict form, a preset name, or ``{'preset': name, ...overrides}``."""
    from agrifm.models.presets import preset

    if isinstance(model, ModelConfig):
        d = model.to_dict()
    elif isinstance(model, str) and model.endswith(".py"):  # a published-format config (read, never executed)
        from agrifm.compat import official_model_config

        d = official_model_config(model)[0].to_dict()
    elif isinstance(model, str):
        return preset(model, **overrides)
    else:
        d = dict(model)
        if "preset" in d:
            name = d.pop("preset")
            return preset(name, **{**d, **overrides})
    return ModelConfig.from_dict({**d, **overrides})


class AgriFMTask(L.LightningModule):
    """Base task. Subclasses implement ``_step(batch) -> (loss, preds, target)``.

    Args:
        model: model config (ModelConfig, dict, preset name, {'preset': ..., ...}, or a published-format
            ``.py`` config, whose ``init_cfg`` weights are loaded unless ``init_checkpoint`` is given).
        sources: {name: Source dict or registered name}: bands + normalisation that travel with the checkpoint.
        class_names: names of the output classes (their count sets ``num_classes``).
        lr, weight_decay, warmup_steps, min_lr: AdamW + linear warm-up + cosine (published: 6e-5, 5e-4, 1000, 1e-6).
        init_checkpoint: published (.pth/.safetensors) or our checkpoint to start from.
        freeze_stages: backbone stages (0-based, plus 'embed') kept frozen.
        ignore_index: label value that never counts.
        class_weights: per-class weights of the cross-entropy (rare crops), one per class name.
    """

    def __init__(
        self,
        model: Any = "small",
        sources: Mapping[str, Any] | Sequence[str] | None = None,
        class_names: Sequence[str] = ("other", "cropland"),
        class_colors: Sequence[Sequence[int]] | None = None,
        lr: float = 6e-5,
        weight_decay: float = 5e-4,
        warmup_steps: int = 1000,
        min_lr: float = 1e-6,
        init_checkpoint: str | None = None,
        freeze_stages: Sequence[int | str] = (),
        ignore_index: int = -1,
        label_smoothing: float = 0.0,
        class_weights: Sequence[float] | None = None,
        frames: int | None = None,
        task_name: str = "segmentation",
    ) -> None:
        super().__init__()
        if not lr > 0:  # the schedule's multipliers are relative to lr
            raise ValueError(f"lr {lr}: expected a learning rate above 0")
        self.save_hyperparameters()
        srcs = self._resolve_sources(sources)
        self.sources_meta: dict[str, Source] = srcs
        cfg = resolve_model_config(model, sources={k: v.num_bands for k, v in srcs.items()}, **self._config_overrides(len(class_names)))
        self.model: AgriFM = build_model(cfg)
        if init_checkpoint is None and isinstance(model, str) and model.endswith(".py"):
            from agrifm.compat import config_init_checkpoint

            init_checkpoint = config_init_checkpoint(model)  # the config's init_cfg, as the release does
        if init_checkpoint:
            self._init_from(init_checkpoint)
        self._freeze(freeze_stages)
        self.class_names = list(class_names)
        self.ignore_index = ignore_index
        k = len(class_names)
        weights = None
        if class_weights is not None:
            weights = torch.as_tensor(class_weights, dtype=torch.float32)
            if weights.shape != (k,):
                raise ValueError(f"class_weights has {weights.numel()} values for {k} classes {self.class_names}")
        self.register_buffer("class_weights", weights, persistent=False)
        self.val_metrics = classification_metrics(k, ignore_index, prefix="val_")
        self.test_metrics = classification_metrics(k, ignore_index, prefix="test_")
        self.last_val: dict[str, Any] = {}
        self.last_test: dict[str, Any] = {}

    # -- construction helpers -------------------------------------------------------------
    @staticmethod
    def _resolve_sources(sources: Mapping[str, Any] | Sequence[str] | None) -> dict[str, Source]:
        if sources is None:
            sources = ["S2"]
        if isinstance(sources, Mapping):
            return {k: (v if isinstance(v, Source) else Source.from_dict({"name": k, **v}) if isinstance(v, Mapping) else get_source(v))
                    for k, v in sources.items()}
        return {name: get_source(name) for name in sources}

    def _config_overrides(self, num_classes: int) -> dict[str, Any]:
        return {"num_classes": num_classes}

    def _init_from(self, path: str) -> None:
        from pathlib import Path

        p = Path(path)
        if p.suffix == ".safetensors":
            from agrifm.checkpoint import read_metadata

            try:
                meta = read_metadata(p)
            except ValueError:
                meta = None
            if meta is not None:
                from safetensors.torch import load_file

                state = load_file(str(p))
                if meta.members > 1:  # an ensemble: fine-tune from its first member
                    from agrifm.models.ensemble import member_state

                    rank_zero_info(f"init from {p}: an ensemble of {meta.members}; using member 0")
                    state = member_state(state, 0)
                own = self.model.state_dict()
                keep = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
                self.model.load_state_dict(keep, strict=False)
                skipped = sorted(set(state) - set(keep))
                if skipped:
                    rank_zero_info(f"init from {p}: {len(keep)} tensors loaded, {len(skipped)} skipped (head/shape differ)")
                return
        from agrifm.compat import load_official_checkpoint

        report = load_official_checkpoint(self.model, p, strict=False)
        enc_missing = [k for k in report.missing
                       if k.startswith("encoders.") and ".fusion." not in k and ".date_emd." not in k]
        if enc_missing:
            raise ValueError(f"{p}: encoder weights missing for this model: {enc_missing[:5]}")
        rank_zero_info(f"init from {p}: {report}")  # self.print needs a Trainer; __init__ has none

    def _freeze(self, stages: Sequence[int | str]) -> None:
        for enc in self.model.encoders.values():
            for s in stages:
                mods = [enc.patch_emd] if s == "embed" else [enc.backbone.layers[int(s)]]
                for m in mods:
                    for p in m.parameters():
                        p.requires_grad_(False)

    # -- training loop pieces ---------------------------------------------------------------
    def _step(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def forward(self, inputs: Mapping[str, torch.Tensor], dates: Mapping[str, torch.Tensor] | None = None, **kw) -> torch.Tensor:
        return self.model(inputs, dates, **kw)

    def _check_classes(self, target: torch.Tensor, batch: Mapping[str, Any], k: int) -> None:
        """A label >= K would index out of range deep inside the loss (a CUDA assert); name it here."""
        bad = (target >= k) | ((target < 0) & (target != self.ignore_index))
        if bad.any():
            values = sorted({int(v) for v in target[bad].unique()[:10]})
            raise InputError(f"labels {values} are outside 0..{k - 1} (classes {self.class_names}) and are not "
                             f"ignore_index={self.ignore_index}; samples {list(batch.get('id') or [])[:8]}")

    def _check_loss(self, loss: torch.Tensor, batch: Mapping[str, Any], batch_idx: int) -> None:
        if not torch.isfinite(loss):
            ids = batch.get("id")
            raise FloatingPointError(f"loss became {loss.item()} at step {self.global_step}, batch {batch_idx}"
                                     + (f" (samples {list(ids)[:8]})" if ids is not None else ""))

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        loss, _, _ = self._step(batch)
        self._check_loss(loss, batch, batch_idx)
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=self._batch_size(batch))
        return loss

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        loss, preds, target = self._step(batch)
        self.val_metrics.update(preds, target)
        self.log("val_loss", loss, prog_bar=True, on_epoch=True, batch_size=self._batch_size(batch))

    def _finish_epoch(self, metrics, prefix: str) -> dict[str, Any]:
        """Summarise a metric collection into plain floats, reset it, and log the headline figures."""
        if metrics.confmat.update_count == 0:
            return {}
        summary = summarize(metrics.compute(), self.class_names)
        metrics.reset()
        for k in ("oa", "mf1", "miou", "kappa"):
            v = summary.get(k)
            if v is not None and v == v:
                self.log(f"{prefix}_{k}", float(v), prog_bar=prefix == "val" and k in ("oa", "mf1"))
        return summary

    def on_validation_epoch_end(self) -> None:
        self.last_val = self._finish_epoch(self.val_metrics, "val") or self.last_val

    def test_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        _, preds, target = self._step(batch)
        self.test_metrics.update(preds, target)

    def on_test_epoch_end(self) -> None:
        self.last_test = self._finish_epoch(self.test_metrics, "test") or self.last_test

    @staticmethod
    def _batch_size(batch: Mapping[str, Any]) -> int:
        x = next(iter(batch["inputs"].values()))
        return int(x.shape[0])

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        try:
            trainer = self.trainer
        except RuntimeError:  # not attached to a Trainer (called on its own)
            trainer = None
        total = int(trainer.estimated_stepping_batches) if trainer is not None else 10_000
        return adamw_warmup_cosine(self.model, lr=hp.lr, weight_decay=hp.weight_decay, warmup_steps=hp.warmup_steps,
                                   min_lr=hp.min_lr, total_steps=total)

    # -- export ---------------------------------------------------------------------------------
    def export(self, path: str, extra: Mapping[str, Any] | None = None) -> str:
        """Write the fine-tuned model in our ``.safetensors`` format."""
        colors = [tuple(c) for c in self.hparams.class_colors] if self.hparams.class_colors else None
        return str(save_model(self.model, path, task=self.hparams.task_name, sources=self.sources_meta,
                              class_names=self.class_names, class_colors=colors,
                              frames=self.hparams.frames, extra=dict(extra or {})))
