"""``mawstron doctor``: check this machine before a run: GPUs, NCCL, DeepSpeed's ops, DALI, Triton (a kernel
compiled and run for this GPU), the cluster extras, and optionally a hostfile.  Exit 1 when a check fails."""

from __future__ import annotations

import json
import sys


def add_parser(subparsers):
    p = subparsers.add_parser("doctor", help="check GPUs, NCCL, DeepSpeed ops, DALI, Triton kernels, extras",
                              description=__doc__)
    p.add_argument("--require-gpu", action="store_true",
                   help="a cluster node: a missing GPU, NCCL, GPU DALI or Triton is a failure (exit 1)")
    p.add_argument("--hostfile", default="", help="also check this DeepSpeed hostfile (HOST slots=GPUS lines)")
    p.add_argument("--no-compile", action="store_true", help="skip compiling and running the Triton kernel")
    p.add_argument("--json", action="store_true", help="one JSON object per check on stdout")
    p.set_defaults(func=run)


MARK = {"ok": "ok", "missing": "--", "skip": "..", "fail": "FAIL"}


def run(args) -> int:
    from mawstron.parallel.launcher.doctor import as_dicts, run_checks

    checks = run_checks(require_gpu=args.require_gpu, hostfile=args.hostfile, compile_kernels=not args.no_compile)
    if args.json:
        for row in as_dicts(checks):
            print(json.dumps(row))
    else:
        for c in checks:
            fix = f"\n{'':20}-> {c.fix}" if c.fix and c.status != "ok" else ""
            print(f"{MARK[c.status]:>4}  {c.name:<14} {c.detail}{fix}")
    failed = [c.name for c in checks if c.status == "fail"]
    if failed:
        print(f"mawstron doctor: {len(failed)} check(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0
