"""``mawstron checkpoints list|verify DIR``: each checkpoint's step, world size, size and verdict.

``list`` checks presence and sizes against each manifest (instant); ``verify`` also recomputes every file's
CRC-32 and exits 1 if any checkpoint is damaged, naming the file.
"""

from __future__ import annotations

import os


def add_parser(subparsers):
    p = subparsers.add_parser("checkpoints", help="list or verify a run's checkpoints against their manifests",
                              description=__doc__)
    p.add_argument("action", choices=("list", "verify"))
    p.add_argument("checkpoint_dir", help="a run's checkpoints/ folder, or the run folder holding it")
    p.set_defaults(func=run)


def _rows(ckpt_dir: str, checksums: bool):
    from mawstron.parallel.checkpoints import store as ckpt

    latest = None
    if os.path.isfile(os.path.join(ckpt_dir, ckpt.LATEST)):
        latest = open(os.path.join(ckpt_dir, ckpt.LATEST)).read().strip()
    for tag in ckpt.complete_tags(ckpt_dir):
        marker = ckpt.read_marker(ckpt_dir, tag)
        manifest = ckpt.read_manifest(ckpt_dir, tag)
        if manifest is not None:
            size = sum(f["size"] for f in manifest["files"].values())
        else:
            folder = os.path.join(ckpt_dir, tag)
            size = sum(os.path.getsize(os.path.join(folder, n)) for n in os.listdir(folder)
                       if os.path.isfile(os.path.join(folder, n)))
        verdict, problems = ckpt.verdict(ckpt_dir, tag, checksums=checksums)
        yield tag, marker, size, verdict, problems, tag == latest


def run(args) -> int:
    from mawstron.parallel.checkpoints import store as ckpt

    ckpt_dir = args.checkpoint_dir
    if not ckpt.complete_tags(ckpt_dir) and ckpt.complete_tags(os.path.join(ckpt_dir, "checkpoints")):
        ckpt_dir = os.path.join(ckpt_dir, "checkpoints")  # the run folder was given
    if not os.path.isdir(ckpt_dir):
        raise SystemExit(f"mawstron checkpoints: {args.checkpoint_dir!r} is not a folder; give a run's "
                         f"checkpoints/ folder")
    rows = list(_rows(ckpt_dir, checksums=args.action == "verify"))
    if not rows:
        raise SystemExit(f"mawstron checkpoints: no complete checkpoint in {ckpt_dir}")
    print(f"{'tag':<16} {'step':>9} {'ranks':>5} {'size':>10}  verdict")
    damaged = 0
    for tag, marker, size, verdict, problems, is_latest in rows:
        note = "  <- latest" if is_latest else ""
        print(f"{tag:<16} {marker['step']:>9} {marker['world_size']:>5} {size / 2**20:>8.1f}MB  {verdict}{note}")
        for problem in problems:
            print(f"    {problem}")
        damaged += verdict == "damaged"
    if args.action == "list":
        print("(sizes checked; `mawstron checkpoints verify` also checks every file's CRC-32)")
    return 1 if damaged and args.action == "verify" else 0
