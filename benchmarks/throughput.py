"""Training throughput benchmark: images/s, TFLOP/s and MFU per device, peak memory, data-wait share.

    deepspeed --num_gpus 2 benchmarks/throughput.py --recipe recipes/vit_tiny_mae.py      # CPU: 2 ranks
    deepspeed --num_gpus 1 benchmarks/throughput.py --model vit_l16 --stage mae --micro-batch 128
    deepspeed --num_gpus 1 benchmarks/throughput.py --model vit_6.5b14 --depth 4          # a slice of 6.5B's blocks
    mawstron bench train --recipe recipes/vit_tiny_wsp.py --gpus 2                        # same, validated first

Prints one JSON line and a summary, and writes the JSON to runs/benchmarks/ (--out benchmarks/results/... to
regenerate a committed result).  The logic is
``mawstron.parallel.launcher.bench`` (the trainer's own step, timed).
"""

import sys

from mawstron.parallel.launcher.bench import run_benchmark

if __name__ == "__main__":
    sys.exit(run_benchmark())
