"""``mawstron train RECIPE [--gpus N] [--hostfile F] [recipe args]``: validate, then start the deepspeed launcher.

The recipe's config and every ``--set`` / ``--config`` override are checked here, in one process, so a typo is
reported before any rank starts.  Then the DeepSpeed launcher runs the recipe exactly as
``deepspeed --num_gpus N RECIPE ...`` would; on a machine without a GPU it starts CPU ranks
(``DS_ACCELERATOR=cpu``, gloo).
"""

from __future__ import annotations

import argparse
import os
import runpy
import shutil
import sys


def add_parser(subparsers):
    p = subparsers.add_parser("train", help="validate a recipe's config, then run it under the deepspeed launcher",
                              description=__doc__, epilog=recipe_options_help(),
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recipe", help="path to a recipe, e.g. recipes/vit_tiny_mae.py")
    p.add_argument("--gpus", type=int, default=0, help="ranks on this node (default: all GPUs, or 2 CPU ranks)")
    p.add_argument("--hostfile", default="", help="DeepSpeed hostfile for multi-node runs")
    p.add_argument("--master-port", type=int, default=0, help="default: a free port")
    p.set_defaults(func=run, pass_unknown=True)


def recipe_options_help(parser=None, title: str = "recipe options (passed on to the recipe on every rank)") -> str:
    """The recipe's own flags (``--set``, ``--resume``, ``--overwrite``, ...), passed on to every rank: shown by
    ``mawstron train --help`` too."""
    from mawstron.parallel.launcher.launch import build_arg_parser

    text = (parser or build_arg_parser()).format_help()
    options = text[text.index("options:") + len("options:"):] if "options:" in text else text
    lines = [line for line in options.splitlines() if not line.strip().startswith("-h, --help")
             and "show this help message" not in line]
    return f"{title}:" + "\n".join(lines)


def validate(recipe: str, recipe_args: list[str]):
    """The recipe's resolved RunConfig (raises ConfigError / SystemExit with a message on any problem)."""
    from mawstron.parallel.config import RunConfig
    from mawstron.parallel.launcher.launch import build_arg_parser, resolve_config

    if not os.path.isfile(recipe):
        raise SystemExit(f"mawstron train: recipe {recipe!r} does not exist")
    namespace = runpy.run_path(recipe, run_name="__mawstron_validate__")
    cfg = namespace.get("CONFIG")
    if not isinstance(cfg, RunConfig):
        raise SystemExit(f"mawstron train: {recipe} defines no CONFIG = RunConfig(...)")
    return resolve_config(cfg, build_arg_parser().parse_args(recipe_args))


def run(args, recipe_args: list[str]) -> int:
    import torch

    from mawstron.parallel.config import ConfigError

    try:
        cfg = validate(args.recipe, recipe_args)
    except ConfigError as e:
        print(f"mawstron: config error: {e}", file=sys.stderr)
        return 2
    from mawstron.core.data import check_data
    from mawstron.parallel.training.periodic_eval import check_eval_data

    try:
        check_data(cfg.data, cfg.train.stage)
        check_eval_data(cfg.eval)
    except ValueError as e:
        print(f"mawstron: data error: {e}", file=sys.stderr)
        return 2
    from mawstron.parallel.console import launcher_log_args
    from mawstron.parallel.launcher.launch import build_arg_parser, free_port
    from mawstron.parallel.launcher.preflight import PreflightError, prepare_run_folder

    recipe_flags = build_arg_parser().parse_args(recipe_args)
    if recipe_flags.dry_run:  # the recipe's own dry run, in this process: nothing starts
        from mawstron.parallel.launcher.launch import launch

        return launch(cfg, recipe_args)
    try:
        removed = prepare_run_folder(cfg, recipe_flags.overwrite)
    except PreflightError as e:
        print(f"mawstron: {e}", file=sys.stderr)
        return 2
    if removed:
        print(f"[mawstron] --overwrite: removed {len(removed)} old checkpoint entries of {cfg.checkpoint_dir}")
    launcher = shutil.which("deepspeed") or os.path.join(os.path.dirname(sys.executable), "deepspeed")
    cmd = [launcher, *launcher_log_args(recipe_flags.verbose or None)]
    env = dict(os.environ)
    if recipe_flags.verbose:
        env["MAWSTRON_VERBOSE"] = "1"
    if args.hostfile:
        cmd += ["--hostfile", args.hostfile]
    if torch.cuda.is_available():
        if args.gpus:
            cmd += ["--num_gpus", str(args.gpus)]
    else:
        env.setdefault("DS_ACCELERATOR", "cpu")
        cmd += ["--num_gpus", str(args.gpus or 2)]
    cmd += ["--master_port", str(args.master_port or free_port()), args.recipe, *recipe_args]
    print(f"[mawstron] config of {cfg.name} is valid; starting: {' '.join(cmd)}", flush=True)
    os.execvpe(cmd[0], cmd, env)
