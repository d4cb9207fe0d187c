#!/usr/bin/env bash
# Set up migfuse in its own virtual environment (./.venv) with what this machine needs.
#
#   bash scripts/install.sh                  # extras extract,fuse,test: the demo, extraction and the tests
#   bash scripts/install.sh fuse             # a laptop that only trains heads on a copied cache: torch,
#                                            # no torchvision / timm / av
#   bash scripts/install.sh --cpu [EXTRAS]   # take torch from the PyTorch CPU wheel index (see below)
#   MIGFUSE_VENV=/path/venv bash scripts/install.sh ...   # another venv folder
#
# migfuse needs an environment of its own (Python >= 3.11, numpy >= 2, zarr >= 3.1): do not install it
# into an mmaction2 / pyskl environment, whose pins are older. Exchange files instead (docs/interop.md).
#
# torch: a torch that the venv can already import is KEPT (on a GPU box create the venv first with
# `python3 -m venv --system-site-packages .venv` to reuse your CUDA torch) and pinned, by its installed
# distribution's version, while the rest installs, so nothing replaces it. Otherwise torch==2.13.0 is
# installed, pinned exactly: a bare `torch` could pull a newer release.
# On a CPU-only machine the default index's torch==2.13.0 for Linux is the CUDA build (several GB of
# nvidia packages). `--cpu` (or MIGFUSE_TORCH_INDEX=cpu) takes the CPU-only wheel from PyTorch's own
# index instead; when that index cannot be reached the default index is used, said in one line.
set -euo pipefail
cd "$(dirname "$0")/.."

EXTRAS="extract,fuse,test"
TORCH_INDEX="${MIGFUSE_TORCH_INDEX:-}"
for arg in "$@"; do
  case "$arg" in
    --cpu) TORCH_INDEX=cpu ;;
    -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "install.sh: unknown option $arg (see bash scripts/install.sh --help)" >&2; exit 2 ;;
    *) EXTRAS="$arg" ;;
  esac
done
case "$TORCH_INDEX" in
  ""|default) TORCH_INDEX_URL="" ;;
  cpu) TORCH_INDEX_URL="https://download.pytorch.org/whl/cpu" ;;
  http*) TORCH_INDEX_URL="$TORCH_INDEX" ;;
  *) echo "install.sh: MIGFUSE_TORCH_INDEX must be cpu, default or an index URL, not '$TORCH_INDEX'" >&2; exit 2 ;;
esac
case ",$EXTRAS," in *,extract,*) WITH_EXTRACT=1 ;; *) WITH_EXTRACT=0 ;; esac

VENV="${MIGFUSE_VENV:-.venv}"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
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
