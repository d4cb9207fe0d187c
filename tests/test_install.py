"""scripts/install.sh: a fuse-only install, and a second run over a torch with a local version label."""
from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# torch and what it imports at run time: linked into the test venv instead of installing the 700 MB
# wheel again (CI itself installs torch from nothing in .ci/run).
_TORCH_DISTS = ["torch", "filelock", "typing_extensions", "setuptools", "sympy", "mpmath", "networkx",
                "jinja2", "markupsafe", "fsspec"]


def test_pin_uses_the_installed_distribution_not_the_import_time_version(tmp_path):
    # The PyPI CUDA wheel: `torch.__version__` is 2.13.0+cu130, its distribution is 2.13.0.
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "__init__.py").write_text('__version__ = "2.13.0+cu130"\n')
    dist = tmp_path / "torch-2.13.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: torch\nVersion: 2.13.0\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "pin_installed.py"), "torch", "no-such-dist"],
                         env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["torch==2.13.0"]


def _link_torch(site: Path, fake_version: str) -> None:
    """Expose this Python's torch (and its dependencies) in `site`, with torch reporting `fake_version`
    at import time while its distribution keeps its real version."""
    site.mkdir()
    for name in _TORCH_DISTS:
        dist = importlib.metadata.distribution(name)
        tops = {Path(f).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
        for top in tops:
            src = Path(dist.locate_file(top))
            if top != "torch" and not (site / top).exists() and src.exists():
                (site / top).symlink_to(src)
    real = Path(importlib.metadata.distribution("torch").locate_file("torch"))
    (site / "torch").mkdir()
    for entry in real.iterdir():
        if entry.name != "version.py":
            (site / "torch" / entry.name).symlink_to(entry)
    text = (real / "version.py").read_text()
    (site / "torch" / "version.py").write_text(f"{text}\n__version__ = {fake_version!r}\n")


@pytest.mark.slow
def test_fuse_install_keeps_a_local_label_torch_and_adds_no_extraction_packages(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    purelib = Path(subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                  capture_output=True, text=True, check=True).stdout.strip())
    _link_torch(tmp_path / "torchsite", "2.13.0+cu130")
    (purelib / "linked_torch.pth").write_text(str(tmp_path / "torchsite") + "\n")
    probe = subprocess.run([str(venv / "bin" / "python"), "-c", "import torch; print(torch.__version__)"],
                           capture_output=True, text=True, check=True).stdout
    assert probe.strip() == "2.13.0+cu130"

    env = {**os.environ, "MIGFUSE_VENV": str(venv)}
    env.pop("PYTHONPATH", None)
    run = subprocess.run(["bash", str(ROOT / "scripts" / "install.sh"), "fuse"], env=env,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert f"keeping the installed torch=={importlib.metadata.version('torch')}" in run.stdout
    listed = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "list", "--format", "json"],
                            capture_output=True, text=True, check=True).stdout
    names = {p["name"].lower() for p in json.loads(listed)}
    assert {"torch", "migfuse", "numpy", "zarr", "typer", "tqdm", "matplotlib", "filelock", "python-calamine"} <= names
    assert not names & {"torchvision", "timm", "av", "facenet-pytorch", "pytest"}
