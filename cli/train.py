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

from mawstron.parallel.launcher.argtypes import positive_int


def add_parser(subparsers):
    p = subparsers.add_parser("train", help="validate a recipe's config, then run it under the deepspeed launcher",
                              description=__doc__, epilog=recipe_options_help(),
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recipe", help="path to a recipe, e.g. recipes/vit_tiny_mae.py")
    p.add_argument("--gpus", type=positive_int, default=0,
                   help="ranks per node (default: all GPUs, or 2 CPU ranks; with --hostfile: every slot); "
                        "--dry-run plans for the ranks this gives")
    p.add_argument("--hostfile", default="",
                   help="DeepSpeed hostfile for multi-node runs, one line per node: HOST slots=GPUS; checked before "
                        "launch (it must exist, parse, and hold the ranks the global batch needs)")
    p.add_argument("--master-port", type=int, default=0, help="default: a free port")
    p.set_defaults(func=run, pass_unknown=True)


def recipe_options_help(parser=None, title: str = "recipe options (passed on to the recipe on every rank)",
                        hide: tuple[str, ...] = ("--gpus",)) -> str:
    """The recipe's own flags (``--set``, ``--resume``, ``--overwrite``, ...), passed on to every rank: shown by
    ``mawstron train --help`` too.  Flags named in ``hide`` (``--gpus``, which ``mawstron train`` has itself and
    hands to the dry run) are left out, so no option is listed twice."""
    from mawstron.parallel.launcher.launch import build_arg_parser

    text = (parser or build_arg_parser()).format_help()
    options = text[text.index("options:") + len("options:"):] if "options:" in text else text
    lines, skipping = [], False
    for line in options.splitlines():
        stripped = line.strip()
        if stripped.startswith("-"):
            skipping = stripped.startswith("-h, --help") or stripped.split()[0].rstrip(",") in hide
        if not skipping:
            lines.append(line)
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


def _world_size(args, cuda: bool) -> tuple[int | None, str]:
    """(ranks the launcher will start, what they are) from --hostfile and --gpus; (None, message) when the
    hostfile is missing, malformed or cannot give --gpus per node."""
    if args.hostfile:
        from mawstron.parallel.launcher.hostfile import HostfileError, describe, read_hostfile, world_size

        try:
            pool = read_hostfile(args.hostfile)
            world = world_size(pool, args.gpus, args.hostfile)
        except HostfileError as e:
            return None, str(e)
        return world, f"{args.hostfile} ({describe(pool, world)})"
    if args.gpus:
        return args.gpus, f"{args.gpus} rank{'s' if args.gpus != 1 else ''} (--gpus {args.gpus})"
    if cuda:
        import torch

        count = torch.cuda.device_count()
        return count, f"{count} GPU{'s' if count != 1 else ''} (every GPU of this node)"
    return 2, "2 CPU ranks (the default without a GPU)"


def run(args, recipe_args: list[str]) -> int:
    import torch

    from mawstron.parallel.config import ConfigError

    try:
        cfg = validate(args.recipe, recipe_args)
    except ConfigError as e:
        print(f"mawstron: config error: {e}", file=sys.stderr)
        return 2
    from mawstron.core.data import check_data
    from mawstron.parallel.checkpoints.sources import check_local_input
    from mawstron.parallel.training.periodic_eval import check_eval_data

    try:
        if cfg.data.source != "synthetic":
            check_local_input(cfg.data.shards, "data.shards", "training", remote_ok=True)
        check_data(cfg.data, cfg.train.stage)
        check_eval_data(cfg.eval)
    except ValueError as e:
        print(f"mawstron: data error: {e}", file=sys.stderr)
        return 2
    from mawstron.parallel.console import launcher_log_args
    from mawstron.parallel.launcher.launch import build_arg_parser, free_port
    from mawstron.parallel.launcher.preflight import PreflightError, prepare_run_folder

    recipe_flags = build_arg_parser().parse_args(recipe_args)
    world, where = _world_size(args, torch.cuda.is_available())
    if world is None:  # a hostfile that is missing, malformed or short of --gpus: refused before anything starts
        print(f"mawstron: {where}", file=sys.stderr)
        return 2
    if recipe_flags.dry_run:  # the recipe's own dry run, in this process: nothing starts
        from mawstron.parallel.launcher.launch import launch

        planned = [f"--gpus={world}"] if (args.gpus or args.hostfile) and not recipe_flags.gpus else []
        return launch(cfg, recipe_args + planned)
    try:  # the global batch must divide over the ranks the launcher will start: refused here, once
        cfg.train.grad_accum_for(world)
    except ConfigError as e:
        print(f"mawstron: config error on {where}: {e}", file=sys.stderr)
        return 2
    try:
        removed = prepare_run_folder(cfg, recipe_flags.overwrite)
    except PreflightError as e:
        print(f"mawstron: {e}", file=sys.stderr)
        return 2
    if removed:
        print(f"[mawstron] --overwrite: removed {len(removed)} old checkpoint entries of {cfg.checkpoint_dir}")
    from mawstron.parallel.launcher.preflight import warmup_notice

    if warmup_notice(cfg):
        print(warmup_notice(cfg), file=sys.stderr)
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
        if args.gpus or not args.hostfile:
            cmd += ["--num_gpus", str(args.gpus or 2)]
    cmd += ["--master_port", str(args.master_port or free_port()), args.recipe, *recipe_args]
    print(f"[mawstron] config of {cfg.name} is valid; starting: {' '.join(cmd)}", flush=True)
    os.execvpe(cmd[0], cmd, env)
