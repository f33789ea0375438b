"""``--device`` / ``--gpus`` / ``--hostfile`` for the evaluation commands (``eval``, ``features``): the same
launcher conventions as ``mawstron train``.  ``--gpus N`` (N > 1) or ``--hostfile`` re-runs the command under the
deepspeed launcher (CPU ranks over gloo on a machine without a GPU); under ``deepspeed`` or ``torchrun`` directly
(``RANK`` set) the command is one rank and runs as it is."""

from __future__ import annotations

import argparse
import os
import shutil
import sys

LAUNCH_FLAGS = ("--gpus", "--hostfile", "--master-port")


def add_rank_args(p) -> None:
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="where the encoder runs (auto: the GPU when there is one; bf16 autocast there, fp32 on CPU)")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                   help="auto: bf16 autocast on a GPU, fp32 on CPU; bf16: the encoder's weights in bf16 too "
                        "(half the memory: for checkpoints too big for fp32, e.g. ViT-6.5B)")
    p.add_argument("--gpus", type=int, default=1,
                   help="ranks on this node: each extracts its share of the images (on CPU: gloo ranks)")
    p.add_argument("--hostfile", default="", help="DeepSpeed hostfile: ranks on several nodes")
    p.add_argument("--master-port", type=int, default=0, help="default: a free port")
    p.add_argument("--workers", type=int, default=None,
                   help="image-decoding processes per rank (default: up to 8 on a GPU, 0 on CPU)")
    p.add_argument("--local_rank", "--local-rank", type=int, default=-1, help=argparse.SUPPRESS)  # deepspeed


def is_rank() -> bool:
    """True in a process that a launcher (deepspeed, torchrun) started as one rank."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def _strip_launch_flags(argv: list[str]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in LAUNCH_FLAGS:
            skip = True
            continue
        if any(a.startswith(f + "=") for f in LAUNCH_FLAGS):
            continue
        out.append(a)
    return out


def launch_command(args, argv: list[str]) -> list[str] | None:
    """The deepspeed launcher command that runs this ``mawstron`` command on ``--gpus`` ranks / ``--hostfile``
    nodes, or None when it runs in this process (one rank, or already a launched rank)."""
    if is_rank() or (args.gpus <= 1 and not args.hostfile):
        return None
    from mawstron.parallel.console import is_verbose

    from mawstron.parallel.launcher.launch import free_port

    launcher = shutil.which("deepspeed") or os.path.join(os.path.dirname(sys.executable), "deepspeed")
    exe = shutil.which("mawstron") or os.path.join(os.path.dirname(sys.executable), "mawstron")
    # the runner's own warnings (e.g. no hostfile: this node only) would land on stdout, which is the result's
    quiet = [] if is_verbose() else ["--log_level", "error"]
    cmd = [launcher, *quiet, "--no_local_rank"]  # ranks read LOCAL_RANK from the environment
    if args.hostfile:
        cmd += ["--hostfile", args.hostfile]
    if args.gpus > 1:
        cmd += ["--num_gpus", str(args.gpus)]
    return cmd + ["--master_port", str(args.master_port or free_port()), exe, *_strip_launch_flags(argv)]


def check_rank_args(args, command: str) -> str | None:
    """A one-line usage error for impossible rank settings, or None."""
    if args.gpus < 1:
        return f"mawstron {command}: --gpus {args.gpus}: give 1 or more ranks"
    if args.hostfile and not os.path.isfile(args.hostfile):
        return f"mawstron {command}: --hostfile {args.hostfile!r} does not exist: write one 'HOST slots=N' line per node"
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            return f"mawstron {command}: --device cuda, but torch sees no CUDA GPU here: use --device cpu or auto"
    return None


def prefetch_release(checkpoint: str) -> None:
    """A released name is downloaded here, once, before the ranks start (they then find it in the cache)."""
    from mawstron.core.hub import RELEASES, get_weights

    if checkpoint in RELEASES and not os.path.exists(checkpoint):
        print(f"[mawstron] {checkpoint}: {get_weights(checkpoint)}", file=sys.stderr, flush=True)


def exec_launcher(cmd: list[str], device: str) -> None:
    import torch

    env = dict(os.environ)
    if device == "cpu" or not torch.cuda.is_available():
        env.setdefault("DS_ACCELERATOR", "cpu")
    print(f"[mawstron] starting: {' '.join(cmd)}", file=sys.stderr, flush=True)
    os.execvpe(cmd[0], cmd, env)


def leave_rank(code: int) -> None:
    """A launched rank that is done leaves without C++ static destructors (which abort a gloo rank now and then
    at interpreter exit), as training ranks do."""
    if is_rank():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def resolve_source(args) -> tuple[str, str | None]:
    """``(checkpoint, tag)`` for ``--checkpoint``/``--tag``/``--strict`` of an evaluation command: a released name
    stays a name (the loader builds its preset and reads it from the weights cache, where ``prefetch_release`` put
    it); any other form is resolved to a verified step, a fallback to an older one said on stderr by rank 0."""
    from mawstron.core.hub import RELEASES
    from mawstron.parallel.checkpoints.sources import normalize_tag, resolve_checkpoint

    if args.checkpoint in RELEASES and not os.path.exists(args.checkpoint):
        if normalize_tag(args.tag):
            raise ValueError(f"--tag picks a step of a checkpoint folder; {args.checkpoint} is a released name: "
                             f"drop --tag")
        return args.checkpoint, None
    first = os.environ.get("RANK", "0") == "0"
    return resolve_checkpoint(args.checkpoint, args.tag, strict=args.strict,
                              say=lambda message: print(message, file=sys.stderr, flush=True) if first else None)
