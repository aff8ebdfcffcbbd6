"""Atomic outputs: a failed write leaves the previous file and no temporary behind."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from agrifm.io import atomic_output, write_text_atomic


def test_atomic_output_replaces_only_on_success(tmp_path) -> None:
    path = tmp_path / "sub" / "out.json"
    write_text_atomic(path, "old")
    with pytest.raises(RuntimeError, match="killed"):
        with atomic_output(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")
    assert path.read_text() == "old" and sorted(p.name for p in path.parent.iterdir()) == ["out.json"]
    write_text_atomic(path, "new", fsync=True)
    assert path.read_text() == "new"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # an ordinary file, not mkstemp's 0600


def test_atomic_output_keeps_the_suffix_writers_need(tmp_path) -> None:
    path = tmp_path / "block.npz"
    with atomic_output(path, suffix=".tmp.npz") as tmp:
        assert tmp.name.endswith(".tmp.npz") and tmp.parent == tmp_path
        np.savez(tmp, a=np.arange(3))  # np.savez would append .npz to any other name
    with np.load(path) as z:
        np.testing.assert_array_equal(z["a"], np.arange(3))
    assert [p.name for p in tmp_path.iterdir()] == ["block.npz"]
