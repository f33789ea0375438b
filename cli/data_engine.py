"""Where a ``mawstron data`` job's per-shard tasks run: ``--engine``, ``--workers``, ``--ray-address``."""

from __future__ import annotations


def add_engine_args(p) -> None:
    """--engine, --workers, --ray-address: where a data job's per-shard tasks run (core/data/jobs.py)."""
    p.add_argument("--engine", default="local", choices=("local", "ray"),
                   help="local: processes on this machine (default); ray: Ray tasks (the data extra), on a local Ray "
                        "or on the cluster at --ray-address")
    p.add_argument("--workers", type=int, default=0,
                   help="processes (local) or CPUs of the local Ray (0: every core; the output does not depend on it)")
    p.add_argument("--ray-address", default="",
                   help="join this Ray cluster (HOST:6379 or ray://HOST:10001; default: $RAY_ADDRESS, else a local "
                        "Ray)")


def engine_kwargs(args) -> dict:
    if args.workers < 0:
        raise ValueError(f"--workers must be >= 0 (0: every core), got {args.workers}")
    if args.ray_address and args.engine != "ray":
        raise ValueError(f"--ray-address {args.ray_address!r} needs --engine ray")
    return {"engine": args.engine, "workers": args.workers, "ray_address": args.ray_address}
