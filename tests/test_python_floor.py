"""migfuse claims every Python from its python_requires floor (3.11.0) on: no call newer than that may
hide in the package, the tests, the scripts or the benchmarks.

vermin knows the stdlib per minor version (3.12's itertools.batched, ...), not the additions of
3.11.x maintenance releases, so those are listed here (tarfile's extraction filters, 3.11.4: Debian 12
ships 3.11.2). scripts/floor_check.sh imports the package and runs the file-handling tests on the
oldest interpreter found on the machine; this module needs none."""
from __future__ import annotations

import ast
import configparser
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ["migfuse", "tests", "scripts", "benchmarks"]

# Added in 3.11.4 (PEP 706): the keyword, the filter functions and their errors.
_TARFILE_3114 = {"data_filter", "tar_filter", "fully_trusted_filter", "extraction_filter", "FilterError",
                 "AbsolutePathError", "OutsideDestinationError", "SpecialFileError", "AbsoluteLinkError",
                 "LinkOutsideDestinationError"}
_FILTER_KEYWORD_CALLS = {"extractall", "extract", "unpack_archive"}


def _floor() -> str:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    spec = cfg["options"]["python_requires"]
    m = re.fullmatch(r"\s*>=\s*(3\.\d+)(?:\.0)?\s*", spec)
    assert m, f"setup.cfg: python_requires {spec!r} is not of the form >=3.N: update tests/test_python_floor.py"
    return m.group(1)


def _python_files() -> list[Path]:
    return sorted(p for d in SCANNED for p in (ROOT / d).rglob("*.py"))


def test_vermin_finds_no_call_newer_than_the_python_floor():
    if importlib.util.find_spec("vermin") is None:  # a failure, not a skip: CI must not lose the scan
        pytest.fail("vermin is not installed: it is in the test extra of setup.cfg; rerun bash scripts/install.sh")
    floor = _floor()
    # --exclude long: torch's Tensor.long(), which vermin takes for Python 2's `long`.
    cmd = [sys.executable, "-c", "import sys; from vermin.main import main; sys.exit(main())",
           "-q", "--violations", "--no-tips", "--no-config-file", "--eval-annotations", f"-t={floor}-",
           "--exclude", "long", *[str(ROOT / d) for d in SCANNED]]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and not run.stdout.strip(), \
        f"calls newer than Python {floor} (python_requires in setup.cfg):\n{run.stdout}{run.stderr}"


def _point_release_uses(path: Path, root: Path = ROOT) -> list[str]:
    where = path.relative_to(root)
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call):
            name = getattr(node.func, "attr", getattr(node.func, "id", ""))
            if name in _FILTER_KEYWORD_CALLS and any(k.arg == "filter" for k in node.keywords):
                found.append(f"{where}:{node.lineno}: {name}(filter=...) needs Python 3.11.4: "
                             "use tests/safe_extract.py's extract_tar")
        elif isinstance(node, (ast.Attribute, ast.alias)):
            name = node.attr if isinstance(node, ast.Attribute) else node.name
            if name in _TARFILE_3114:
                found.append(f"{where}:{node.lineno}: tarfile's {name} needs Python 3.11.4")
    return sorted(found, key=lambda hit: int(hit.split(":")[1]))


def test_no_api_of_a_3_11_maintenance_release():
    assert _floor() == "3.11", "the list below is for a 3.11 floor: review it with the new floor"
    found = [hit for path in _python_files() for hit in _point_release_uses(path)]
    assert not found, "\n".join(found)


def test_the_point_release_scan_catches_the_tar_filter(tmp_path):
    bad = tmp_path / "probe.py"
    bad.write_text("import tarfile\nfrom tarfile import data_filter\n"
                   "def f(tar, d):\n    tar.extractall(d, filter='data')\n    tar.extraction_filter = None\n"
                   "    tar.extractall(d)\n")
    hits = _point_release_uses(bad, tmp_path)
    assert [h.split(": ")[0] for h in hits] == ["probe.py:2", "probe.py:4", "probe.py:5"]


def test_every_module_imports():
    """Every module imports with this Python; with all extras installed here, none is skipped."""
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "import_modules.py")], capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "0 failed" in run.stdout, run.stdout
