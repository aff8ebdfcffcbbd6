"""The compat layer's error type: a published config or checkpoint that cannot be read or does not fit."""

from __future__ import annotations

from agrifm.errors import AgrifmError

__all__ = ["CompatError"]


class CompatError(AgrifmError, ValueError):
    """A published-format file agrifm cannot use; the message names the file and the problem."""
