"""Compatibility with the published AgriFM release: configs, checkpoints, key names, quirks.

The release's quirks that our model reproduces are switchable options of the model itself
(``rel_pos='published'``, ``merge_pad='published'``, ``feature_fusion='cat'``); this package
is the one place that turns them on when a published config or checkpoint is read.
"""

from agrifm.compat.checkpoint import LoadReport, load_official_checkpoint, read_checkpoint, read_state_dict
from agrifm.compat.config import ConfigSyntaxError, load_official_config, parse_official_config
from agrifm.compat.errors import CompatError
from agrifm.compat.model import (
    config_from_official, config_init_checkpoint, model_from_official_config, official_init_checkpoint,
    official_model_config, season_lengths,
)

__all__ = [
    "model_from_official_config", "load_official_checkpoint", "load_official_config", "parse_official_config",
    "config_from_official", "official_model_config", "official_init_checkpoint", "config_init_checkpoint", "season_lengths",
    "read_state_dict", "read_checkpoint", "LoadReport", "ConfigSyntaxError", "CompatError",
]
