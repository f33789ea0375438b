"""``mawstron bench train ...``: the training throughput benchmark under the deepspeed launcher."""

from __future__ import annotations

import argparse
import os
import shutil
import sys


def add_parser(subparsers):
    p = subparsers.add_parser("bench", help="benchmarks: `mawstron bench train --model vit_l16 --stage mae`",
                              epilog=benchmark_options_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=("train",), help="train: training throughput (images/s, TFLOP/s, MFU, memory)")
    p.add_argument("--gpus", type=int, default=0, help="ranks on this node (default: all GPUs, or 2 CPU ranks)")
    p.set_defaults(func=run, pass_unknown=True)


def benchmark_options_help() -> str:
    """The benchmark's own flags, passed on to every rank: shown by ``mawstron bench train --help`` too."""
    from mawstron.cli.train import recipe_options_help
    from mawstron.parallel.launcher.bench import build_arg_parser

    return recipe_options_help(build_arg_parser(), "benchmark options (passed on to every rank)")


def run(args, bench_args: list[str]) -> int:
    import torch

    from mawstron.parallel.launcher.launch import free_port
    from mawstron.parallel.launcher.bench import build_arg_parser, config_from_args
    from mawstron.parallel.config import ConfigError

    try:
        config_from_args(build_arg_parser().parse_args(bench_args))  # validate before any rank starts
    except ConfigError as e:
        print(f"mawstron bench: config error: {e}", file=sys.stderr)
        return 2
    env = dict(os.environ)
    from mawstron.parallel.console import launcher_log_args

    cmd = [shutil.which("deepspeed") or os.path.join(os.path.dirname(sys.executable), "deepspeed"),
           *launcher_log_args("--verbose" in bench_args or None)]
    if torch.cuda.is_available():
        cmd += ["--num_gpus", str(args.gpus)] if args.gpus else []
    else:
        env.setdefault("DS_ACCELERATOR", "cpu")
        cmd += ["--num_gpus", str(args.gpus or 2)]
    cmd += ["--master_port", str(free_port()), "--module", "mawstron.parallel.launcher.bench", *bench_args]
    os.execvpe(cmd[0], cmd, env)
