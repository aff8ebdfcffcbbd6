"""Field-boundary delineation: field extent + boundary heads learnt from parcel instance masks.

The model predicts ``K`` extent classes (default background / field) plus one boundary logit
(``num_classes = K + 1``; ``task_name='boundary'`` tells ``ModelPredictor`` to keep the extent
channels for maps). Targets come from instance ids such as PASTIS's ``instance`` layer
(``label_key: instance``): extent = id > 0, boundary = field pixels with a 4-neighbour of
another id or background. Boundaries are thin and rare, so their loss is a positive-weighted
BCE plus a soft Dice term, added to the extent cross-entropy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torchmetrics.classification import BinaryStatScores

from agrifm.tasks.segmentation import SegmentationTask, dense_target

__all__ = ["BoundaryTask", "boundary_targets"]


def boundary_targets(instance: torch.Tensor, ignore_index: int = -1) -> tuple[torch.Tensor, torch.Tensor]:
    """Instance ids (B, H, W) -> (extent, boundary), int64 (B, H, W) with ``ignore_index`` where
    the id is negative (unknown).

    Boundary: a field pixel (id > 0) whose up/down/left/right neighbour has another id,
    background (0) included. Unknown neighbours and the image edge never make a boundary
    (there is no evidence of an edge there).
    """
    known = instance >= 0
    padded = F.pad(instance[:, None].float(), (1, 1, 1, 1), mode="replicate")[:, 0].long()
    h, w = instance.shape[-2:]
    edge = torch.zeros_like(known)
    for dr, dc in ((0, 1), (2, 1), (1, 0), (1, 2)):
        nb = padded[:, dr:dr + h, dc:dc + w]
        edge |= (nb >= 0) & (nb != instance)
    extent = (instance > 0).long().masked_fill(~known, ignore_index)
    boundary = (edge & (instance > 0)).long().masked_fill(~known, ignore_index)
    return extent, boundary


def _soft_dice(prob: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    return 1.0 - (2.0 * (prob * target).sum() + eps) / (prob.sum() + target.sum() + eps)


class BoundaryTask(SegmentationTask):
    """Extent + boundary; batch as :class:`SegmentationTask` with ``label`` (or ``instance``)
    holding parcel instance ids (0 = background, < 0 = unknown).

    Args:
        class_names: extent classes (default background, field).
        boundary_weight: weight of the boundary loss against the extent cross-entropy.
        pos_weight: BCE weight of boundary pixels; None = the batch's negative/positive ratio
            (clipped to 1..50), which keeps thin boundaries from being ignored.
        dice_weight: weight of the soft Dice term of the boundary loss.
        threshold: boundary probability counted as a boundary in the metrics.
        **kwargs: :class:`SegmentationTask` / :class:`~agrifm.tasks.base.AgriFMTask` arguments.
    """

    def __init__(self, *, class_names: Sequence[str] = ("background", "field"), boundary_weight: float = 1.0,
                 pos_weight: float | None = None, dice_weight: float = 1.0, threshold: float = 0.5,
                 task_name: str = "boundary", **kwargs: Any) -> None:
        super().__init__(class_names=class_names, task_name=task_name, **kwargs)
        self.boundary_weight, self.pos_weight, self.dice_weight = boundary_weight, pos_weight, dice_weight
        self.val_boundary = BinaryStatScores(threshold=threshold, ignore_index=self.ignore_index)
        self.test_boundary = BinaryStatScores(threshold=threshold, ignore_index=self.ignore_index)
        self._boundary_out: tuple[torch.Tensor, torch.Tensor] | None = None

    def _config_overrides(self, num_classes: int) -> dict[str, Any]:
        return {"num_classes": num_classes + 1}  # extent classes + the boundary logit

    def _boundary_loss(self, logit: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        keep = target != self.ignore_index
        if not keep.any():
            return logit.sum() * 0.0
        x, y = logit[keep].float(), target[keep].float()
        pos = y.sum()
        weight = self.pos_weight if self.pos_weight is not None else ((y.numel() - pos) / pos.clamp(min=1)).clamp(1, 50)
        bce = F.binary_cross_entropy_with_logits(x, y, pos_weight=torch.as_tensor(weight, device=x.device))
        return bce + self.dice_weight * _soft_dice(torch.sigmoid(x), y)

    def _step(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits = self.model(batch["inputs"], batch.get("dates"))
        k = len(self.class_names)
        key = "instance" if "instance" in batch else "label"
        ids = dense_target(batch, key, self.reference_source, logits.shape[-2:], self.ignore_index, self.ignore_nodata)
        extent, boundary = boundary_targets(ids, self.ignore_index)
        self._check_classes(extent, batch, k)
        loss = self._ce(logits[:, :k], extent) + self.boundary_weight * self._boundary_loss(logits[:, k], boundary)
        self._boundary_out = (logits[:, k].detach().float().sigmoid(), boundary)
        return loss, logits[:, :k].detach(), extent

    # -- boundary metrics next to the base's extent metrics ---------------------------------
    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        super().validation_step(batch, batch_idx)
        self.val_boundary.update(*self._boundary_out)

    def test_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        super().test_step(batch, batch_idx)
        self.test_boundary.update(*self._boundary_out)

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        self._finish_boundary(self.val_boundary, self.last_val, "val_")

    def on_test_epoch_end(self) -> None:
        super().on_test_epoch_end()
        self._finish_boundary(self.test_boundary, self.last_test, "test_")

    def _finish_boundary(self, metric: BinaryStatScores, summary: dict[str, Any], prefix: str) -> None:
        """Boundary precision/recall/F1 (pixel-exact) into the summary and the logs."""
        if metric.update_count == 0:
            return
        tp, fp, _, fn, _ = (float(v) for v in metric.compute())
        metric.reset()
        scores = {"boundary_precision": tp / (tp + fp) if tp + fp else 0.0,
                  "boundary_recall": tp / (tp + fn) if tp + fn else 0.0,
                  "boundary_f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan")}
        summary.update(scores)
        self.log(f"{prefix}boundary_f1", scores["boundary_f1"], prog_bar=prefix == "val_")

    def predict_step(self, batch: Mapping[str, Any], batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        """Extent probabilities (K channels) then the boundary probability."""
        logits = self.model(batch["inputs"], batch.get("dates")).float()
        k = len(self.class_names)
        return torch.cat([logits[:, :k].softmax(dim=1), logits[:, k:].sigmoid()], dim=1)
