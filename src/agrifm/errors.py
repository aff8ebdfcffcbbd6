"""The project's error type for a user's mistake or a bad input.

Raise :class:`AgrifmError` (or a subclass) with a message that names the file, option, source,
band or shape at fault. The ``agrifm`` dispatcher prints it as one line,
``agrifm <command>: error: <message>``, and exits 2; any other exception is a bug and keeps
its traceback.
"""

from __future__ import annotations


class AgrifmError(Exception):
    """A problem with the user's input or environment, reported as one line (exit 2)."""

    def __str__(self) -> str:  # KeyError-style quoting never leaks into the message
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()
