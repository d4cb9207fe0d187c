"""scripts/install.sh: a fuse-only install, a second run over a torch with a local version label, the
Python it uses (named with its version; one older than python_requires refused in one line), and the
torch index it picks (CPU wheels where no NVIDIA driver is found; --cpu / --cuda decide instead)."""
from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
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
    purelib = Path(subprocess.run([str(venv / "bin" / "python"),
                                   "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
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
    assert not names & {"torchvision", "timm", "av", "facenet-pytorch", "pytest", "transformers", "h5py"}


def _fake_python(path: Path, version: tuple[int, int, int], executable: str) -> Path:
    """A stand-in interpreter reporting `version`: it runs install.sh's `-c` probe on this Python with
    `sys` replaced, so the probe's own comparison is what is tested; anything else (`-m venv`) fails,
    so no test here creates a venv or reaches an index. (`executable` is written in double quotes, as
    JSON: the program sits in single quotes.)"""
    path.write_text(f"""#!/bin/sh
[ "$1" = -c ] || {{ echo "fake python: only -c" >&2; exit 1; }}
exec {sys.executable} -c 'import sys, types
fake = types.SimpleNamespace(version_info={version!r}, executable={json.dumps(executable)}, argv=["-c"] + sys.argv[2:])
sys.modules["sys"] = fake
exec(sys.argv[1])' "$2" "$3"
""")
    path.chmod(0o755)
    return path


def _install(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([shutil.which("bash") or "bash", str(ROOT / "scripts" / "install.sh"), *args, "fuse"],
                          capture_output=True,
                          text=True, env={**os.environ, "MIGFUSE_VENV": str(tmp_path / "venv"), **env}, timeout=60)


_NO_DRIVER = ("install.sh: a torch to install comes from the CPU wheel index (no NVIDIA driver here: no "
              "nvidia-smi, no {proc}; --cuda takes the CUDA build)")


def _machine(tmp_path: Path, nvidia_smi: bool) -> dict[str, str]:
    """The environment of a Linux machine with or without an NVIDIA driver: PATH holds only the tools
    install.sh calls (and a stand-in `nvidia-smi` when asked), the driver folder is one that does not exist."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("dirname", "sed", "awk", "uname", "mktemp", "rm", "head", "tr"):
        found = shutil.which(tool)
        if found:
            (bin_dir / tool).symlink_to(found)
    if nvidia_smi:
        (bin_dir / "nvidia-smi").write_text("#!/bin/sh\nexit 0\n")
        (bin_dir / "nvidia-smi").chmod(0o755)
    fake = _fake_python(tmp_path / "python3", (3, 11, 0), "/opt/py/bin/python3.11")  # ends the run: no venv
    return {"PATH": str(bin_dir), "MIGFUSE_NVIDIA_PROC": str(tmp_path / "no-driver"), "MIGFUSE_PYTHON": str(fake)}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the driver check is for Linux")
def test_a_linux_machine_without_an_nvidia_driver_gets_the_cpu_wheels(tmp_path):
    run = _install(tmp_path, **_machine(tmp_path, nvidia_smi=False))
    assert run.stdout.splitlines()[0] == _NO_DRIVER.format(proc=tmp_path / "no-driver")
    assert run.returncode == 1  # the stand-in Python makes no venv: nothing was installed


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the driver check is for Linux")
@pytest.mark.parametrize("how", ["nvidia-smi", "driver folder"])
def test_a_linux_machine_with_an_nvidia_driver_gets_the_default_index(tmp_path, how):
    env = _machine(tmp_path, nvidia_smi=how == "nvidia-smi")
    if how == "driver folder":
        (tmp_path / "no-driver").mkdir()  # /proc/driver/nvidia exists
    run = _install(tmp_path, **env)
    assert run.stdout.splitlines()[0] == ("install.sh: a torch to install comes from the default index (an NVIDIA "
                                          "driver is here; --cpu takes the CPU-only wheels)")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the driver check is for Linux")
def test_cpu_and_cuda_override_what_the_machine_says(tmp_path):
    with_driver = tmp_path / "gpu"
    with_driver.mkdir()
    run = _install(with_driver, "--cpu", **_machine(with_driver, nvidia_smi=True))
    assert run.stdout.splitlines()[0] == "install.sh: a torch to install comes from the CPU wheel index (--cpu)"
    without = tmp_path / "cpu"
    without.mkdir()
    run = _install(without, "--cuda", **_machine(without, nvidia_smi=False))
    assert run.stdout.splitlines()[0] == "install.sh: a torch to install comes from the default index (--cuda)"
    by_env = tmp_path / "env"
    by_env.mkdir()
    run = _install(by_env, **_machine(by_env, nvidia_smi=False), MIGFUSE_TORCH_INDEX="default")
    assert run.stdout.splitlines()[0] == ("install.sh: a torch to install comes from the default index "
                                          "(MIGFUSE_TORCH_INDEX)")


def test_a_python_older_than_the_floor_is_refused_in_one_line_before_a_venv_is_made(tmp_path):
    fake = _fake_python(tmp_path / "python3", (3, 10, 12), "/usr/bin/python3.10")
    run = _install(tmp_path, MIGFUSE_PYTHON=str(fake))
    assert run.returncode == 1 and run.stdout.splitlines()[1:] == []  # only the torch index line
    assert run.stderr == ("install.sh: Python 3.10.12 at /usr/bin/python3.10 is too old: migfuse needs "
                          "Python >= 3.11; set MIGFUSE_PYTHON to a Python >= 3.11 (e.g. MIGFUSE_PYTHON=python3.11 "
                          "bash scripts/install.sh)\n")
    assert not (tmp_path / "venv").exists()


def test_the_oldest_supported_python_is_accepted_and_named_with_its_version(tmp_path):
    # 3.11.0 passes the check; the stand-in cannot make a venv, which ends the run in one line.
    fake = _fake_python(tmp_path / "python3", (3, 11, 0), "/opt/py/bin/python3.11")
    run = _install(tmp_path, MIGFUSE_PYTHON=str(fake))
    assert run.stdout.splitlines()[1:] == [f"install.sh: python /opt/py/bin/python3.11 (3.11.0), making "
                                           f"{tmp_path / 'venv'}"]
    assert run.returncode == 1
    assert run.stderr.splitlines()[-1] == (f"install.sh: '{fake} -m venv {tmp_path / 'venv'}' failed "
                                           "(on Debian/Ubuntu: apt install python3-venv)")


def test_an_existing_venv_of_an_old_python_is_refused_and_named(tmp_path):
    (tmp_path / "venv" / "bin").mkdir(parents=True)
    _fake_python(tmp_path / "venv" / "bin" / "python", (3, 9, 18), str(tmp_path / "venv" / "bin" / "python"))
    run = _install(tmp_path, MIGFUSE_PYTHON="python3.13")
    venv = tmp_path / "venv"
    assert run.returncode == 1
    assert run.stdout.split("\n", 1)[1] == (f"install.sh: {venv} exists, so MIGFUSE_PYTHON=python3.13 is not used "
                          f"(remove {venv} to remake it)\n")
    assert run.stderr == (f"install.sh: Python 3.9.18 at {venv}/bin/python is too old: migfuse needs Python >= 3.11; "
                          f"remove {venv} and rerun with a newer Python (e.g. MIGFUSE_PYTHON=python3.11 bash "
                          "scripts/install.sh)\n")


def test_a_missing_interpreter_is_one_line(tmp_path):
    run = _install(tmp_path, MIGFUSE_PYTHON=str(tmp_path / "no-python"))
    assert run.returncode == 1 and run.stdout.splitlines()[1:] == []
    assert run.stderr == (f"install.sh: '{tmp_path / 'no-python'}' is not a Python that runs "
                          f"(making {tmp_path / 'venv'}): set MIGFUSE_PYTHON to a Python >= 3.11 "
                          "(e.g. MIGFUSE_PYTHON=python3.11 bash scripts/install.sh)\n")
    assert not (tmp_path / "venv").exists()


def test_help_names_the_interpreter_setting():
    run = subprocess.run(["bash", str(ROOT / "scripts" / "install.sh"), "--help"], capture_output=True, text=True,
                         check=True)
    assert "MIGFUSE_PYTHON=" in run.stdout and "set -euo" not in run.stdout
