"""Classification metrics for crop maps and pixel time series.

Two layers, one source of truth:

* :func:`classification_metrics` builds a ``torchmetrics.MetricCollection`` for streaming
  accumulation (training/validation loops, Lightning logging). It accepts dense maps
  ``(B, K, H, W)`` logits vs ``(B, H, W)`` labels as well as ``(B, K)`` vs ``(B,)``.
* :func:`summarize` / :func:`metrics_from_confusion` turn the accumulated **confusion matrix**
  into plain Python floats for reports. Every reported figure (OA, kappa, per-class P/R/F1/IoU,
  macro means) derives from that one matrix, so a report can never disagree with itself.

Confusion matrices are ``cm[true, predicted]`` (rows = reference, columns = prediction), as in
torchmetrics and scikit-learn.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from torch import Tensor
from torchmetrics import Metric, MetricCollection  # optional dep (``train`` extra); tasks only
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassCohenKappa,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassJaccardIndex,
    MulticlassPrecision,
    MulticlassRecall,
)

__all__ = ["classification_metrics", "summarize", "metrics_from_confusion", "PixelMetricCollection"]

CONFMAT_KEY = "confmat"


def _to_pixels(preds: Tensor, target: Tensor, ignore_index: int) -> tuple[Tensor, Tensor]:
    """Flatten predictions/labels to 1-D pixel vectors and drop ``ignore_index`` pixels.

    ``preds`` may be logits/probabilities with the class axis at dim 1 (``target.ndim + 1``
    dims) or already hard labels (same shape as ``target``). Doing the argmax and the ignore
    filtering once here keeps every metric of the collection cheap and consistent.
    """
    if preds.ndim == target.ndim + 1:
        if preds.shape[0] != target.shape[0] or preds.shape[2:] != target.shape[1:]:
            raise ValueError(
                f"logits of shape {tuple(preds.shape)} (B, K, ...) do not match labels of shape "
                f"{tuple(target.shape)} (B, ...)"
            )
        preds = preds.argmax(dim=1)
    elif preds.shape != target.shape:
        raise ValueError(
            f"predictions of shape {tuple(preds.shape)} fit neither labels {tuple(target.shape)} "
            "(hard labels) nor (B, K, ...) logits"
        )
    preds, target = preds.reshape(-1), target.reshape(-1).long()
    keep = target != ignore_index
    return preds[keep].long(), target[keep]


class PixelMetricCollection(MetricCollection):
    """``MetricCollection`` that flattens dense inputs to pixels and drops ignored labels
    before every ``update``/``forward`` (so the wrapped metrics never see ``ignore_index``).

    A batch whose labels are all ``ignore_index`` (common with sparse labels) is skipped:
    ``update`` adds nothing and ``forward`` returns ``{}`` (torchmetrics cannot take 0 samples).
    """

    def __init__(self, metrics: dict[str, Metric], *, ignore_index: int = -1, prefix: str = "") -> None:
        super().__init__(metrics, prefix=prefix or None)
        self.ignore_index = ignore_index

    def update(self, preds: Tensor, target: Tensor) -> None:  # type: ignore[override]
        preds, target = _to_pixels(preds, target, self.ignore_index)
        if target.numel():
            super().update(preds, target)

    def forward(self, preds: Tensor, target: Tensor) -> dict[str, Any]:  # type: ignore[override]
        preds, target = _to_pixels(preds, target, self.ignore_index)
        return super().forward(preds, target) if target.numel() else {}


def classification_metrics(num_classes: int, ignore_index: int = -1, prefix: str = "") -> PixelMetricCollection:
    """Streaming metric collection for ``num_classes``-way classification.

    Keys (after ``prefix``): ``oa`` (micro accuracy), ``precision``/``recall``/``f1`` (per class,
    vectors of length K), ``mf1`` (macro F1), ``miou`` (macro Jaccard), ``kappa`` (Cohen) and
    ``confmat`` (K x K counts, rows = reference).

    torchmetrics' macro means already skip classes absent from both labels and predictions
    (``tp + fp + fn == 0``), matching :func:`metrics_from_confusion`; its per-class vectors,
    however, report such classes as 0. Use :func:`summarize` for reports: it gives them NaN.
    Per-class vectors cannot be logged as scalars; log ``oa/mf1/miou/kappa`` and summarise the rest.
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    # Ignored pixels are removed before update, so the metrics themselves see none.
    k = {"num_classes": num_classes}
    metrics = {
        "oa": MulticlassAccuracy(average="micro", **k),
        "precision": MulticlassPrecision(average=None, **k),
        "recall": MulticlassRecall(average=None, **k),
        "f1": MulticlassF1Score(average=None, **k),
        "mf1": MulticlassF1Score(average="macro", **k),
        "miou": MulticlassJaccardIndex(average="macro", **k),
        "kappa": MulticlassCohenKappa(**k),
        CONFMAT_KEY: MulticlassConfusionMatrix(**k),
    }
    return PixelMetricCollection(metrics, ignore_index=ignore_index, prefix=prefix)


