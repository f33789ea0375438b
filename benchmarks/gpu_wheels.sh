#!/usr/bin/env bash
# Prepare, on a machine with network, the wheels that benchmarks/gpu_check.sh --wheels DIR installs on a GPU
# machine without network: DeepSpeed (built here as a pure-Python wheel; its C++/CUDA ops JIT-build on first use)
# and the dependencies that such a machine (Python 3.12, its own torch, numpy, tqdm, packaging) lacks.
#
#   benchmarks/gpu_wheels.sh DIR            # default DIR: runs/gpu_wheels; prints the total size (must stay < 64 MiB)
#
# Binary wheels are downloaded for the target, not for this machine: --python-version 3.12 --only-binary=:all:
# --platform manylinux2014_x86_64 (and the manylinux_2_17 alias).  torch is never downloaded.  DALI (about
# 1 GB) is not included: gpu_check.sh skips the DALI part where it is missing.
set -euo pipefail
DIR=""
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    -*) echo "gpu_wheels.sh: unknown option $1 (usage: benchmarks/gpu_wheels.sh [DIR]; --help)" >&2; exit 2 ;;
    *) if [ -n "$DIR" ]; then echo "gpu_wheels.sh: one folder only, got $DIR and $1" >&2; exit 2; fi; DIR=$1 ;;
  esac
  shift
done
cd "$(dirname "$0")/.."
DIR=${DIR:-runs/gpu_wheels}
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
DEEPSPEED_VERSION=${DEEPSPEED_VERSION:-$("$PY" -c "from importlib.metadata import version; print(version('deepspeed'))" 2>/dev/null || echo 0.18.4)}
mkdir -p "$DIR"

# DeepSpeed from its source distribution, with no ops prebuilt (so the wheel is pure Python and fits any CUDA);
# its setup.py imports torch, hence --no-build-isolation with this environment's torch
DS_BUILD_OPS=0 "$PY" -m pip wheel --no-deps --no-build-isolation --no-binary deepspeed -w "$DIR" \
  "deepspeed==$DEEPSPEED_VERSION"

# DeepSpeed's requirements that a bare torch + transformers environment lacks (with their own dependencies,
# resolved for the target: pydantic pins its pydantic-core), and pytest for the kernel tests
"$PY" -m pip download -d "$DIR" --python-version 3.12 --only-binary=:all: \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
  "pydantic>=2,<3" hjson msgpack ninja py-cpuinfo einops psutil pytest

ls -l "$DIR"
total=$(du -cb "$DIR"/*.whl | tail -n 1 | cut -f1)
echo "total $(( total / 1024 )) KiB in $(ls "$DIR"/*.whl | wc -l) wheels"
if [ "$total" -ge $(( 64 * 1024 * 1024 )) ]; then echo "over the 64 MiB limit" >&2; exit 1; fi
