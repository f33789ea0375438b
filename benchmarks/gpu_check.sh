#!/usr/bin/env bash
# One command for a GPU machine: everything in mawstron that needs a GPU, in at most ~8 minutes on one H100/H200
# (a lent machine gives 15 minutes of device time in all, its start included).
#
#   benchmarks/gpu_check.sh                      # results (JSON + logs) under benchmarks/results/
#   OUT=/tmp/gpu benchmarks/gpu_check.sh         # ... under /tmp/gpu
#   BUDGET_S=300 benchmarks/gpu_check.sh         # all parts together stop after 300 s (default 450)
#   benchmarks/gpu_check.sh --wheels DIR         # first install what is missing from a folder of wheels
#                                                #   (prepared on a networked machine by benchmarks/gpu_wheels.sh)
#   benchmarks/gpu_check.sh --dry-run            # any machine: the plan, the interpreter correctness sweep and
#                                                #   a compile check for sm_90 (CPU only, about a minute)
#
# Parts, in this order, each under its own `timeout` (its budget, or what is left of BUDGET_S if less; what it
# wrote before is kept; the next part runs), each writing its JSON when it ends, and gpu_check-status.json
# rewritten after every part:
#   kernel tests (bf16)  tuning sweep (writes kernels/attention_configs.json)
#   evaluation at scale (#22): ViT-L/16 bf16 feature extraction (images/s) and the ImageNet-1k-shaped linear probe
#   (1,281,167 x 1280 features, 1,000 classes, the full L2 grid; target: under 5 minutes)
#   attention benchmark  kernel benchmark  ViT-L/16 MAE (triton, reference) and WSP (triton) throughput
#   ViT-2B/14 depth-sliced throughput   DALI mixed-decoder data-loader benchmark
# A part whose dependencies are missing (DeepSpeed for training, DALI for the loader) is skipped, and said so:
# the lent H200 has neither, and evaluation's DALI `mixed` decoding (core/data/dali_eval.py) is not run there.
# Python: $PYTHON, else .venv/bin/python, else python3.  Needs torch with CUDA, Triton >= 3.0 (3.6 and 3.9 used).
set -u
cd "$(dirname "$0")/.."
REPO=$(pwd)
OUT=${OUT:-benchmarks/results}
DRY_RUN=0
WHEELS=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --wheels) WHEELS=${2:?--wheels needs a folder}; shift ;;
    -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument $1 (expected --dry-run, --wheels DIR)" >&2; exit 2 ;;
  esac
  shift
