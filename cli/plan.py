"""``mawstron plan``: per-GPU memory of a ZeRO-3 run, whether it fits, and the fewest GPUs that fit."""

from __future__ import annotations

import json


def add_parser(subparsers):
    p = subparsers.add_parser("plan", help="per-GPU memory plan for a model on N GPUs (ZeRO-3)")
    p.add_argument("--model", required=True, help="a preset, e.g. vit_6.5b14")
    p.add_argument("--stage", choices=("mae", "wsp", "finetune", "lit"), default="mae")
    p.add_argument("--unlock-image", action="store_true", help="stage lit: train the image tower too")
    p.add_argument("--gpus", type=int, default=None, help="number of GPUs (default: the fewest that fit)")
    p.add_argument("--gpu-mem-gib", type=float, default=80.0)
    p.add_argument("--micro-batch", type=int, default=32, help="images per GPU per forward/backward")
    p.add_argument("--img-size", type=int, default=0, help="default: the preset's (224)")
    p.add_argument("--checkpoint-every", type=int, default=1, help="activation checkpointing: every k-th block, 0 none")
    p.add_argument("--num-classes", type=int, default=0, help="WSP vocabulary / fine-tuning classes")
    p.add_argument("--offload-optimizer", action="store_true")
    p.add_argument("--offload-params", action="store_true")
    p.add_argument("--json", action="store_true", help="one JSON line (fields of the plan, min_gpus, fits)")
    p.set_defaults(func=run)


def run(args) -> int:
    from mawstron.core import PRESETS
    from mawstron.parallel.planning.plan import format_plan, min_gpus, plan
    from mawstron.parallel.stages import get_stage

    if args.model not in PRESETS:
        raise SystemExit(f"mawstron plan: --model {args.model!r} is not a preset; choose one of {sorted(PRESETS)}")
    for flag, value, fix in (("--gpus", args.gpus, "omit it for the fewest GPUs that fit"),
                             ("--micro-batch", args.micro_batch, "images per GPU, e.g. --micro-batch 32"),
                             ("--gpu-mem-gib", args.gpu_mem_gib, "e.g. --gpu-mem-gib 80")):
        if value is not None and value <= 0:
            raise SystemExit(f"mawstron plan: {flag} must be positive, got {value:g}; {fix}")
    if args.checkpoint_every < 0 or args.img_size < 0 or args.num_classes < 0:
        raise SystemExit("mawstron plan: --checkpoint-every, --img-size and --num-classes must be >= 0")
    kwargs = dict(checkpoint_every=args.checkpoint_every, num_classes=args.num_classes,
                  offload_optimizer=args.offload_optimizer, offload_params=args.offload_params)
    if args.img_size:
        kwargs["img_size"] = args.img_size
    if get_stage(args.stage).text_tower:  # the MAWS-CLIP release's text tower and joint dim for this image tower
        import dataclasses

        from mawstron.parallel.planning.paper import MAWS_CLIP, maws_clip_lit

        if args.model not in MAWS_CLIP:
            raise SystemExit(f"--stage lit plans the released MAWS-CLIP pairs: --model one of {sorted(MAWS_CLIP)}")
        kwargs["lit"] = dataclasses.replace(maws_clip_lit(args.model), unlock_image=args.unlock_image)
    minimum = min_gpus(args.model, args.stage, args.gpu_mem_gib, args.micro_batch, **kwargs)
    p = plan(args.model, args.stage, args.gpus or minimum or 1, args.gpu_mem_gib, args.micro_batch, **kwargs)
    if args.json:
        print(json.dumps({**p.as_dict(), "min_gpus": minimum}))
    else:
        print(format_plan(p))
        print(f"  fewest {args.gpu_mem_gib:g} GiB GPUs that fit (powers of two): {minimum or 'none up to 65536'}")
    return 0
