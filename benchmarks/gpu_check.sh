#!/usr/bin/env bash
# Every GPU path of migfuse in one run (<= 8 minutes on one GPU), with its own data and its own checks.
#
#   bash benchmarks/gpu_check.sh                      # on a GPU box, after `bash scripts/install.sh`
#   bash benchmarks/gpu_check.sh --device cpu --quick # the same steps on the CPU, small (CI, laptops)
#   options: --out DIR (work folder, default a new temp folder; kept), --python PY (default .venv/bin/python
#            when present, else python3), --nproc N (torchrun ranks; default: the GPU count, 2 on CPU)
#
# Steps (each timed, PASS / FAIL / SKIP in the summary; the script exits 1 if any step FAILs):
#   1  data      `migfuse data synth` + `data prepare` (generated videos, skeletons, labels)
#   2  finetune  `backbone train video`: a few fine-tuning steps (full MViTv2-S on GPU; demo width --quick)
#   3  skeleton  `backbone train skeleton`: one epoch of 2s-AGCN
#   4  extract   video + context (the fine-tuned best.pt) in bf16 and fp32, skeleton, face (clip scope),
#                each with --device; checks: every row done, token shapes, no NaN, bf16 within tolerance
#                of fp32 on the same clips
#   5  torchrun  `extract video` and `backbone train video` with --nproc ranks (NCCL on GPU, gloo on CPU);
#                the sharded cache must equal the single-process one
#   6  rows      throughput for benchmarks/RESULTS.md: training and forward clips/s, GPU memory, bf16
#                roofline fraction (benchmarks/finetune.py), `extract video` end to end with --workers
#                varied (does decoding or the GPU set the pace?), SwinFace faces/s (benchmarks/face.py)
# Everything lands in OUT/gpu_check.md (the rows to paste into RESULTS.md) and OUT/logs/.
set -u -o pipefail

DEVICE=cuda
QUICK=0
OUT=""
PY=""
NPROC=""
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE="$2"; shift 2 ;;
    --quick) QUICK=1; shift ;;
    --out) OUT="$2"; shift 2 ;;
    --python) PY="$2"; shift 2 ;;
    --nproc) NPROC="$2"; shift 2 ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

REPO="$(cd "$(dirname "$0")/.." && pwd)"
cd "$REPO"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
OUT="${OUT:-$(mktemp -d -t migfuse_gpu_check.XXXXXX)}"
mkdir -p "$OUT/logs"
MD="$OUT/gpu_check.md"
MIG=("$PY" -m migfuse.cli)
START=$SECONDS
declare -a SUMMARY=()
FAILED=0

log() { echo "[gpu_check $(( SECONDS - START ))s] $*"; }
# step NAME CMD...: run, time, record PASS/FAIL; the log goes to OUT/logs/NAME.log (its tail on failure)
step() {
  local name="$1"; shift
  local t0=$SECONDS
  log "$name: $*"
  if "$@" >"$OUT/logs/$name.log" 2>&1; then
    SUMMARY+=("| $name | PASS | $(( SECONDS - t0 )) |")
    grep -h '^ok ' "$OUT/logs/$name.log" || true
    return 0
  fi
  SUMMARY+=("| $name | **FAIL** | $(( SECONDS - t0 )) |")
  FAILED=1
  log "$name FAILED; last lines of $OUT/logs/$name.log:"
  tail -n 15 "$OUT/logs/$name.log" | sed 's/^/    /'
  return 1
}
skip() { SUMMARY+=("| $1 | SKIP: $2 | 0 |"); log "$1 skipped: $2"; }

# ---- the device ---------------------------------------------------------------------------------
if [ "$DEVICE" != "cpu" ]; then
  NGPU=$("$PY" -c "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)" 2>/dev/null || echo 0)
  if [ "${NGPU:-0}" -lt 1 ]; then
    echo "gpu_check.sh: --device $DEVICE but torch sees no CUDA device; run with --device cpu --quick" >&2
    exit 2
  fi
  NPROC="${NPROC:-$NGPU}"
else
  NPROC="${NPROC:-2}"
fi
# Option names of `extract`: --precision (fp32|bf16|fp16) and --device auto|cpu|cuda come with the runner
# refactor; without --precision the forward is bf16 on CUDA and fp32 on CPU and the comparison is skipped.
HAVE_PRECISION=0
"${MIG[@]}" extract video --help 2>/dev/null | grep -q -- "--precision" && HAVE_PRECISION=1
log "device $DEVICE, torchrun ranks $NPROC, quick $QUICK, python $PY, work folder $OUT, --precision: $HAVE_PRECISION"

if [ "$QUICK" = 1 ]; then
  VIDEOS=3; CLIPS=3; WIDTH=demo; FT_BATCH=2; SKEL_ARGS=(--base-channels 8 --length 32); WORKERS_LIST="0 1"
  FACE_BATCH=4  # the runner pads every forward to --batch-size: keep SwinFace's CPU batches small
