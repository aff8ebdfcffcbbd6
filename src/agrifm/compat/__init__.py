"""Compatibility with the published AgriFM release: configs, checkpoints, key names, quirks.

The release's quirks that our model reproduces are switchable options of the model itself
(``rel_pos='published'``, ``merge_pad='published'``, ``feature_fusion='cat'``); this package
is the one place that turns them on when a published config or checkpoint is read.
"""

from agrifm.compat.checkpoint import LoadReport, load_official_checkpoint, read_state_dict
from agrifm.compat.config import ConfigSyntaxError, load_official_config, parse_official_config
from agrifm.compat.model import config_from_official, model_from_official_config

__all__ = [
    "model_from_official_config", "load_official_checkpoint", "load_official_config", "parse_official_config",
    "config_from_official", "read_state_dict", "LoadReport", "ConfigSyntaxError",
]
