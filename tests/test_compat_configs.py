"""Published-format config files: the shipped examples, ``_base_`` inheritance, and fine-tuning
from a config whose ``init_cfg`` names pre-trained weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from agrifm.compat import CompatError, ConfigSyntaxError, load_official_config, model_from_official_config

EXAMPLES = Path(__file__).resolve().parents[1] / "configs" / "published"


def test_example_config_is_the_published_model():
    from agrifm.models.agrifm import AgriFM
    from agrifm.models.presets import preset

    names = load_official_config(EXAMPLES / "cropland_mapping.py")
    with torch.device("meta"):
        ours, published = model_from_official_config(names), AgriFM(preset("published"))
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(ours) == count(published) == 196_192_458
    assert ours.config.num_frames == 32 and names["class_names"] == ["other", "cropland"]


def test_tiny_example_inherits_and_runs(one_thread):
    names = load_official_config(EXAMPLES / "cropland_tiny.py")
    s2 = names["model"]["encoders"]["encoders_cfg"]["S2"]
    assert s2["backbone_cfg"]["window_size"] == (8, 7, 7)  # kept from the base
    assert s2["backbone_cfg"]["depths"] == [2, 2, 2, 2] and s2["init_cfg"] is None  # changed by the child
    assert names["model"]["neck"]["feature_size"] == (16, 16) and "_base_" not in names
    model = model_from_official_config(names).eval()
    with torch.no_grad():
        assert model({"S2": torch.randn(1, 32, 10, 32, 32)}).shape == (1, 2, 256, 256)


def test_base_inheritance_rules(tmp_path):
    (tmp_path / "base.py").write_text("a = dict(x=1, y=dict(p=1, q=2))\nb = [1, 2]\nc = 'base'\n")
    (tmp_path / "child.py").write_text("_base_ = 'base.py'\na = dict(y=dict(q=3))\nb = [9]\n")
    (tmp_path / "delete.py").write_text("_base_ = ['base.py']\na = dict(_delete_=True, z=0)\n")
    assert load_official_config(tmp_path / "child.py") == {"a": {"x": 1, "y": {"p": 1, "q": 3}}, "b": [9], "c": "base"}
    assert load_official_config(tmp_path / "delete.py")["a"] == {"z": 0}
    (tmp_path / "loop.py").write_text("_base_ = ['loop.py']\n")
    with pytest.raises(ConfigSyntaxError, match="inherits from itself"):
        load_official_config(tmp_path / "loop.py")
    (tmp_path / "code_base.py").write_text("import os\n")
    (tmp_path / "uses.py").write_text("_base_ = ['code_base.py']\n")
    with pytest.raises(ConfigSyntaxError, match="code_base.py, line 1"):
        load_official_config(tmp_path / "uses.py")


# -- fine-tuning from a published config ---------------------------------------------------


def _tiny_config(tmp_path, init: str | None) -> Path:
    text = (EXAMPLES / "cropland_tiny.py").read_text().replace("init_cfg=None", f"init_cfg=dict(type='Pretrained', checkpoint={init!r})")
    (tmp_path / "cropland_mapping.py").write_text((EXAMPLES / "cropland_mapping.py").read_text())
    path = tmp_path / "tiny.py"
    path.write_text(text)
    return path


def test_fit_loads_the_configs_init_cfg(tmp_path):
    from agrifm.compat.checkpoint import encoder_to_published
    from agrifm.tasks.segmentation import SegmentationTask

    model = model_from_official_config(load_official_config(EXAMPLES / "cropland_tiny.py"))
    enc = model.encoders["S2"]
    torch.nn.init.normal_(enc.patch_emd.proj.weight)
    weights = tmp_path / "AgriFM.pth"
    torch.save(encoder_to_published(enc.backbone.state_dict(), {"S2": enc.patch_emd.state_dict()}, (8, 7, 7)), weights)
    task = SegmentationTask(model=str(_tiny_config(tmp_path, str(weights))), sources=["S2"])
    assert torch.equal(task.model.encoders["S2"].patch_emd.proj.weight, enc.patch_emd.proj.weight)
    assert task.model.config.feature_fusion == "cat" and task.model.config.num_frames == 32


def test_fit_says_when_the_configs_init_cfg_is_missing(tmp_path):
    from agrifm.tasks.segmentation import SegmentationTask

    config = _tiny_config(tmp_path, "Path to weights/AgriFM.pth")
    with pytest.raises(CompatError, match=r"tiny.py: init_cfg names pretrained weights 'Path to weights/AgriFM.pth'.*init_checkpoint"):
        SegmentationTask(model=str(config), sources=["S2"])
