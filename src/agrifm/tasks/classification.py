"""Point / parcel classification from the AgriFM backbone (a pooled head).

The paper lists dense-only output as a limitation; this task classifies a pixel's time series
((T, C, 1, 1) inputs) or a parcel (a chip plus a parcel mask that weights the pooling).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F

from agrifm.tasks.base import AgriFMTask

__all__ = ["ClassificationTask"]


class ClassificationTask(AgriFMTask):
    """Batch: ``inputs`` {src: (B, T, C, H, W)}, ``dates`` {src: (B, T)}, ``label`` (B,), optional ``weights`` (B, H, W)."""

    def __init__(self, model: Any = "point-small", *args: Any, input_noise: float = 0.0,
                 task_name: str = "classification", **kwargs: Any) -> None:
        super().__init__(model, *args, task_name=task_name, **kwargs)
        self.input_noise = input_noise

    def _config_overrides(self, num_classes: int) -> dict[str, Any]:
        return {"num_classes": num_classes, "head": "classification"}

    def _augment(self, batch: Mapping[str, Any]) -> tuple[dict, dict | None]:
        """Noise in normalised units (the deployed imagery is rawer than smoothed samples)."""
        inputs = dict(batch["inputs"])
        dates = batch.get("dates")
        if self.training and self.input_noise > 0:
            inputs = {k: v + self.input_noise * torch.randn_like(v) for k, v in inputs.items()}
        return inputs, dates

    def _step(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        inputs, dates = self._augment(batch)
        logits = self.model(inputs, dates, weights=batch.get("weights"))
        target = batch["label"].long()
        self._check_classes(target, batch, len(self.class_names))
        loss = F.cross_entropy(logits, target, weight=self.class_weights, ignore_index=self.ignore_index, label_smoothing=self.hparams.label_smoothing)
        return loss, logits.detach(), target

    @torch.no_grad()
    def add_logit_bias(self, bias: Sequence[float]) -> None:
        """Add ``bias`` (one value per class) to the classifier's output bias, in place.

        Folding a decision correction into the weights keeps every consumer of the checkpoint
        (``predict``, the demo, exported ``.safetensors``) making the same decision.
        """
        members = getattr(self.model, "members", [self.model])  # an ensemble: every member
        for model in members:
            last = model.head.mlp[-1]
            b = torch.as_tensor(bias, dtype=last.bias.dtype, device=last.bias.device)
            if b.shape != last.bias.shape:
                raise ValueError(f"logit bias has {b.numel()} values for {last.bias.numel()} classes {self.class_names}")
            last.bias += b

    def predict_step(self, batch: Mapping[str, Any], batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        return self.model(batch["inputs"], batch.get("dates"), weights=batch.get("weights")).softmax(dim=1)
