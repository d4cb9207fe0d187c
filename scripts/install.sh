#!/usr/bin/env bash
# Set up migfuse in ./.venv with everything the demo and the tests need.
#
#   bash scripts/install.sh            # extras extract,fuse,test (everything)
#   bash scripts/install.sh fuse       # a laptop that only trains heads on a copied cache
#
# torch: a torch that .venv can already import is KEPT (on a GPU box create the venv first with
# `python3 -m venv --system-site-packages .venv` to reuse your CUDA torch), and pinned while the rest
# installs so nothing replaces it. Otherwise torch==2.13.0 is installed, pinned exactly: a bare
# `torch` would pull several GB of CUDA wheels onto a CPU machine.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="${1:-extract,fuse,test}"
[ -x .venv/bin/python ] || python3 -m venv .venv
PY=.venv/bin/python
"$PY" -m pip install -q --disable-pip-version-check -U pip

constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
if "$PY" -c "import torch" 2>/dev/null; then
  torch_version=$("$PY" -c "import torch; print(torch.__version__)")
  echo "install.sh: keeping the installed torch $torch_version"
  echo "torch==$torch_version" > "$constraints"
else
  echo "install.sh: installing torch==2.13.0 (+ torchvision 0.28.0, its pair)"
  "$PY" -m pip install -q --disable-pip-version-check torch==2.13.0 torchvision==0.28.0
  echo "torch==2.13.0" > "$constraints"
fi
"$PY" -m pip install -q --disable-pip-version-check -c "$constraints" -e ".[$EXTRAS]"
case ",$EXTRAS," in
  *,extract,*)
    # facenet-pytorch pins torch<2.3 and numpy<2, which are stale: it works without them.
    "$PY" -m pip install -q --disable-pip-version-check --no-deps facenet-pytorch==2.6.0 ;;
esac
echo "install.sh: ready ($("$PY" -c 'import torch, migfuse; print("migfuse", migfuse.__version__, "torch", torch.__version__)'))"
