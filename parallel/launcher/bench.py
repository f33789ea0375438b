"""Training throughput: steady-state steps of the real trainer, timed, summarised as one JSON record.

Runs the exact training step of ``Trainer`` (ZeRO stage, activation checkpointing, precision as the config sets
them) on synthetic tensors or the real data pipeline, excludes warm-up steps, and reports the median: images/s,
TFLOP/s per device, MFU against the device's bf16 peak (None on a CPU, where it is not meaningful), peak
memory, and the share of step time spent waiting for data.  Launch it like a recipe::

    deepspeed --num_gpus 8 --module mawstron.parallel.launcher.bench --model vit_l16 --stage mae --micro-batch 64
    mawstron bench train --recipe recipes/vit_tiny_mae.py --gpus 2       # validated first, then deepspeed

The configuration is a recipe's (``--recipe``: its ZeRO stage, checkpointing, precision, MAE decoder) or, with
``--model``/``--stage``, the paper's settings for that preset (``parallel/planning/paper.py``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import runpy
import statistics
import subprocess
import sys

import torch

import torch.distributed as dist

from ..config import ConfigError, ModelConfig, RunConfig, apply_overrides
from ..console import quiet_third_party
from ..planning.paper import mae_run, wsp_run
from ..training.trainer import Trainer
from .argtypes import nonnegative_int, positive_int
from .launch import _ensure_process_group_env

PAPER_RUNS = {"mae": (mae_run, {}), "wsp": (wsp_run, {"init_from": ""})}  # --stage: builder, its extra arguments

# results of ad-hoc runs stay out of the repository; the committed ones are regenerated on purpose with
# --out benchmarks/results/<name>.json
RESULTS_DIR = "runs/benchmarks"


def build_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="training throughput benchmark (one JSON line)")
    p.add_argument("--recipe", default="", help="take the run config from this recipe file")
    p.add_argument("--model", default="vit_b16", help="preset (without --recipe: the paper's settings for it)")
    p.add_argument("--stage", choices=("mae", "wsp"), default="mae", help="without --recipe")
    p.add_argument("--micro-batch", type=nonnegative_int, default=0,
                   help="images per rank (default: the recipe's, or 32)")
    p.add_argument("--warmup-steps", type=nonnegative_int, default=5, help="excluded from the statistics")
    p.add_argument("--steps", type=positive_int, default=20, help="measured steps")
    p.add_argument("--depth", type=nonnegative_int, default=0, help="benchmark a slice of the model's blocks (0: all)")
    p.add_argument("--activation-checkpointing", type=int, default=-1,
                   help="every k-th block, 0 off (default: the recipe's)")
    p.add_argument("--data", choices=("synthetic", "shards"), default="synthetic")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any RunConfig override")
    p.add_argument("--out", default="", help="JSON file (default: runs/benchmarks/throughput-<...>.json)")
    p.add_argument("--verbose", action="store_true", help="show DeepSpeed INFO lines and third-party warnings")
    p.add_argument("--local_rank", "--local-rank", type=int, default=-1, help=argparse.SUPPRESS)
    return p


def config_from_args(args) -> RunConfig:
    """The benchmarked RunConfig: a recipe's or the paper's, with the benchmark's own settings on top."""
    if args.recipe:
        if not os.path.isfile(args.recipe):
            raise ConfigError(f"--recipe {args.recipe!r} does not exist")
        cfg = runpy.run_path(args.recipe, run_name="__mawstron_bench__").get("CONFIG")
        if not isinstance(cfg, RunConfig):
            raise ConfigError(f"{args.recipe} defines no CONFIG = RunConfig(...)")
    else:
        build, extra = PAPER_RUNS[args.stage]
        cfg = build(f"{args.model}_{args.stage}", args.model, micro_batch=args.micro_batch or 32, **extra)
    overrides = [f"name=bench_{cfg.name}", f"train.steps={args.warmup_steps + args.steps}", f"data.source={args.data}",
                 "checkpoint.init_from=", "checkpoint.resume=false"]
    if args.micro_batch:
        overrides.append(f"train.micro_batch={args.micro_batch}")
    if args.depth:
        overrides.append(f"model.depth={args.depth}")
    if args.activation_checkpointing >= 0:
        overrides.append(f"parallel.activation_checkpointing={args.activation_checkpointing}")
    return apply_overrides(cfg, [], overrides + list(args.set))


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=os.path.dirname(os.path.abspath(__file__)), timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile with linear interpolation between the closest ranks (numpy's default): never below
    the median for q >= 50."""
    import numpy as np

    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def summarize(records: list[dict], trainer, args, cfg: RunConfig, peak_mem_all_ranks: float) -> dict:
    times = sorted(r["step_time_s"] for r in records)
    median = statistics.median(times)
    images_per_s = trainer.global_batch / median
    tflops = trainer.flops_per_image * images_per_s / trainer.world_size / 1e12
    full_depth = ModelConfig(preset=cfg.model.preset).vit_config().depth
    return {
        "benchmark": "train_throughput",
        "model": cfg.model.preset,
        "stage": cfg.train.stage,
        "blocks": trainer.vit_config.depth,
        "slice_of_blocks": trainer.vit_config.depth != full_depth,
        "img_size": trainer.vit_config.img_size,
        "world_size": trainer.world_size,
        "micro_batch": cfg.train.micro_batch,
        "global_batch": trainer.global_batch,
        "precision": cfg.parallel.precision,
        "zero_stage": cfg.parallel.zero_stage,
        "activation_checkpointing": cfg.parallel.activation_checkpointing,
        "data": cfg.data.source if cfg.data.source == "synthetic" else f"shards:{cfg.data.loader}",
        "warmup_steps": args.warmup_steps,
        "measured_steps": len(records),
        "step_time_s_median": median,
        "step_time_s_p90": percentile(times, 90),
        "images_per_s": images_per_s,
        "tflops_per_device": tflops,
        "mfu": tflops / trainer.device_peak if trainer.device_peak else None,
        "mfu_note": None if trainer.device_peak else "MFU is not meaningful on this device (no tensor-core peak)",
        "peak_mem_gib": peak_mem_all_ranks,
        "data_wait_share": statistics.mean(r["data_wait_share"] for r in records),
        "device": trainer.device_name,
        "train_gflops_per_image": trainer.flops_per_image / 1e9,
        "commit": git_commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "host": platform.node(),
    }


def run_benchmark(argv: list[str] | None = None) -> int:
    args = build_arg_parser().parse_args(argv)
    try:
        cfg = config_from_args(args)
    except ConfigError as e:
        print(f"mawstron bench: config error: {e}", file=sys.stderr, flush=True)
        return 2
    quiet_third_party(args.verbose or None)
    _ensure_process_group_env()
    trainer = Trainer(cfg)
    trainer.init_distributed()
    trainer.build()
    trainer.batches = iter(trainer.loader)
    try:
        records = [trainer.train_step() for _ in range(args.warmup_steps + args.steps)][args.warmup_steps:]
    finally:
        trainer.close_loader()  # its DataLoader workers hold SIGTERM: end them here (Trainer.close_loader)
    peak = torch.tensor([max(r["peak_mem_gib"] for r in records)], dtype=torch.float64)
    dist.all_reduce(peak, op=dist.ReduceOp.MAX)
    result = summarize(records, trainer, args, cfg, float(peak))
    if trainer.rank == 0:
        name = (f"throughput-{cfg.model.preset}-{cfg.train.stage}-{cfg.parallel.precision}-"
                f"{result['device'].split()[0].lower()}-{result['data'].split(':')[0]}.json")
        out = args.out or os.path.join(RESULTS_DIR, name)
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        with open(out, "w") as f:
            json.dump(result, f, indent=1)
        print(json.dumps(result), flush=True)
        mfu = f", MFU {result['mfu']:.1%}" if result["mfu"] is not None else ", MFU n/a on CPU"
        print(f"[bench] {result['model']} {result['stage']} on {result['world_size']} x {result['device']}: "
              f"{result['images_per_s']:.1f} img/s, {result['tflops_per_device']:.3f} TFLOP/s per device{mfu}, "
              f"peak {result['peak_mem_gib']:.2f} GiB, data wait {result['data_wait_share']:.1%} -> {out}",
              file=sys.stderr, flush=True)  # stdout holds the JSON line alone
    # leave the process group together: a gloo group left to interpreter exit can abort the rank (rc -6,
    # "terminate called without an active exception"), as Trainer.run does after a run
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(run_benchmark())
