"""Segmentation and boundary tasks: sparse labels, NaN guard, fine-tuning paths (tiny, synthetic)."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from agrifm.data.datasets import collate
from agrifm.tasks.boundary import BoundaryTask, boundary_targets
from agrifm.tasks.segmentation import SegmentationTask
pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {"preset": "small", "embed_dim": 8, "depths": [1, 1, 1, 1], "decoder_dim": 16, "patch_size": [1, 2, 2]}
CLASSES = ["a", "b", "c"]


def _item(i: int, label: torch.Tensor | None = None, size: int = 16) -> dict:
    g = torch.Generator().manual_seed(i)
    if label is None:
        label = torch.full((size, size), -1, dtype=torch.long)
        label[3, 4], label[10, 12] = 1, 2
    return {"inputs": {"S2": torch.randn(3, 10, size, size, generator=g)},
            "dates": {"S2": torch.tensor([19000, 19010, 19020])},
            "nodata": {"S2": torch.zeros(size, size, dtype=torch.bool)}, "label": label, "id": f"s{i}"}


def _batch(n: int = 2, **kw) -> dict:
    return collate([_item(i, **kw) for i in range(n)])


def _task(**kw) -> SegmentationTask:
    torch.manual_seed(0)
    return SegmentationTask(model=TINY, class_names=CLASSES, **kw)


def _fit(task: L.LightningModule, steps: int = 2) -> None:
    items = [_item(i) for i in range(4)]
    trainer = L.Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu")
    trainer.fit(task, train_dataloaders=DataLoader(items, batch_size=2, collate_fn=collate))


def test_sparse_labels_only_labelled_pixels_count():
    task = _task()
    batch = _batch()
    loss, logits, target = task._step(batch)
    assert logits.shape == (2, 3, 16, 16) and torch.isfinite(loss)
    expected = torch.nn.functional.cross_entropy(logits[:, :, [3, 10], [4, 12]], target[:, [3, 10], [4, 12]])
    assert torch.allclose(loss, expected, atol=1e-5)


def test_batch_without_labels_gives_zero_loss_not_nan():
    loss, _, _ = _task()._step(_batch(label=torch.full((16, 16), -1)))
    assert loss.item() == 0.0 and loss.requires_grad


def test_nodata_pixels_are_ignored_and_bad_labels_named():
    task = _task()
    batch = _batch()
    batch["nodata"]["S2"][:, 3, 4] = True
    _, _, target = task._step(batch)
    assert (target[:, 3, 4] == -1).all() and (target[:, 10, 12] == 2).all()
    batch["label"][0, 0, 0] = 7
    with pytest.raises(ValueError, match=r"labels \[7\] are outside 0..2.*s0"):
        task._step(batch)


def test_class_weights_must_match_classes():
    with pytest.raises(ValueError, match="2 values for 3 classes"):
        _task(class_weights=[1.0, 2.0])
    loss, _, _ = _task(class_weights=[1.0, 2.0, 3.0])._step(_batch())
    assert torch.isfinite(loss)


def test_nan_guard_names_source_or_batch():
    task = _task()
    batch = _batch()
    batch["inputs"]["S2"][0, 1, 2, 3, 4] = float("inf")
    with pytest.raises(ValueError, match=r"source 'S2': 1 NaN/inf"):
        task.training_step(batch, 0)
    with torch.no_grad():
        task.model.encoders["S2"].patch_emd.proj.weight.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match=r"loss became nan at step 0, batch 5 \(samples \['s0', 's1'\]\)"):
        task.training_step(_batch(), 5)


def test_frozen_stages_keep_their_weights():
    task = _task(freeze_stages=["embed", 0])
    enc = task.model.encoders["S2"]
    frozen = {n: p.detach().clone()
              for n, p in [*enc.patch_emd.named_parameters(), *enc.backbone.layers[0].named_parameters()]}
    before_last = next(enc.backbone.layers[-1].parameters()).detach().clone()
    _fit(task, steps=1)
    after = dict([*enc.patch_emd.named_parameters(), *enc.backbone.layers[0].named_parameters()])
    assert all(torch.equal(frozen[n], after[n]) for n in frozen)
    assert not torch.equal(before_last, next(enc.backbone.layers[-1].parameters()))


def test_init_from_our_checkpoint_keeps_encoder_and_skips_other_head(tmp_path):
    src = _task()
    path = src.export(str(tmp_path / "model.safetensors"))
    torch.manual_seed(1)
    new = SegmentationTask(model=TINY, class_names=["x", "y"], init_checkpoint=path)  # 2 classes: head differs
    for k, v in src.model.encoders.state_dict().items():
        assert torch.equal(v, new.model.encoders.state_dict()[k]), k


def test_init_from_published_encoder_file(tmp_path):
    from agrifm.compat.checkpoint import ours_to_official

    src = _task()
    published = {}
    for k, v in src.model.state_dict().items():
        key = ours_to_official(k)
        if key.startswith("encoders.encoders.S2.backbone."):
            published["backbone." + key[len("encoders.encoders.S2.backbone."):]] = v
        elif key.startswith("encoders.encoders.S2.patch_emd."):
            published["S2_patch_emd." + key[len("encoders.encoders.S2.patch_emd."):]] = v
    path = tmp_path / "pretrained.pth"
    torch.save({"state_dict": published}, path)
    torch.manual_seed(2)
    new = SegmentationTask(model=TINY, class_names=CLASSES, init_checkpoint=str(path))
    assert torch.equal(new.model.encoders["S2"].patch_emd.proj.weight, src.model.encoders["S2"].patch_emd.proj.weight)
    assert torch.equal(new.model.encoders["S2"].backbone.norm.weight, src.model.encoders["S2"].backbone.norm.weight)


def test_boundary_targets_from_instances():
    ids = torch.tensor([[[0, 0, 0, 0, 0],
                         [0, 1, 1, 2, 2],
                         [0, 1, 1, 2, 2],
                         [0, 1, 1, -1, 2]]])
    extent, boundary = boundary_targets(ids)
    assert extent.tolist() == [[[0, 0, 0, 0, 0], [0, 1, 1, 1, 1], [0, 1, 1, 1, 1], [0, 1, 1, -1, 1]]]
    # field pixels next to background or another parcel; unknown neighbours and the image edge are not edges
    assert boundary.tolist() == [[[0, 0, 0, 0, 0], [0, 1, 1, 1, 1], [0, 1, 1, 1, 0], [0, 1, 0, -1, 0]]]


def test_boundary_task_step_and_metrics():
    torch.manual_seed(0)
    task = BoundaryTask(model=TINY)
    assert task.model.config.num_classes == 3 and task.hparams.task_name == "boundary"
    inst = torch.zeros(16, 16, dtype=torch.long)
    inst[2:8, 2:8], inst[8:14, 2:14] = 4, 9
    batch = _batch(label=inst)
    loss, extent_logits, extent = task._step(batch)
    assert torch.isfinite(loss) and extent_logits.shape == (2, 2, 16, 16) and int(extent.sum()) == 2 * (36 + 72)
    task.val_metrics.update(extent_logits, extent)
    task.val_boundary.update(*task._boundary_out)
    task._finish_boundary(task.val_boundary, task.last_val, "val_")
    assert 0.0 <= task.last_val["boundary_f1"] <= 1.0
    assert task.predict_step(batch, 0).shape == (2, 3, 16, 16)