def _safe_ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den`` with 0 where ``den == 0`` (sklearn's and torchmetrics' zero_division=0)."""
    return np.divide(num, den, out=np.zeros_like(num, dtype=np.float64), where=den > 0)


def metrics_from_confusion(
    cm: np.ndarray | Tensor | Sequence[Sequence[int]], class_names: Sequence[str]
) -> dict[str, Any]:
    """All report figures from one confusion matrix ``cm[true, predicted]``.

    Absent-class rule: a class with no reference **and** no predicted sample
    (``tp + fp + fn == 0``) has undefined P/R/F1/IoU; it is reported as NaN (``null`` in JSON)
    and excluded from the macro means ``mf1``/``miou``. A class that occurs on only one side
    gets 0 for the undefined ratio (precision when never predicted, recall when never in the
    reference), as it is a genuine error. ``kappa`` is NaN when chance agreement is 1 (a single
    class everywhere) and ``oa`` is NaN for an empty matrix.

    Returns plain Python types: ``oa, mf1, miou, kappa`` floats; ``per_class_{precision,recall,
    f1,iou}`` and ``support`` (reference count) as ``{name: value}``; ``confusion_matrix`` as
    nested int lists; ``n`` the number of counted samples; ``class_names``.
    """
    cm = np.asarray(cm.detach().cpu() if isinstance(cm, Tensor) else cm)
    names = [str(c) for c in class_names]
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion matrix must be square (K, K), got shape {cm.shape}")
    if cm.shape[0] != len(names):
        raise ValueError(f"confusion matrix is {cm.shape[0]}x{cm.shape[1]} but {len(names)} class names were given")
    if np.any(cm < 0) or not np.all(np.isfinite(cm)):
        raise ValueError("confusion matrix must hold finite non-negative counts")
    cm = cm.astype(np.float64)

    tp = np.diag(cm)
    ref = cm.sum(axis=1)  # tp + fn
    pred = cm.sum(axis=0)  # tp + fp
    n = cm.sum()
    absent = (ref + pred) == 0

    precision = _safe_ratio(tp, pred)
    recall = _safe_ratio(tp, ref)
    f1 = _safe_ratio(2 * tp, ref + pred)
    iou = _safe_ratio(tp, ref + pred - tp)
    for arr in (precision, recall, f1, iou):
        arr[absent] = np.nan

    present = ~absent
    oa = float(tp.sum() / n) if n > 0 else math.nan
    pe = float((ref * pred).sum() / n**2) if n > 0 else math.nan
    kappa = (oa - pe) / (1.0 - pe) if n > 0 and pe < 1.0 else math.nan

    def per_class(v: np.ndarray) -> dict[str, float]:
        return {name: float(x) for name, x in zip(names, v, strict=True)}

    return {
        "oa": oa,
        "mf1": float(f1[present].mean()) if present.any() else math.nan,
        "miou": float(iou[present].mean()) if present.any() else math.nan,
        "kappa": float(kappa),
        "per_class_precision": per_class(precision),
        "per_class_recall": per_class(recall),
        "per_class_f1": per_class(f1),
        "per_class_iou": per_class(iou),
        "support": {name: int(s) for name, s in zip(names, ref, strict=True)},
        "confusion_matrix": cm.astype(np.int64).tolist(),
        "n": int(n),
        "class_names": names,
    }


def summarize(collection_or_computed: Any, class_names: Sequence[str]) -> dict[str, Any]:
    """Plain-float summary of a metric collection (or of its ``compute()`` result).

    Only the confusion matrix is read; everything is recomputed by
    :func:`metrics_from_confusion` (see there for the absent-class rule), so summaries are
    identical whether they come from torchmetrics or from a saved matrix.
    """
    computed = collection_or_computed
    if hasattr(computed, "compute") and callable(computed.compute):
        computed = computed.compute()
    if not isinstance(computed, Mapping):
        kind = type(collection_or_computed).__name__
        raise TypeError(f"expected a MetricCollection or its computed dict, got {kind}")
    keys = [k for k in computed if str(k).endswith(CONFMAT_KEY)]
    if len(keys) != 1:
        raise KeyError(f"expected exactly one '*{CONFMAT_KEY}' entry, found {keys} among {list(computed)}")
    return metrics_from_confusion(computed[keys[0]], class_names)
