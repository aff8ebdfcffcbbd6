"""AgriFM: a multi-source temporal remote-sensing foundation model for agriculture mapping.

Importing the package needs only torch and numpy; raster/table readers are imported lazily.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "load_model", "save_model", "AgriFM", "build_model"]


def __getattr__(name: str) -> Any:  # lazy: keep `import agrifm` light
    if name in ("load_model", "save_model"):
        from agrifm import checkpoint

        return getattr(checkpoint, name)
    if name in ("AgriFM", "build_model"):
        from agrifm.models import agrifm as _m

        return getattr(_m, name)
    raise AttributeError(f"module 'agrifm' has no attribute {name!r}")
