"""Scene inference, one import away: the names of :mod:`agrifm.predict.run` (``predict_scene``,
``PredictSettings``), :mod:`~agrifm.predict.sources`, :mod:`~agrifm.predict.grid`,
:mod:`~agrifm.predict.blocks`, :mod:`~agrifm.predict.assemble` and :mod:`~agrifm.predict.checks`,
where each job lives (this module holds no code of its own; old import paths keep working).
"""

from __future__ import annotations

from agrifm.predict.assemble import NothingMappedError, assemble, output_paths
from agrifm.predict.blocks import BlockStore
from agrifm.predict.checks import available_memory, memory_estimate, resolve_device
from agrifm.predict.grid import MAX_PIXELS, MAX_UPSAMPLING, OutputGrid, output_grid
from agrifm.predict.run import PredictResult, PredictSettings, predict_scene
from agrifm.predict.sources import Predictor, UnitsWarning, input_fingerprint, units_problem

__all__ = ["Predictor", "PredictResult", "PredictSettings", "OutputGrid", "UnitsWarning", "NothingMappedError",
           "predict_scene", "assemble", "output_grid", "output_paths", "BlockStore", "resolve_device",
           "available_memory", "memory_estimate", "input_fingerprint", "units_problem", "MAX_PIXELS",
           "MAX_UPSAMPLING"]
