"""Shared test fixtures: the real iMiGUE sample and the golden files (found by tests/shared_paths.py)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/golden.py and other test helpers

from shared_paths import GOLDEN, IMIGUE, require  # noqa: E402 - needs the path line above


@pytest.fixture(scope="session")
def imigue_dir() -> Path:
    """The real iMiGUE sample in the shared folder; tests that use it skip when it is not here."""
    return require(IMIGUE, "the real iMiGUE sample files")


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    """The golden files in the shared folder; tests that use it skip when it is not here."""
    return require(GOLDEN, "the golden files")


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run a test module with one torch thread: steadier than two on the shared 2-core machine, and
    deterministic. Use with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
