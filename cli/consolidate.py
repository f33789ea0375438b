"""``mawstron consolidate``: a ZeRO-3 checkpoint -> one safetensors file of the encoder in timm key layout."""

from __future__ import annotations

import argparse
import os


def add_parser(subparsers):
    p = subparsers.add_parser("consolidate", help="merge ZeRO-3 shards into one timm-layout safetensors file")
    p.add_argument("--checkpoint", default=None,
                   help="a run folder (e.g. runs/demo/wsp) or its checkpoints/ folder (the one holding 'latest')")
    p.add_argument("checkpoint_dir", nargs="?", default=None, help=argparse.SUPPRESS)  # old spelling: positional
    p.add_argument("--out", required=True, help="output .safetensors path")
    p.add_argument("--tag", default=None,
                   help="checkpoint step: 400, step_400, step_00000400 or latest (default: the one 'latest' names)")
    p.add_argument("--strict", action="store_true",
                   help="refuse, instead of falling back to the newest checkpoint that verifies, when 'latest' names "
                        "a torn, missing or damaged checkpoint")
    p.add_argument("--keep-head", action="store_true", help="keep the classification head (WSP / fine-tuned runs)")
    p.add_argument("--verbose", dest="verbose_here", action="store_true",
                   help="show DeepSpeed INFO lines and third-party warnings")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="load a checkpoint folder whose files need more than tensors (unpickling runs code from "
                        "the files: only for folders whose source you trust; README: Security)")
    p.set_defaults(func=run)


def run(args) -> int:
    import sys

    from mawstron.parallel.checkpoints.consolidate import consolidate
    from mawstron.parallel.checkpoints.sources import resolve_checkpoint
    from mawstron.parallel.checkpoints.store import find_checkpoint_dir

    if args.checkpoint_dir and args.checkpoint:
        print("mawstron consolidate: give the checkpoint once, as --checkpoint", file=sys.stderr)
        return 2
    if args.checkpoint_dir:
        print("mawstron consolidate: the checkpoint as a positional argument is deprecated; give it as --checkpoint "
              f"{args.checkpoint_dir}", file=sys.stderr)
    source = args.checkpoint or args.checkpoint_dir
    if not source:
        print("mawstron consolidate: give --checkpoint RUN (a run folder or its checkpoints/ folder)", file=sys.stderr)
        return 2
    if not args.out.endswith(".safetensors"):
        print(f"mawstron consolidate: --out {args.out!r} must end in .safetensors", file=sys.stderr)
        return 2
    ckpt_dir = find_checkpoint_dir(source)  # the run folder is accepted for its checkpoints/
    if ckpt_dir is None:
        what = "does not exist" if not os.path.exists(source) else "holds no complete checkpoint"
        print(f"mawstron consolidate: {source} {what}; give a run's checkpoints/ folder (with "
              f"'latest') or the run folder holding it, e.g. runs/demo/wsp", file=sys.stderr)
        return 2
    from mawstron.parallel.console import stdout_to_stderr

    try:  # verified against its manifest first: a damaged checkpoint is named, never consolidated; a fallback
        # from what 'latest' names is said here, on stderr, outside the quiet block below
        ckpt_dir, tag = resolve_checkpoint(ckpt_dir, args.tag, strict=args.strict)
        with stdout_to_stderr():
            info = consolidate(ckpt_dir, args.out, tag=tag, keep_head=args.keep_head)
    except (ValueError, FileNotFoundError) as e:
        print(f"mawstron consolidate: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: {info['tensors']} tensors, {info['params'] / 1e6:.2f}M parameters "
          f"from {ckpt_dir}/{info['tag']} (step {info['step']})")
    if info.get("tokenizer"):  # a LiT run: MAWS-CLIP layout, the tokenizer beside it
        print(f"  MAWS-CLIP layout; tokenizer {info['tokenizer']}")
    return 0
