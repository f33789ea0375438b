#!/usr/bin/env bash
# Slurm batch script for a mawstron recipe on many nodes: DeepSpeed's per-node launcher on every node (one srun
# task per node, no ssh/pdsh needed), the preemption signal wired to the trainer's SIGTERM save, and --resume added
# by itself when the run folder already holds a checkpoint, so a requeued job continues where it stopped.
#
#   sbatch --nodes 32 recipes/slurm.sh recipes/vit_l16_mae.py --set 'data.shards=/data/ig/{000000..099999}.tar'
#   recipes/slurm.sh --dry-run RECIPE [recipe args]   # any machine: writes the hostfile, runs every check
#                                                      # (mawstron train --dry-run), prints the srun command
#   recipes/slurm.sh --help
#
# Environment: GPUS_PER_NODE (default: SLURM_GPUS_ON_NODE), MASTER_PORT (29500), PYTHON (.venv/bin/python, else
# python3), HOSTFILE (runs/slurm-<job id>.hosts), REQUEUE=0 to end the job after a preemption instead of requeueing;
# outside a job, --dry-run reads SLURM_JOB_NODELIST (e.g. node[001-032]).
#SBATCH --job-name=mawstron
#SBATCH --nodes=32
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --time=24:00:00
#SBATCH --signal=TERM@180
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=slurm-%j.out
set -euo pipefail
DRY_RUN=0
case "${1:-}" in
  -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
  --dry-run) DRY_RUN=1; shift ;;
  -*) echo "slurm.sh: unknown option $1 (usage: sbatch recipes/slurm.sh RECIPE [recipe args]; --help)" >&2; exit 2 ;;
  "") echo "slurm.sh: give a recipe: sbatch recipes/slurm.sh recipes/vit_l16_mae.py [recipe args] (--help)" >&2
      exit 2 ;;
esac
RECIPE=$1
shift
if [ -n "${SLURM_SUBMIT_DIR:-}" ] && [ "$DRY_RUN" = 0 ]; then cd "$SLURM_SUBMIT_DIR"; else cd "$(dirname "$0")/.."; fi
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
HOSTFILE=${HOSTFILE:-runs/slurm-${SLURM_JOB_ID:-dry-run}.hosts}
say() { echo "[slurm.sh] $*" >&2; }

# 1. the job's nodes as a DeepSpeed hostfile (HOST slots=GPUS), checked by DeepSpeed's own parser
"$PY" -m mawstron.parallel.launcher.hostfile slurm "$HOSTFILE" ${GPUS_PER_NODE:+--gpus-per-node "$GPUS_PER_NODE"}

# 2. a requeued job continues its run: --resume when the run folder already holds a complete checkpoint
mapfile -t RUN < <("$PY" - "$RECIPE" "$@" <<'PY'
import sys
from mawstron.parallel.console import quiet_third_party
quiet_third_party()
from mawstron.cli.train import validate
from mawstron.parallel.checkpoints.store import is_zero_checkpoint_dir
recipe, args = sys.argv[1], sys.argv[2:]
cfg = validate(recipe, args)
fresh = not is_zero_checkpoint_dir(cfg.checkpoint_dir) or "--resume" in args or "--overwrite" in args
print(cfg.run_dir)
print("" if fresh else "--resume")
PY
)
RUN_DIR=${RUN[0]}
EXTRA=()
if [ -n "${RUN[1]:-}" ]; then EXTRA=(--resume); say "$RUN_DIR holds checkpoints: continuing it with --resume"; fi

# 3. every check mawstron train makes before a launch (config, data, hostfile, global batch on these ranks)
"$PY" -m mawstron.cli.main train "$RECIPE" --hostfile "$HOSTFILE" --dry-run "$@" "${EXTRA[@]}" \
  | grep -E "^\s+schedule on" >&2

# 4. DeepSpeed's per-node launcher on every node; Slurm's TERM (--signal=TERM@180 before the time limit, or a
#    preemption) reaches every process of the step: each rank records it, all save the same step, then exit 75
MASTER_ADDR=$(head -n 1 "$HOSTFILE" | cut -d' ' -f1)
MASTER_PORT=${MASTER_PORT:-29500}
WORLD_INFO=$("$PY" -m mawstron.parallel.launcher.hostfile world-info "$HOSTFILE")
NODE_CMD='exec "$1" -u -m deepspeed.launcher.launch --world_info="$2" --node_rank="$SLURM_NODEID" --master_addr="$3" --master_port="$4" --log_level=warning "${@:5}"'
SRUN=(srun --ntasks-per-node=1 --kill-on-bad-exit=1 bash -c "$NODE_CMD" _ "$PY" "$WORLD_INFO" "$MASTER_ADDR"
      "$MASTER_PORT" "$RECIPE" "$@" "${EXTRA[@]}")
if [ "$DRY_RUN" = 1 ]; then
  printf '%q ' "${SRUN[@]}"
  echo
  exit 0
fi
say "starting $RECIPE on $(wc -l < "$HOSTFILE") nodes; status: $RUN_DIR/status.json"
trap 'say "SIGTERM: the ranks save the current step and stop"' TERM
"${SRUN[@]}" &
STEP=$!
RC=0
wait "$STEP" || RC=$?
while kill -0 "$STEP" 2>/dev/null; do wait "$STEP" || RC=$?; done

# 5. preempted (state "preempted" in status.json, a complete checkpoint saved): requeue; the next start resumes
STATE=$("$PY" -c "import json,sys; print(json.load(open(sys.argv[1])).get('state', ''))" "$RUN_DIR/status.json" \
        2>/dev/null || echo unknown)
if [ "$STATE" = preempted ] && [ "${REQUEUE:-1}" = 1 ] && [ -n "${SLURM_JOB_ID:-}" ]; then
  say "preempted with a complete checkpoint: requeueing job $SLURM_JOB_ID (it continues with --resume)"
  scontrol requeue "$SLURM_JOB_ID"
  exit 0
fi
say "run ended: state $STATE, exit code $RC"
exit "$RC"
