"""``mawstron consolidate``: a ZeRO-3 checkpoint -> one safetensors file of the encoder in timm key layout."""

from __future__ import annotations

import os


def add_parser(subparsers):
    p = subparsers.add_parser("consolidate", help="merge ZeRO-3 shards into one timm-layout safetensors file")
    p.add_argument("checkpoint_dir", help="a run's checkpoints/ folder (the one holding 'latest'), or the run folder")
    p.add_argument("--out", required=True, help="output .safetensors path")
    p.add_argument("--tag", default=None, help="checkpoint tag (default: the one 'latest' names)")
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
    from mawstron.parallel.checkpoints.store import find_checkpoint_dir

    if not args.out.endswith(".safetensors"):
        raise SystemExit(f"mawstron consolidate: --out {args.out!r} must end in .safetensors")
    ckpt_dir = find_checkpoint_dir(args.checkpoint_dir)  # the run folder is accepted for its checkpoints/
    if ckpt_dir is None:
        what = "does not exist" if not os.path.exists(args.checkpoint_dir) else "holds no complete checkpoint"
        print(f"mawstron consolidate: {args.checkpoint_dir} {what}; give a run's checkpoints/ folder (with "
              f"'latest') or the run folder holding it, e.g. runs/demo/wsp", file=sys.stderr)
        return 2
    args.checkpoint_dir = ckpt_dir
    from mawstron.parallel.console import stdout_to_stderr

    try:  # verified against its manifest first: a damaged checkpoint is named, never consolidated
        with stdout_to_stderr():
            info = consolidate(ckpt_dir, args.out, tag=args.tag, keep_head=args.keep_head)
    except (ValueError, FileNotFoundError) as e:
        print(f"mawstron consolidate: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: {info['tensors']} tensors, {info['params'] / 1e6:.2f}M parameters "
          f"from {args.checkpoint_dir}/{info['tag']} (step {info['step']})")
    if info.get("tokenizer"):  # a LiT run: MAWS-CLIP layout, the tokenizer beside it
        print(f"  MAWS-CLIP layout; tokenizer {info['tokenizer']}")
    return 0
