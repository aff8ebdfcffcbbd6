"""The project's error types for a user's mistake or a bad input.

Raise :class:`AgrifmError` (or a subclass) with a message that names the file, option, source,
band or shape at fault. The ``agrifm`` dispatcher prints it as one line,
``agrifm <command>: error: <message>``, and exits 2; any other exception is a bug and keeps
its traceback (plus a line saying where to report it).

The subclasses keep the built-in type a caller may already catch: :class:`InputError` is a
``ValueError``, :class:`OutputExistsError` a ``FileExistsError``, :class:`NameNotFoundError`
a ``KeyError``, :class:`TooLargeError` a ``MemoryError``.
"""

from __future__ import annotations

__all__ = ["AgrifmError", "InputError", "OutputExistsError", "NameNotFoundError", "TooLargeError",
           "require_positive", "user_input"]


class AgrifmError(Exception):
    """A problem with the user's input or environment, reported as one line (exit 2)."""

    def __str__(self) -> str:  # KeyError-style quoting never leaks into the message
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()


class InputError(AgrifmError, ValueError):
    """A value, file content, shape or option that cannot be used as given."""


class OutputExistsError(AgrifmError, FileExistsError):
    """An output exists and the caller did not ask to replace it (``--overwrite``)."""


class NameNotFoundError(AgrifmError, KeyError):
    """An unknown name (source, preset, band, class, column)."""


class TooLargeError(AgrifmError, MemoryError):
    """A request whose estimated size cannot fit (refused before allocating; names the option)."""


def require_positive(**options: float | int | None) -> None:
    """Refuse options that must be >= 1 (``None`` is skipped): ``require_positive(batch_size=0)``
    -> ``InputError('--batch-size must be a positive number, got 0')``."""
    for name, value in options.items():
        if value is not None and not value > 0:
            raise InputError(f"--{name.replace('_', '-')} must be a positive number, got {value}")


class user_input:  # noqa: N801 - used as a context manager: ``with user_input("--data"):``
    """Treat a ``ValueError``/``KeyError`` raised inside as a problem with the user's input:
    re-raised as :class:`InputError` (same message, ``what`` prefixed) for the one-line report.

    For the boundary where a command hands the user's files to library code whose checks
    raise the built-in types; errors that are already :class:`AgrifmError` pass unchanged.
    """

    def __init__(self, what: str | None = None) -> None:
        self.what = what

    def __enter__(self) -> "user_input":
        return self

    def __exit__(self, kind: type | None, err: BaseException | None, tb: object) -> bool:
        if err is None or isinstance(err, AgrifmError) or not isinstance(err, (ValueError, KeyError)):
            return False
        message = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
        raise InputError(f"{self.what}: {message}" if self.what and self.what not in message else message) from err
