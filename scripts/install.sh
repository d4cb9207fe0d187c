#!/usr/bin/env bash
# Set up migfuse in its own virtual environment (./.venv) with what this machine needs.
#
#   bash scripts/install.sh                  # extras extract,fuse,test: the demo, extraction and the tests
#   bash scripts/install.sh fuse             # a laptop that only trains heads on a copied cache: torch,
#                                            # no torchvision / timm / av
#   bash scripts/install.sh extract,vit      # + transformers, for the VideoMAE / V-JEPA 2 backbones
#   bash scripts/install.sh extract,pose     # + transformers, scipy: `data pose` (person detector + ViTPose)
#   bash scripts/install.sh --cpu [EXTRAS]   # torch from the PyTorch CPU wheel index (see below)
#   bash scripts/install.sh --cuda [EXTRAS]  # torch from the default index (on Linux: the CUDA build)
#   MIGFUSE_VENV=/path/venv bash scripts/install.sh ...   # another venv folder
#   MIGFUSE_PYTHON=/usr/bin/python3.12 bash scripts/install.sh ...   # the Python that makes the venv
#                                            # (default: python3; an existing venv keeps its own)
#
# migfuse needs an environment of its own (Python >= 3.11, numpy >= 2, zarr >= 3.1): do not install it
# into an mmaction2 / pyskl environment, whose pins are older. Exchange files instead (docs/interop.md).
# Every Python from 3.11.0 on works (Debian 12's 3.11.2 too); an older one is refused in one line.
#
# torch: a torch that the venv can already import is KEPT (on a GPU box create the venv first with
# `python3 -m venv --system-site-packages .venv` to reuse your CUDA torch) and pinned, by its installed
# distribution's version, while the rest installs, so nothing replaces it. Otherwise torch==2.13.0 is
# installed, pinned exactly: a bare `torch` could pull a newer release.
# The default index's torch==2.13.0 for Linux is the CUDA build (several GB of nvidia packages), useless
# without an NVIDIA GPU. So on Linux with no NVIDIA driver (no nvidia-smi on PATH and no
# /proc/driver/nvidia) the CPU-only wheel is taken from PyTorch's own index; with a driver, the default
# index. One line says which and why. `--cpu` / `--cuda` (or MIGFUSE_TORCH_INDEX=cpu / default / URL)
# decide instead. When the CPU index cannot be reached the default index is used, said in one line.
set -euo pipefail
cd "$(dirname "$0")/.."

EXTRAS="extract,fuse,test"
TORCH_INDEX="${MIGFUSE_TORCH_INDEX:-}"
INDEX_WHY="MIGFUSE_TORCH_INDEX"
NVIDIA_PROC="${MIGFUSE_NVIDIA_PROC:-/proc/driver/nvidia}"   # tests point it elsewhere
for arg in "$@"; do
  case "$arg" in
    --cpu) TORCH_INDEX=cpu; INDEX_WHY="--cpu" ;;
    --cuda) TORCH_INDEX=default; INDEX_WHY="--cuda" ;;
    -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; exit 0 ;;
    -*) echo "install.sh: unknown option $arg (see bash scripts/install.sh --help)" >&2; exit 2 ;;
    *) EXTRAS="$arg" ;;
  esac
done
if [ -z "$TORCH_INDEX" ]; then  # neither --cpu nor --cuda: ask the machine
  if [ "$(uname -s)" != Linux ]; then
    TORCH_INDEX=default; INDEX_WHY="not Linux: the default index's torch has no CUDA build to avoid"
  elif command -v nvidia-smi > /dev/null 2>&1 || [ -e "$NVIDIA_PROC" ]; then
    TORCH_INDEX=default; INDEX_WHY="an NVIDIA driver is here; --cpu takes the CPU-only wheels"
  else
    TORCH_INDEX=cpu; INDEX_WHY="no NVIDIA driver here: no nvidia-smi, no $NVIDIA_PROC; --cuda takes the CUDA build"
  fi
fi
case "$TORCH_INDEX" in
  cpu) echo "install.sh: a torch to install comes from the CPU wheel index ($INDEX_WHY)" ;;
  default) echo "install.sh: a torch to install comes from the default index ($INDEX_WHY)" ;;
  *) echo "install.sh: a torch to install comes from $TORCH_INDEX ($INDEX_WHY)" ;;
