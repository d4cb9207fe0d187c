"""tests/shared_paths.py: one place finds the shared folder, MIGFUSE_SHARED moves it, and tests that
need a missing part of it skip with the reason and the fix instead of failing."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(args: list[str], shared: Path | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MIGFUSE_SHARED"}
    if shared is not None:
        env["MIGFUSE_SHARED"] = str(shared)
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_the_shared_folder_is_beside_the_checkout_unless_migfuse_shared_says_otherwise(tmp_path):
    code = "import sys; sys.path.insert(0, 'tests'); import shared_paths as s; print(s.GOLDEN, s.IMIGUE, sep='\\n')"
    default = _run(["-c", code], None)
    moved = _run(["-c", code], tmp_path / "elsewhere")
    assert default.stdout.split() == [str(ROOT.parent / "shared" / "golden"), str(ROOT.parent / "shared" / "imigue")]
    assert moved.stdout.split() == [str(tmp_path / "elsewhere" / "golden"), str(tmp_path / "elsewhere" / "imigue")]


def test_without_the_shared_folder_the_tests_that_need_it_skip_with_the_reason(tmp_path):
    absent = tmp_path / "absent"
    # test_data_classes.py: 3 tests read the real labels CSV through the imigue_dir fixture, 2 need nothing
    r = _run(["-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "tests/test_data_classes.py"], absent)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (f"{absent}/imigue is not here: the real iMiGUE sample files come with the project's shared folder; "
            "set MIGFUSE_SHARED") in r.stdout
    assert "2 passed, 3 skipped" in r.stdout
