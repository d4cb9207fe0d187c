"""Shared test fixtures: paths to the real iMiGUE sample and the golden files."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
IMIGUE = SHARED / "imigue"
GOLDEN_DIR = SHARED / "golden"

sys.path.insert(0, str(Path(__file__).parent))  # tests/golden.py and other test helpers


@pytest.fixture(scope="session")
def imigue_dir() -> Path:
    if not IMIGUE.is_dir():
        pytest.fail(f"the real iMiGUE sample is missing at {IMIGUE}")
    return IMIGUE


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    if not GOLDEN_DIR.is_dir():
        pytest.fail(f"the golden files are missing at {GOLDEN_DIR}")
    return GOLDEN_DIR


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run a test module with one torch thread: steadier than two on the shared 2-core machine, and
    deterministic. Use with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
