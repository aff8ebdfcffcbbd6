"""Metrics on hand-computed confusion matrices, ignore/absent-class rules, and the report writer."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from agrifm.tasks.metrics import classification_metrics, metrics_from_confusion, summarize
from agrifm.tasks.report import write_report

# cm[true, pred]; n = 16, diagonal 12, row sums (6, 6, 4), column sums (7, 4, 5).
CM = np.array([[5, 1, 0], [2, 3, 1], [0, 0, 4]])
NAMES = ["a", "b", "c"]


def _pairs(cm: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(preds, targets) label vectors realising confusion matrix ``cm``."""
    t, p = zip(*[(i, j) for i in range(len(cm)) for j in range(len(cm)) for _ in range(cm[i, j])], strict=True)
    return torch.tensor(p), torch.tensor(t)


def _one_hot_logits(preds: torch.Tensor, k: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(preds, k).float()


def test_hand_computed_values() -> None:
    m = metrics_from_confusion(CM, NAMES)
    assert m["oa"] == pytest.approx(12 / 16)
    # p_e = (6*7 + 6*4 + 4*5) / 16^2 = 86/256 -> kappa = (192 - 86) / (256 - 86) = 53/85
    assert m["kappa"] == pytest.approx(53 / 85)
    f1 = [10 / 13, 6 / 10, 8 / 9]
    assert list(m["per_class_f1"].values()) == pytest.approx(f1)
    assert list(m["per_class_precision"].values()) == pytest.approx([5 / 7, 3 / 4, 4 / 5])
    assert list(m["per_class_recall"].values()) == pytest.approx([5 / 6, 1 / 2, 1.0])
    assert m["mf1"] == pytest.approx(sum(f1) / 3)
    assert m["miou"] == pytest.approx((5 / 8 + 3 / 7 + 4 / 5) / 3)
    assert m["n"] == 16 and m["confusion_matrix"] == CM.tolist() and m["support"] == {"a": 6, "b": 6, "c": 4}


def test_collection_matches_confusion_path_and_sklearn() -> None:
    from sklearn.metrics import cohen_kappa_score, f1_score

    preds, target = _pairs(CM)
    col = classification_metrics(3, prefix="val/")
    col.update(_one_hot_logits(preds[:7], 3), target[:7])  # two batches: accumulation
    col.update(preds[7:], target[7:])  # hard labels are accepted too
    computed = col.compute()
    s = summarize(col, NAMES)
    assert s == summarize(computed, NAMES)
    assert s["confusion_matrix"] == CM.tolist()
    for key in ("oa", "mf1", "miou", "kappa"):
        assert float(computed[f"val/{key}"]) == pytest.approx(s[key], abs=1e-6), key
    assert s["kappa"] == pytest.approx(cohen_kappa_score(target, preds))
    assert s["mf1"] == pytest.approx(f1_score(target, preds, average="macro"))


def test_dense_maps_and_ignore_index() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 5, 6, generator=g)
    target = torch.randint(0, 4, (2, 5, 6), generator=g)
    target[:, :2] = -1  # sparse labels: 24 of 60 pixels unlabelled
    col = classification_metrics(4)
    col.update(logits, target)
    s = summarize(col, list("wxyz"))
    keep = target >= 0
    expected = np.zeros((4, 4), int)
    np.add.at(expected, (target[keep].numpy(), logits.argmax(1)[keep].numpy()), 1)
    assert s["n"] == 36 and s["confusion_matrix"] == expected.tolist()
    # A batch with nothing labelled is skipped rather than crashing torchmetrics.
    assert col(logits, torch.full_like(target, -1)) == {}
    assert summarize(col, list("wxyz"))["n"] == 36


def test_absent_classes_are_nan_and_excluded() -> None:
    # class 'd' absent from reference and predictions; class 'c' only predicted (a false positive).
    cm = np.array([[3, 0, 1, 0], [0, 2, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    s = metrics_from_confusion(cm, list("abcd"))
    assert math.isnan(s["per_class_f1"]["d"]) and math.isnan(s["per_class_precision"]["d"])
    assert s["per_class_f1"]["c"] == 0.0 and s["per_class_recall"]["c"] == 0.0
    assert s["mf1"] == pytest.approx((6 / 7 + 1.0 + 0.0) / 3)
    assert s["miou"] == pytest.approx((3 / 4 + 1.0 + 0.0) / 3)
    # torchmetrics' macro means follow the same rule (guards against a behaviour change upstream).
    preds, target = _pairs(cm)
    computed = classification_metrics(4)(preds, target)
    assert float(computed["mf1"]) == pytest.approx(s["mf1"], abs=1e-6)
    assert float(computed["miou"]) == pytest.approx(s["miou"], abs=1e-6)


def test_degenerate_and_invalid_inputs() -> None:
    single = metrics_from_confusion([[5, 0], [0, 0]], ["a", "b"])
    assert single["oa"] == 1.0 and math.isnan(single["kappa"]) and math.isnan(single["per_class_f1"]["b"])
    assert math.isnan(metrics_from_confusion(np.zeros((2, 2)), ["a", "b"])["oa"])
    with pytest.raises(ValueError, match="2 class names"):
        metrics_from_confusion(CM, ["a", "b"])
    with pytest.raises(ValueError, match="square"):
        metrics_from_confusion(np.zeros((2, 3)), ["a", "b"])
    with pytest.raises(ValueError, match=r"\(2, 3, 5\).*\(2, 4\)"):
        classification_metrics(3).update(torch.zeros(2, 3, 5), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(KeyError, match="confmat"):
        summarize({"oa": torch.tensor(1.0)}, NAMES)


def _strict_json(path: Path) -> dict:
    def reject(token: str) -> None:
        raise ValueError(f"non-standard JSON token {token}")

    return json.loads(path.read_text(encoding="utf-8"), parse_constant=reject)


def test_write_report(tmp_path: Path) -> None:
    cm = np.array([[3, 0, 0, 1], [0, 2, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0]])  # Pasture absent
    names = ["Cerrado", "Forest", "Pasture", "Soy_Corn"]
    metrics = metrics_from_confusion(cm, names)
    out = tmp_path / "report"
    paths = write_report(metrics, out, title="Test run", class_names=names, extra={"seed": 0})
    expected = ["confusion_matrix.png", "metrics.json", "per_class_f1.png", "report.md"]
    assert sorted(p.name for p in out.iterdir()) == expected  # no temporary file left behind
    data = _strict_json(paths["metrics.json"])
    assert data["title"] == "Test run" and data["extra"] == {"seed": 0}
    assert data["oa"] == pytest.approx(5 / 7) and data["per_class_f1"]["Pasture"] is None
    md = paths["report.md"].read_text(encoding="utf-8")
    assert "| Pasture | 0 | n/a | n/a | n/a |" in md and "Cohen's kappa" in md
    for name in ("confusion_matrix.png", "per_class_f1.png"):
        assert paths[name].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="3 class names"):
        write_report(metrics, out, title="x", class_names=names[:3])
