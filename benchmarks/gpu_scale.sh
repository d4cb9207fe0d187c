#!/usr/bin/env bash
# The device check of issue 18 in one command (under 5 minutes on one H200), for a lent GPU machine
# that has CUDA torch but no zarr / PyAV / calamine / facenet and reaches no package index.
#
#   here, once:        bash ../shared/device/wheels.sh torchcodec==0.11.0   # wheels into .whl/ (git-ignored)
#   on the device:     bash benchmarks/gpu_scale.sh                         # with the device tool: carry [".whl"]
#
# It installs the wheels into /tmp/site, runs benchmarks/gpu_scale.py on the GPU with a 290 s limit and
# leaves OUT/gpu_scale.md and OUT/gpu_scale.json (OUT = $OUT when set, else /tmp/gpu_scale). torchcodec
# needs FFmpeg's shared libraries on the machine: where they are missing, the report says so and the
# GPU-decoder row stays unmeasured.
set -u -o pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${OUT:-/tmp/gpu_scale}"
mkdir -p "$OUT_DIR"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "gpu_scale.sh: installing .whl/ failed" >&2; exit 3; }
  export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
  echo "gpu_scale.sh: no .whl/ here: using what python3 has (see ../shared/device/README.md)"
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,utilization.gpu --format=csv 2>/dev/null | tee "$OUT_DIR/nvidia-smi.txt"
timeout 290 python3 benchmarks/gpu_scale.py --out "$OUT_DIR" "$@"
