"""Shared test helpers: where the data lives, and skipping cleanly when ../shared is absent.

The demo data set (``data/mato_grosso_modis``) ships with the repository, so tests that need
only it always run; the other real data sets and the published-model fixtures live in
``../shared`` beside the checkout, and tests that need them skip when it is absent."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
DATA = SHARED / "data"
FIXTURES = SHARED / "fixtures"
DEMO_DATA = ROOT / "data"  # holds mato_grosso_modis/, shipped with the repository


def need(path: Path) -> Path:
    """Return ``path`` or skip the test with the reason it is missing."""
    if not path.exists():
        pytest.skip(f"{path} is absent (the shared data/fixtures folder sits beside the repo)")
    return path


def benchmark(name: str):
    """A script of benchmarks/ imported as a module (its functions, not its main)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def data_dir() -> Path:
    return need(DATA)


@pytest.fixture
def demo_data_dir() -> Path:
    """The repository's data folder (``mato_grosso_modis/``); never skipped."""
    return DEMO_DATA


@pytest.fixture
def fixtures_dir() -> Path:
    return need(FIXTURES)


@pytest.fixture
def one_thread():
    """One torch thread: on a shared 2-core machine two OpenMP threads stall on each other."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
