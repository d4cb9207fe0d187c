"""`python -m migfuse` run from a folder that holds another `migfuse/` folder (the clone of the
repository, installed in editable mode) runs the installed command line instead of a traceback."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import migfuse

ROOT = Path(__file__).resolve().parents[1]

# What an editable install puts on sys.meta_path (setuptools' finder): it maps `migfuse` and its
# submodules to the checkout, and comes after the path finder that sees the current folder.
_EDITABLE = textwrap.dedent(f"""
    import importlib.abc, importlib.util, sys
    PACKAGE = {str(ROOT / "migfuse")!r}

    class Editable(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name != "migfuse" and not name.startswith("migfuse."):
                return None
            parts = name.split(".")[1:]
            base = "/".join([PACKAGE, *parts])
            if os.path.isdir(base):
                return importlib.util.spec_from_file_location(name, base + "/__init__.py",
                                                              submodule_search_locations=[base])
            return importlib.util.spec_from_file_location(name, base + ".py") if os.path.isfile(base + ".py") else None

    import os
    from importlib.machinery import PathFinder
    # right after the path finder, ahead of any editable install of another checkout
    sys.meta_path.insert(sys.meta_path.index(PathFinder) + 1, Editable())
""")


def _run(cwd: Path, hook: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(hook)}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_python_m_migfuse_beside_a_clone_named_migfuse_runs_the_installed_package(tmp_path):
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(_EDITABLE)
    parent = tmp_path / "work"
    (parent / "migfuse" / "docs").mkdir(parents=True)  # a clone: README, docs, ... no __init__.py at its top
    (parent / "migfuse" / "README.md").write_text("# migfuse\n")

    shadowed = _run(parent, hook, "-c", "import migfuse; print(migfuse.__file__)")
    assert shadowed.stdout.strip() == "None"  # the clone's folder hides the package: the case at hand

    res = _run(parent, hook, "-m", "migfuse", "--version")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == f"migfuse {migfuse.__version__}" and "Traceback" not in res.stderr
    res = _run(parent, hook, "-m", "migfuse", "cache", "info", str(tmp_path / "none.zarr"))
    assert res.returncode == 2 and "Traceback" not in res.stdout + res.stderr
    assert f"no token cache at {tmp_path / 'none.zarr'}" in res.stdout + res.stderr
