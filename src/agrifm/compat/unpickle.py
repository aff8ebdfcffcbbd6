"""Read training checkpoints of the published release without executing them.

mmengine's ``Runner.save_checkpoint`` pickles more than tensors: ``meta`` (the config text),
``message_hub`` (``mmengine.logging.history_buffer.HistoryBuffer`` objects, numpy scalars),
``optimizer`` and ``param_schedulers``. ``torch.load(weights_only=True)`` refuses such files.
:func:`load_inert` reads them with a restricted unpickler instead: tensors, storages and plain
containers are rebuilt; every other global becomes an inert :class:`Placeholder` (never imported,
never called), so nothing in the file runs and mmengine/numpy need not be installed.
"""

from __future__ import annotations

import collections
import pickle
from pathlib import Path
from typing import Any

import torch

__all__ = ["load_inert", "Placeholder"]


class Placeholder:
    """Stands for an object of a class the reader does not rebuild; keeps its arguments as data."""

    _module = "?"
    _name = "?"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs, self.state, self.items = args, kwargs, None, []

    def __setstate__(self, state: Any) -> None:  # BUILD: keep the state as data
        self.state = state

    def __setitem__(self, key: Any, value: Any) -> None:  # SETITEMS on a dict subclass
        self.items.append((key, value))

    def append(self, value: Any) -> None:  # APPENDS on a list subclass
        self.items.append(value)

    def extend(self, values: Any) -> None:
        self.items.extend(values)

    def __repr__(self) -> str:
        return f"<inert {self._module}.{self._name}>"


def _placeholder(module: str, name: str) -> type:
    return type(name if name.isidentifier() else "Placeholder", (Placeholder,), {"_module": module, "_name": name})


def _rebuild_tensor(storage: Any, offset: int, size: Any, stride: Any, *_ignored: Any) -> torch.Tensor:
    """``torch._utils._rebuild_tensor_v2`` without hooks, grad or metadata (those could carry objects)."""
    if not isinstance(storage, torch.storage.TypedStorage):
        raise pickle.UnpicklingError(f"a tensor over {type(storage).__name__}, not a storage")
    return torch._utils._rebuild_tensor(storage, offset, tuple(size), tuple(stride))


def _rebuild_parameter(data: Any, *_ignored: Any) -> Any:
    return data  # a Parameter's tensor; requires_grad and hooks are dropped


_DTYPES = {name: getattr(torch, name) for name in dir(torch) if isinstance(getattr(torch, name, None), torch.dtype)}

# Globals rebuilt for real: tensor reconstruction and plain builtins with no side effects.
_ALLOWED: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch", "Size"): torch.Size,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "slice"): slice,
    ("builtins", "complex"): complex,
    ("builtins", "bytearray"): lambda data=b"", *_: bytearray(data if isinstance(data, (bytes, str)) else b""),
    ("_codecs", "encode"): lambda s, enc="utf-8": s.encode(enc) if isinstance(s, str) and enc in ("latin1", "latin-1", "utf-8") else b"",
    **{("torch", name): dtype for name, dtype in _DTYPES.items()},
}


class _InertUnpickler(pickle.Unpickler):
    """``find_class`` is the only way a pickle reaches code: it hands out the allowlist or placeholders."""

    def find_class(self, module: str, name: str) -> Any:
        return _ALLOWED.get((module, name)) or _placeholder(module, name)


class _PickleModule:
    """The ``pickle_module`` torch.load drives: our unpickler (torch adds its storage loading)."""

    Unpickler = _InertUnpickler
    UnpicklingError = pickle.UnpicklingError

    @staticmethod
    def load(file: Any, **kwargs: Any) -> Any:
        return _InertUnpickler(file, **kwargs).load()


def load_inert(path: str | Path) -> Any:
    """The object a torch checkpoint holds, with tensors rebuilt and every other class inert.

    Nothing from the file is imported or called: torch's loader resolves storages, and every
    other global goes through the restricted ``find_class`` above.
    """
    return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_PickleModule)
