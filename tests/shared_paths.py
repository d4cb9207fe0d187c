"""Where the tests find the project's shared folder: the real iMiGUE sample, the golden files, the
real-world cases. The one place that resolves it; conftest.py and golden.py import from here.

The shared folder sits beside the checkout (`<checkout>/../shared`); the environment variable
MIGFUSE_SHARED points the tests at another one. Without it, tests that need it skip and say why
(`require`), so a bare checkout still runs everything else.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_OVERRIDE = os.environ.get("MIGFUSE_SHARED")
SHARED = Path(_OVERRIDE) if _OVERRIDE else ROOT.parent / "shared"
# How skip reasons name the folder: the usual relative place, or the path the variable gave.
_SHOWN = _OVERRIDE if _OVERRIDE else "../shared"

IMIGUE = SHARED / "imigue"  # labels_20200831.csv, label_raw/, openpose_298.tar.gz
GOLDEN = SHARED / "golden"  # <name>.json key lists + <name>.npz outputs (tests/golden.py)
REALWORLD = SHARED / "realworld"  # one folder per real-world case, each with a make_input.py


def missing_reason(path: Path, what: str) -> str:
    """The skip reason for a missing part of the shared folder, e.g. `missing_reason(GOLDEN, "the golden files")`."""
    shown = f"{_SHOWN}/{path.relative_to(SHARED).as_posix()}"
    return f"{shown} is not here: {what} come with the project's shared folder; set MIGFUSE_SHARED"


def require(path: Path, what: str) -> Path:
    """`path` when it is a folder; otherwise skip the calling test (or fixture's users) with `missing_reason`."""
    if not path.is_dir():
        pytest.skip(missing_reason(path, what))
    return path
