"""Entry point of every recipe: parse overrides, validate, then dry-run or train.

Run as the user types it::

    deepspeed --num_gpus 8 recipes/vit_l16_mae.py --set train.steps=1000     # one node
    deepspeed --hostfile hosts recipes/vit6.5b_mae.py                          # multi-node
    torchrun --nproc_per_node 8 recipes/vit_l16_mae.py                         # torchrun works too
    python recipes/vit6.5b_mae.py --dry-run                                    # validate + plan, allocate nothing
    mawstron train recipes/vit_tiny_mae.py --gpus 2 --set train.steps=50       # validate, then start deepspeed

Configuration errors are reported before distributed initialisation, so every rank exits at once with the same
message instead of hanging in a collective; ``mawstron train`` and ``--dry-run`` catch them before any rank
starts.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys

from ..checkpoints.trust import trust_checkpoints
from ..config import ConfigError, RunConfig, apply_overrides, to_dict
from ..console import quiet_third_party
from ..planning.plan import format_plan, min_gpus, plan
from ..training.resilience import EXIT_PREEMPTED, Preempted
from ..training.schedule import Schedule
from ..training.trainer import Trainer, TrainingDiverged
from .hostfile import HostfileError, check_launcher_hostfile
from .preflight import PreflightError, data_notice, prepare_run_folder


def build_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="mawstron training recipe")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set train.steps=200 (repeatable)")
    p.add_argument("--config", action="append", default=[], metavar="FILE.yaml",
                   help="YAML file of overrides, applied before --set (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue from <checkpoint dir>/latest")
    p.add_argument("--overwrite", action="store_true",
                   help="start afresh in a run folder that holds checkpoints (its old checkpoints are removed)")
    p.add_argument("--verbose", action="store_true", help="show DeepSpeed INFO lines and third-party warnings")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="checkpoint.init_from may need more than tensors (unpickling runs code from the files: only "
                        "for folders whose source you trust; README: Security)")
    p.add_argument("--dry-run", action="store_true", help="validate, build on the meta device, print the plan")
    p.add_argument("--gpus", type=int, default=0, help="with --dry-run: plan for this many GPUs (default: the minimum)")
    p.add_argument("--gpu-mem-gib", type=float, default=80.0, help="with --dry-run: memory per GPU")
    p.add_argument("--local_rank", "--local-rank", type=int, default=-1, help=argparse.SUPPRESS)  # deepspeed launcher
    return p


def resolve_config(cfg: RunConfig, args: argparse.Namespace) -> RunConfig:
    """Recipe config + YAML + --set + --resume, validated; raises ConfigError."""
    assignments = list(args.set)
    if args.resume:
        assignments.append("checkpoint.resume=true")
    return apply_overrides(cfg, args.config, assignments)


def dry_run_report(cfg: RunConfig, gpus: int, gpu_mem_gib: float) -> str:
    stage = cfg.train.stage
    kwargs = dict(checkpoint_every=cfg.parallel.activation_checkpointing, mae=cfg.mae,
                  offload_optimizer=cfg.parallel.offload_optimizer != "none",
                  offload_params=cfg.parallel.offload_params != "none", **cfg.model.vit_overrides())
    kwargs.update(cfg.stage.plan_inputs(cfg))  # LiT: the text tower; WSP / fine-tuning: a placeholder head
    minimum = min_gpus(cfg.model.preset, stage, gpu_mem_gib, cfg.train.micro_batch, **kwargs)
    p = plan(cfg.model.preset, stage, gpus or minimum or 1, gpu_mem_gib, cfg.train.micro_batch, **kwargs)
    lines = [f"[dry run] {cfg.name}: config valid; model built on the meta device, nothing allocated",
             json.dumps(to_dict(cfg), indent=1, default=str), format_plan(p),
             f"  minimum {gpu_mem_gib:g} GiB GPUs for this micro-batch: {minimum if minimum else 'none up to 65536'}"]
    try:
        lines.append(schedule_line(cfg, gpus or _smallest_dividing_world(cfg, minimum or 1)))
    except ConfigError as e:  # the plan above still holds; the run itself would refuse to start
        lines.append(f"  schedule on {gpus}: refused: {e}")
    if cfg.stage.plan_classes:
        lines.append(f"  (WSP head sized for {cfg.stage.plan_classes} classes here; the run sizes it from the vocabulary)")
    return "\n".join(lines)


def _smallest_dividing_world(cfg: RunConfig, at_least: int) -> int:
    """The smallest world size >= ``at_least`` that the global batch divides over (``at_least`` if none)."""
    t = cfg.train
    if not t.global_batch:
        return at_least
    for world in range(at_least, t.global_batch // t.micro_batch + 1):
        if t.global_batch % (t.micro_batch * world) == 0:
            return world
    return at_least


def schedule_line(cfg: RunConfig, world_size: int) -> str:
    """``  schedule on N GPUs: global batch ...``; ConfigError when the global batch does not divide."""
    gpus = f"{world_size} GPU{'s' if world_size != 1 else ''}"
    return f"  schedule on {gpus}: {Schedule.of(cfg, world_size).format()}"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the rendezvous port of a launcher or of a world of one)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ensure_process_group_env() -> None:
    """Allow ``python recipe.py`` without a launcher: a world of one process on a free local port."""
    if "RANK" in os.environ:
        return
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))


def _say_once(message: str) -> None:
    """A refusal that every rank reaches alike: printed by rank 0 only (every rank exits 2)."""
    if os.environ.get("RANK", "0") == "0":
        print(message, file=sys.stderr, flush=True)


def launch(cfg: RunConfig, argv: list[str] | None = None) -> int:
    """Run a recipe: returns the process exit code (0 ok, 2 bad config, 3 diverged, 75 preempted: a complete
    checkpoint was saved, rerun with --resume; see ``resilience.EXIT_PREEMPTED``)."""
    args = build_arg_parser().parse_args(argv)
    try:
        cfg = resolve_config(cfg, args)
        if args.dry_run:
            print(dry_run_report(cfg, args.gpus, args.gpu_mem_gib), flush=True)
            if args.gpus:
                cfg.train.grad_accum_for(args.gpus)  # the dry run's answer for these GPUs: it would not start
            return 0
        # the world size is known before any rank initialises: a global batch that cannot divide ends every
        # rank here, with the same message, instead of hanging in a collective
        cfg.train.grad_accum_for(int(os.environ.get("WORLD_SIZE", "1")))
    except ConfigError as e:
        _say_once(f"mawstron: config error: {e}")
        return 2
    if args.trust_checkpoint:
        trust_checkpoints()  # this rank, and the processes it starts
    quiet_third_party(args.verbose or None)
    first_rank = os.environ.get("RANK", "0") == "0"
    try:
        check_launcher_hostfile()  # `deepspeed --hostfile F` with F missing falls back to this node: refuse
        prepare_run_folder(cfg, args.overwrite, clear=first_rank)
    except (PreflightError, HostfileError) as e:
        _say_once(f"mawstron: {e}")
        return 2
    if first_rank and data_notice(cfg):
        print(data_notice(cfg), flush=True)
    launched_rank = "RANK" in os.environ  # a rank process of a launcher, not a caller's own process
    _ensure_process_group_env()
    try:
        Trainer(cfg).run()
    except TrainingDiverged as e:
        print(f"mawstron: training diverged: {e}", file=sys.stderr, flush=True)
        return 3
    except Preempted as e:
        print(f"mawstron: {e}", file=sys.stderr, flush=True)
        return _leave(EXIT_PREEMPTED) if launched_rank else EXIT_PREEMPTED
    return _leave(0) if launched_rank else 0


def _leave(code: int) -> int:
    """A launched rank whose run ended as planned (done, or preempted after its save) leaves without interpreter
    finalization: the trainer has destroyed its process group, but a gloo/shm rank still aborted now and then at
    interpreter exit ("terminate called without an active exception", rc -6 after 'done'), when objects that
    C++ threads still referenced were torn down with the interpreter."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
