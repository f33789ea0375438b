"""``mawstron consolidate``: a ZeRO-3 checkpoint -> one safetensors file of the encoder in timm key layout."""

from __future__ import annotations


def add_parser(subparsers):
    p = subparsers.add_parser("consolidate", help="merge ZeRO-3 shards into one timm-layout safetensors file")
    p.add_argument("checkpoint_dir", help="a run's checkpoints/ folder (the one holding 'latest')")
    p.add_argument("--out", required=True, help="output .safetensors path")
    p.add_argument("--tag", default=None, help="checkpoint tag (default: the one 'latest' names)")
    p.add_argument("--keep-head", action="store_true", help="keep the classification head (WSP / fine-tuned runs)")
    p.set_defaults(func=run)


def run(args) -> int:
    from mawstron.parallel.checkpoint import consolidate

    if not args.out.endswith(".safetensors"):
        raise SystemExit(f"--out {args.out!r} must end in .safetensors")
    info = consolidate(args.checkpoint_dir, args.out, tag=args.tag, keep_head=args.keep_head)
    print(f"wrote {args.out}: {info['tensors']} tensors, {info['params'] / 1e6:.2f}M parameters "
          f"from {args.checkpoint_dir}/{info['tag']} (step {info['step']})")
    if info.get("tokenizer"):  # a LiT run: MAWS-CLIP layout, the tokenizer beside it
        print(f"  MAWS-CLIP layout; tokenizer {info['tokenizer']}")
    return 0