else
  VIDEOS=8; CLIPS=8; WIDTH=full; FT_BATCH=8; SKEL_ARGS=(); WORKERS_LIST="0 2 4 8"; FACE_BATCH=32
fi
# bf16 and fp32 video tokens of the same clips: mean |diff| / rms and cosine similarity of the tokens
BF16_TOL=0.05
BF16_MIN_COS=0.99

# ---- 1 data -------------------------------------------------------------------------------------
data() {
  rm -rf "$OUT/raw" "$OUT/prepared"
  "${MIG[@]}" data synth --out "$OUT/raw" --videos "$VIDEOS" --clips-per-video "$CLIPS" &&
  "${MIG[@]}" data prepare --root "$OUT/raw" --out "$OUT/prepared"
}
step data data || { log "no data: nothing else can run"; exit 1; }
P="$OUT/prepared"

# ---- 2 fine-tuning and 3 skeleton training -------------------------------------------------------
FT_SETS=(--set "width=$WIDTH" --set workers=2 --set target_batch=$(( FT_BATCH * 2 )) --set warmup_epochs=0.5)
finetune() {
  "${MIG[@]}" backbone train video --data "$P" --out "$OUT/ft" --device "$DEVICE" --epochs 1 \
    --batch-size "$FT_BATCH" "${FT_SETS[@]}" --overwrite &&
  "$PY" benchmarks/gpu_check_verify.py run "$OUT/ft"
}
step finetune finetune
skeleton() {
  "${MIG[@]}" backbone train skeleton --data "$P" --out "$OUT/skel" --epochs 1 --device "$DEVICE" "${SKEL_ARGS[@]}"
}
step skeleton-train skeleton

# ---- 4 extraction, every track -------------------------------------------------------------------
FT_CKPT="$OUT/ft/best.pt"
DIM=$([ "$WIDTH" = full ] && echo 768 || echo 128)
prec() { [ "$HAVE_PRECISION" = 1 ] && echo "--precision $1"; }
if [ -f "$FT_CKPT" ]; then
  extract_video() {
    local p="$1"
    rm -rf "$OUT/cache_$p.zarr"
    # shellcheck disable=SC2046
    "${MIG[@]}" extract video --data "$P" --cache "$OUT/cache_$p.zarr" --checkpoint "$FT_CKPT" --device "$DEVICE" \
      --workers 2 $(prec "$p") &&
    "${MIG[@]}" extract context --data "$P" --cache "$OUT/cache_$p.zarr" --checkpoint "$FT_CKPT" --device "$DEVICE" \
      --workers 2 --context-windows 2 $(prec "$p") &&
    "$PY" benchmarks/gpu_check_verify.py tokens "$OUT/cache_$p.zarr" video/mvit_v2_s --dim "$DIM" &&
    "$PY" benchmarks/gpu_check_verify.py tokens "$OUT/cache_$p.zarr" context/mvit_v2_s --dim "$DIM"
  }
  if [ "$HAVE_PRECISION" = 1 ]; then
    step extract-video-bf16 extract_video bf16
    step extract-video-fp32 extract_video fp32
    step bf16-vs-fp32 "$PY" benchmarks/gpu_check_verify.py compare "$OUT/cache_fp32.zarr" "$OUT/cache_bf16.zarr" \
      video/mvit_v2_s --tol "$BF16_TOL" --min-cos "$BF16_MIN_COS"
  else
    step extract-video extract_video default
    skip bf16-vs-fp32 "this extract has no --precision option (bf16 on CUDA, fp32 on CPU, not selectable)"
  fi
else
  skip extract-video "no fine-tuned checkpoint (the finetune step failed)"
fi
if [ -f "$OUT/skel/best.pt" ]; then
  extract_skeleton() {
    # shellcheck disable=SC2046
    "${MIG[@]}" extract skeleton --data "$P" --cache "$OUT/cache_default.zarr" --checkpoint "$OUT/skel/best.pt" \
      --device "$DEVICE" $(prec bf16) &&
    "$PY" benchmarks/gpu_check_verify.py tokens "$OUT/cache_default.zarr" joint/agcn --array features
  }
  step extract-skeleton extract_skeleton
else
  skip extract-skeleton "no skeleton checkpoint (the skeleton-train step failed)"
fi
extract_face() {
  # shellcheck disable=SC2046
  "${MIG[@]}" extract face --data "$P" --cache "$OUT/cache_default.zarr" --device "$DEVICE" --frames 2 \
    --workers 2 --batch-size "$FACE_BATCH" $(prec bf16) &&
  "$PY" benchmarks/gpu_check_verify.py tokens "$OUT/cache_default.zarr" face/swinface --array features
}
step extract-face extract_face