done
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON; elif [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
STATUS="$OUT/gpu_check-status.txt"
: > "$STATUS"
START=$(date +%s)
# BUDGET_S: all parts together (default 450 s on a GPU; the dry run is held to it only when it is set)
DEADLINE=""
[ -n "${BUDGET_S:-}" ] && DEADLINE=$(( START + BUDGET_S ))

say() { echo "[gpu_check $(( $(date +%s) - START ))s] $*"; }
# the status so far as JSON too ({"part": "ok (12s)", ...}), rewritten after every part
status_json() {
  "$PY" -c 'import json, sys; print(json.dumps(dict(l.rstrip("\n").split(": ", 1) for l in open(sys.argv[1]) if ": " in l), indent=1))' \
    "$STATUS" > "$OUT/gpu_check-status.json.tmp" 2>/dev/null && mv "$OUT/gpu_check-status.json.tmp" "$OUT/gpu_check-status.json"
}
record() { echo "$1: $2" >> "$STATUS"; say "$1: $2"; status_json; }

# part NAME BUDGET_S CMD...: run with a time budget, log to $OUT/NAME.log, record ok / failed / timed out
part() {
  local name=$1 budget=$2
  shift 2
  if [ -n "$DEADLINE" ]; then  # never past BUDGET_S: a slow part cannot eat the ones after it
    local left=$(( DEADLINE - $(date +%s) ))
    if [ $left -lt 10 ]; then record "$name" "skipped: the ${BUDGET_S}s budget of gpu_check is spent"; return; fi
    [ $left -lt "$budget" ] && budget=$left
  fi
  say "start $name (budget ${budget}s): $*"
  local t0
  t0=$(date +%s)
  timeout --signal=INT --kill-after=15 "$budget" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  local took=$(( $(date +%s) - t0 ))
  tail -n 5 "$OUT/$name.log" | sed 's/^/    /'
  if [ $rc -eq 0 ]; then record "$name" "ok (${took}s)"
  elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then record "$name" "stopped at its ${budget}s budget (partial results kept)"
  else record "$name" "failed, exit $rc (${took}s; see $OUT/$name.log)"; fi
}
skip() { record "$1" "skipped: $2"; }
have() { "$PY" -c "import $1" > /dev/null 2>&1; }

# mawstron importable without installing it: a namespace folder of symlinks onto the repository's packages
if ! "$PY" -c "import mawstron.kernels" > /dev/null 2>&1; then
  PKG="$OUT/.pkg/mawstron"
  mkdir -p "$PKG"
  for sub in core kernels parallel cli; do ln -sfn "$REPO/$sub" "$PKG/$sub"; done
  export PYTHONPATH="$OUT/.pkg${PYTHONPATH:+:$PYTHONPATH}"
fi

if [ -n "$WHEELS" ]; then
  say "installing missing packages from $WHEELS (no network)"
  "$PY" -m pip install --no-index --find-links "$WHEELS" "$WHEELS"/*.whl 2>&1 | tail -n 3
fi

"$PY" - <<'EOF' | tee "$OUT/gpu_check-env.txt"
import platform, torch
try:
    import triton; tv = triton.__version__
except ImportError:
    tv = None
cuda = torch.cuda.is_available()
print(f"python {platform.python_version()}, torch {torch.__version__}, triton {tv}, cuda {cuda}"
      + (f", {torch.cuda.get_device_name()} sm_{''.join(map(str, torch.cuda.get_device_capability()))}" if cuda else ""))
EOF

if [ $DRY_RUN -eq 1 ]; then
  say "dry run: the plan a GPU run follows, then what a CPU can check"
  cat <<EOF
plan (budgets in seconds, ~565 if every dependency is present; all parts stop at BUDGET_S=${BUDGET_S:-450}):
  kernel_tests_bf16       40  pytest tests/test_kernels_{attention,ops}.py -k bf16
  tune_attention          50  benchmarks/tune_attention.py --budget-s 30 (table: kernels/attention_configs.json)
  eval_features_vit_l16   40  benchmarks/eval_scale.py --model vit_l16 --precision bf16 (images/s, one GPU)
  eval_probe_in1k        260  benchmarks/eval_scale.py --probe-n 1281167 --probe-d 1280 --probe-c 1000
  attention_bench         40  benchmarks/attention.py --rep-ms 20 (every preset shape, checked then timed)
  kernels_bench           20  benchmarks/kernels.py
  throughput_*            60  ViT-L/16 mae triton|reference, wsp triton, 20 s each (needs DeepSpeed)
  throughput_vit2b        25  ViT-2B/14, 4 blocks (needs DeepSpeed)
  dataloader_dali         30  benchmarks/dataloader.py --loader dali --dali-device mixed (needs DALI)
EOF
  "$PY" benchmarks/tune_attention.py --dry-run > "$OUT/tune_attention-plan.txt" 2>&1 && record tune_plan "ok"
  part interpreter_attention 300 env -u TRITON_INTERPRET "$PY" benchmarks/attention.py --tiny --out "$OUT/attention-dry-run.json"
  part interpreter_kernels 300 env -u TRITON_INTERPRET "$PY" benchmarks/kernels.py --tiny --out "$OUT/kernels-dry-run.json"
  part compile_sm90 300 env -u TRITON_INTERPRET "$PY" tests/_compile_kernels.py --quick --json "$OUT/compile-sm90.json"
  say "done in $(( $(date +%s) - START ))s; status in $STATUS"
  cat "$STATUS"
  grep -qv ": ok" "$STATUS" && exit 1
  exit 0
fi

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_check.sh: no CUDA device here; use --dry-run on a CPU machine" >&2
  exit 2
fi

BUDGET_S=${BUDGET_S:-450}
DEADLINE=$(( START + BUDGET_S ))
if have pytest; then
  part kernel_tests_bf16 40 "$PY" -m pytest tests/test_kernels_attention.py tests/test_kernels_ops.py -q -k "bf16 or BF16" -p no:cacheprovider
else
  skip kernel_tests_bf16 "pytest is not installed"
fi
part tune_attention 50 "$PY" benchmarks/tune_attention.py --budget-s 30 --out "$OUT/tune-attention.json"
cp kernels/attention_configs.json "$OUT/attention_configs.json"  # the table the remaining parts run with

# issue #22's targets first: ViT-L/16 features >= 2,000 img/s in bf16, the ImageNet-1k-shaped probe under 5 min
part eval_features_vit_l16 40 "$PY" benchmarks/eval_scale.py --device cuda --model vit_l16 --precision bf16 \
  --images 2048 --batch-size 256 --skip-probe --out "$OUT/eval_scale-features-vit_l16-bf16.json"
part eval_probe_in1k 260 "$PY" benchmarks/eval_scale.py --device cuda --skip-features --probe-n 1281167 \
  --probe-d 1280 --probe-c 1000 --probe-test-n 50000 --out "$OUT/eval_scale-probe-in1k.json"

part attention_bench 40 "$PY" benchmarks/attention.py --rep-ms 20 --warmup-ms 10 --out "$OUT/attention-bf16.json"
part kernels_bench 20 "$PY" benchmarks/kernels.py --out "$OUT/kernels-bf16.json"

if have deepspeed; then
  launch() {  # one rank on this GPU, without the deepspeed launcher's ssh/pdsh machinery
    env RANK=0 LOCAL_RANK=0 WORLD_SIZE=1 MASTER_ADDR=127.0.0.1 MASTER_PORT=$(( 20000 + RANDOM % 20000 )) "$@"
  }
  for run in mae-triton mae-reference wsp-triton; do
    stage=${run%-*}
    impl=${run#*-}
    part "throughput_vit_l16_${stage}_${impl}" 20 launch env MAWSTRON_KERNELS=$impl "$PY" benchmarks/throughput.py \
      --model vit_l16 --stage $stage --micro-batch 64 --warmup-steps 2 --steps 5 \
      --out "$OUT/throughput-vit_l16-$stage-$impl.json"
  done
  part throughput_vit2b_depth4 25 launch "$PY" benchmarks/throughput.py --model vit_2b14 --stage mae --depth 4 \
    --micro-batch 32 --warmup-steps 2 --steps 4 --out "$OUT/throughput-vit_2b14-depth4-mae.json"
else
  skip throughput "DeepSpeed is not installed (benchmarks/gpu_wheels.sh prepares it; then --wheels DIR)"
fi

if have nvidia.dali; then
  SHARDS="$OUT/.shards224"
  part dataloader_dali 30 bash -c "[ -e '$SHARDS/manifest.json' ] || '$PY' -m mawstron.cli.main data synth \
    --out '$SHARDS' --images 512 --size 224 --eval-images 16 --shard-size 128 && '$PY' benchmarks/dataloader.py \
    --shards '$SHARDS/train-*.tar' --loader dali --dali-device mixed --batches 10 --out '$OUT/dataloader-dali-mixed.json'"
else
  skip dataloader_dali "NVIDIA DALI is not installed (about 1 GB of wheels: not shipped by gpu_wheels.sh); evaluation's DALI mixed decoding is unverified on a GPU"
fi

say "done in $(( $(date +%s) - START ))s; results and logs in $OUT"
cat "$STATUS"