esac
case "$TORCH_INDEX" in
  default) TORCH_INDEX_URL="" ;;
  cpu) TORCH_INDEX_URL="https://download.pytorch.org/whl/cpu" ;;
  http*) TORCH_INDEX_URL="$TORCH_INDEX" ;;
  *) echo "install.sh: MIGFUSE_TORCH_INDEX must be cpu, default or an index URL, not '$TORCH_INDEX'" >&2; exit 2 ;;
esac
case ",$EXTRAS," in *,extract,*) WITH_EXTRACT=1 ;; *) WITH_EXTRACT=0 ;; esac

VENV="${MIGFUSE_VENV:-.venv}"
# The floor is python_requires in setup.cfg. It is checked here so that an old Python is refused in one
# line instead of deep in pip's resolver; the probe's syntax also runs on Python 2, to name it.
NEED="$(sed -n 's/^python_requires *= *>= *\([0-9][0-9.]*\) *$/\1/p' setup.cfg)"
if [ -z "$NEED" ]; then
  echo "install.sh: setup.cfg: python_requires is not of the form '>=3.N': fix it there" >&2; exit 1
fi
check_python() {  # $1: the interpreter, $2: what it is used for (said in the line printed), $3: the fix
  local found version where
  found="$("$1" -c 'import sys
need = tuple(int(n) for n in sys.argv[1].split("."))
print("%s %d.%d.%d %s" % ("ok" if tuple(sys.version_info[:len(need)]) >= need else "old",
                          sys.version_info[0], sys.version_info[1], sys.version_info[2], sys.executable))' \
           "$NEED" 2>/dev/null)" || found=""
  if [ -z "$found" ]; then
    echo "install.sh: '$1' is not a Python that runs ($2): $3" >&2
    exit 1
  fi
  read -r verdict version where <<< "$found"
  if [ "$verdict" != ok ]; then
    echo "install.sh: Python $version at $where is too old: migfuse needs Python >= $NEED; $3" >&2
    exit 1
  fi
  echo "install.sh: python $where ($version), $2"
}
if [ -x "$VENV/bin/python" ]; then
  if [ -n "${MIGFUSE_PYTHON:-}" ]; then
    echo "install.sh: $VENV exists, so MIGFUSE_PYTHON=$MIGFUSE_PYTHON is not used (remove $VENV to remake it)"
  fi
  check_python "$VENV/bin/python" "the existing venv $VENV" \
    "remove $VENV and rerun with a newer Python (e.g. MIGFUSE_PYTHON=python3.11 bash scripts/install.sh)"
else
  BASE_PY="${MIGFUSE_PYTHON:-python3}"
  check_python "$BASE_PY" "making $VENV" \
    "set MIGFUSE_PYTHON to a Python >= $NEED (e.g. MIGFUSE_PYTHON=python3.11 bash scripts/install.sh)"
  if ! "$BASE_PY" -m venv "$VENV"; then
    echo "install.sh: '$BASE_PY -m venv $VENV' failed (on Debian/Ubuntu: apt install python3-venv)" >&2
    exit 1
  fi
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip install -q --disable-pip-version-check)
"${PIP[@]}" -U pip

constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
if "$PY" -c "import torch" 2>/dev/null; then
  "$PY" scripts/pin_installed.py torch torchvision > "$constraints"
  echo "install.sh: keeping the installed $(head -n1 "$constraints" | tr -d '\n') (pinned)"
else
  torch_pkgs=(torch==2.13.0)
  [ "$WITH_EXTRACT" = 1 ] && torch_pkgs+=(torchvision==0.28.0)   # torchvision only for extraction
  echo "install.sh: installing ${torch_pkgs[*]}"
  if [ -n "$TORCH_INDEX_URL" ]; then
    if ! "${PIP[@]}" --index-url "$TORCH_INDEX_URL" "${torch_pkgs[@]}"; then
      echo "install.sh: $TORCH_INDEX_URL could not be used; taking torch from the default index" >&2
      "${PIP[@]}" "${torch_pkgs[@]}"
    fi
  else
    "${PIP[@]}" "${torch_pkgs[@]}"
  fi
  "$PY" scripts/pin_installed.py torch torchvision > "$constraints"
fi
"${PIP[@]}" -c "$constraints" -e ".[$EXTRAS]"
if [ "$WITH_EXTRACT" = 1 ]; then
  # facenet-pytorch pins torch<2.3 and numpy<2, which are stale: it works without them.
  "${PIP[@]}" --no-deps facenet-pytorch==2.6.0
fi
echo "install.sh: ready in $VENV ($("$PY" -c 'import torch, migfuse; print("migfuse", migfuse.__version__, "torch", torch.__version__)'))"
