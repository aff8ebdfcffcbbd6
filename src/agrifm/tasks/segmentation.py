"""Dense crop mapping: per-pixel classes from full or sparse label rasters.

Sparse labels (a few labelled points/polygons per chip, everything else ``ignore_index``) are
the common case for crop-type mapping: only labelled pixels enter the loss and the metrics. A
batch without any labelled pixel gives a zero loss (not the NaN of an empty mean), so a
sparse chip cannot trip the NaN guard.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from agrifm.tasks.base import AgriFMTask

__all__ = ["SegmentationTask", "dense_target"]


def dense_target(batch: Mapping[str, Any], key: str, reference: str, out_hw: Sequence[int],
                 ignore_index: int, ignore_nodata: bool) -> torch.Tensor:
    """Labels ``batch[key]`` (B, H, W) as int64, checked against the output size; pixels the
    reference source never observed (``batch['nodata'][reference]``) are ignored when
    ``ignore_nodata`` (their inputs are the band mean, their label says nothing about them)."""
    target = batch[key].long()
    if target.ndim != 3 or tuple(target.shape[-2:]) != tuple(out_hw):
        raise ValueError(f"batch[{key!r}] has shape {tuple(target.shape)}, expected (B, {out_hw[0]}, {out_hw[1]}) "
                         f"= the size of source {reference!r} (ids {_ids(batch)})")
    nodata = (batch.get("nodata") or {}).get(reference)
    if ignore_nodata and nodata is not None and tuple(nodata.shape) == tuple(target.shape):
        target = target.masked_fill(nodata.bool(), ignore_index)
    return target


def _ids(batch: Mapping[str, Any]) -> list[str]:
    return list(batch.get("id") or [])[:8]


class SegmentationTask(AgriFMTask):
    """Per-pixel classification; batch: ``inputs`` {src: (B, T, C, H, W)}, ``dates`` {src: (B, T)},
    ``label`` (B, H, W) with ``ignore_index`` for unlabelled pixels, ``nodata`` {src: (B, H, W)}.

    Args:
        ignore_nodata: ignore labels where the first (reference) source has no valid observation.
        task_name: stored in the exported checkpoint.
        **kwargs: :class:`~agrifm.tasks.base.AgriFMTask` arguments (model preset 'small' by
            default: 'mean' temporal fusion, so any number of frames).
    """

    def __init__(self, *, ignore_nodata: bool = True, task_name: str = "segmentation", **kwargs: Any) -> None:
        super().__init__(task_name=task_name, **kwargs)
        self.ignore_nodata = ignore_nodata

    @property
    def reference_source(self) -> str:
        """The source whose grid the output (and the labels) are on."""
        return self.model.config.decoder_sources[0]

    def _target(self, batch: Mapping[str, Any], logits: torch.Tensor, key: str = "label") -> torch.Tensor:
        target = dense_target(batch, key, self.reference_source, logits.shape[-2:], self.ignore_index,
                              self.ignore_nodata)
        self._check_classes(target, batch, len(self.class_names))
        return target

    def _ce(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Cross-entropy over labelled pixels; 0 (with a graph) when there are none."""
        if not (target != self.ignore_index).any():
            return logits.sum() * 0.0
        return F.cross_entropy(logits.float(), target, weight=self.class_weights, ignore_index=self.ignore_index,
                               label_smoothing=self.hparams.label_smoothing)

    def _step(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits = self.model(batch["inputs"], batch.get("dates"))
        target = self._target(batch, logits)
        return self._ce(logits, target), logits.detach(), target

    def predict_step(self, batch: Mapping[str, Any], batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        """Class probabilities (B, K, H, W)."""
        return self.model(batch["inputs"], batch.get("dates")).float().softmax(dim=1)