# ---- 5 torchrun ------------------------------------------------------------------------------------
TORCHRUN=("$PY" -m torch.distributed.run --standalone --nproc_per_node "$NPROC")
if [ -f "$FT_CKPT" ]; then
  ddp_extract() {
    rm -rf "$OUT/cache_ddp.zarr"
    # shellcheck disable=SC2046
    "${TORCHRUN[@]}" -m migfuse.cli extract video --data "$P" --cache "$OUT/cache_ddp.zarr" --checkpoint "$FT_CKPT" \
      --device "$DEVICE" --workers 1 $(prec bf16) &&
    "$PY" benchmarks/gpu_check_verify.py tokens "$OUT/cache_ddp.zarr" video/mvit_v2_s --dim "$DIM" &&
    "$PY" benchmarks/gpu_check_verify.py compare "$OUT/cache_$([ "$HAVE_PRECISION" = 1 ] && echo bf16 || echo default).zarr" \
      "$OUT/cache_ddp.zarr" video/mvit_v2_s --tol 0.02 --min-cos 0.999
  }
  step torchrun-extract ddp_extract
fi
ddp_train() {
  "${TORCHRUN[@]}" -m migfuse.cli backbone train video --data "$P" --out "$OUT/ft_ddp" --device "$DEVICE" --epochs 1 \
    --batch-size "$FT_BATCH" "${FT_SETS[@]}" --set workers=1 --overwrite &&
  "$PY" benchmarks/gpu_check_verify.py run "$OUT/ft_ddp"
}
step torchrun-train ddp_train

# ---- 6 throughput rows ----------------------------------------------------------------------------
if [ "$QUICK" = 1 ]; then
  step rows-finetune "$PY" benchmarks/finetune.py --device "$DEVICE" --widths demo,full --quick --extract \
    --json "$OUT/finetune.json"
else
  step rows-finetune "$PY" benchmarks/finetune.py --device "$DEVICE" --widths demo,full --batch 8 --steps 5 \
    --extract --decode --json "$OUT/finetune.json"
fi
E2E_ROWS="$OUT/e2e_rows.md"
: > "$E2E_ROWS"
if [ -f "$FT_CKPT" ]; then
  NCLIPS=$(( $(wc -l < "$P/manifest.csv") - 1 ))
  e2e() {
    local w="$1" t0 t1
    rm -rf "$OUT/cache_e2e.zarr"
    t0=$(date +%s.%N)
    # shellcheck disable=SC2046
    "${MIG[@]}" extract video --data "$P" --cache "$OUT/cache_e2e.zarr" --checkpoint "$FT_CKPT" --device "$DEVICE" \
      --workers "$w" --batch-size 8 $(prec bf16) || return 1
    t1=$(date +%s.%N)
    echo "| extract video end to end ($WIDTH width), --workers $w | $NCLIPS | $("$PY" -c "print(f'{$NCLIPS / ($t1 - $t0):.3f}')") |" \
      >> "$E2E_ROWS"
  }
  for w in $WORKERS_LIST; do step "rows-e2e-workers-$w" e2e "$w"; done
fi
if [ "$QUICK" = 0 ]; then
  step rows-face "$PY" benchmarks/face.py --device "$DEVICE" --frames 64 --batch 64
fi

# ---- report --------------------------------------------------------------------------------------
{
  echo "## gpu_check ($(date -u '+%Y-%m-%d %H:%M UTC'), device $DEVICE, quick $QUICK, $(( SECONDS - START )) s)"
  echo
  "$PY" -c "import torch, platform; print('torch', torch.__version__, '|', torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or platform.machine())"
  echo
  echo "| step | result | seconds |"
  echo "|---|---|---|"
  printf '%s\n' "${SUMMARY[@]}"
  echo
  [ -f "$OUT/logs/rows-finetune.log" ] && grep -E '^\||UTC' "$OUT/logs/rows-finetune.log" && echo
  if [ -s "$E2E_ROWS" ]; then
    echo "| end to end (includes model build and cache writes) | clips | clips/s |"
    echo "|---|---|---|"
    cat "$E2E_ROWS"
    echo
    echo "Pace: when clips/s grows with --workers, decoding sets the pace; when it stays flat near the"
    echo "forward rows above, the GPU does (model build and cache writes are included here, so on a"
    echo "dataset this small the fixed costs weigh: compare the workers against each other)."
  fi
  [ -f "$OUT/logs/rows-face.log" ] && echo && grep -E '^\|' "$OUT/logs/rows-face.log"
} > "$MD"
cat "$MD"
log "report: $MD ; logs: $OUT/logs"
if [ "$FAILED" != 0 ]; then
  log "FAILED: see the table above"
  exit 1
fi
log "all steps passed"
