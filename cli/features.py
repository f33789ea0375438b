"""``mawstron features``: frozen features of a checkpoint's encoder for a folder of images, as a .npy file."""

from __future__ import annotations

import json
import os
import sys

from mawstron.parallel.launcher.argtypes import positive_int

from .ranks import (add_rank_args, check_rank_args, exec_launcher, launch_command, leave_rank, prefetch_release,
                    resolve_source)


def add_parser(subparsers):
    p = subparsers.add_parser("features", help="encoder features of a folder of images -> .npy")
    p.add_argument("--checkpoint", required=True,
                   help="a run folder, its checkpoints/ folder, a .safetensors file or a released name "
                        "(maws_vit_b16; `mawstron weights list`)")
    p.add_argument("--tag", default=None,
                   help="checkpoint step: 400, step_400, step_00000400 or latest (default: the one 'latest' names)")
    p.add_argument("--strict", action="store_true",
                   help="refuse, instead of falling back to the newest checkpoint that verifies, when 'latest' names "
                        "a torn, missing or damaged checkpoint")
    p.add_argument("--images", required=True, help="a folder of images, or an ImageFolder (ROOT/<class>/<image>)")
    p.add_argument("--out", required=True, help="output .npy: float32 [images, embed_dim]")
    p.add_argument("--pool", choices=("token", "avg"), default="token",
                   help="class token, or the mean of the patch tokens (often better for MAE encoders)")
    p.add_argument("--batch-size", type=positive_int, default=64, help="images per forward pass on each rank")
    p.add_argument("--loader", choices=("dali", "torch"), default="auto",
                   help="image decoding: dali (on the GPU, `mixed`, when the encoder runs on one; its CPU decoder "
                        "otherwise) or torch (PIL); default: dali when NVIDIA DALI is installed, else torch")
    p.add_argument("--quiet", action="store_true", help="no progress bar (it is shown only on a terminal)")
    add_rank_args(p)
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="load a checkpoint folder whose files need more than tensors (unpickling runs code from "
                        "the files: only for folders whose source you trust; README: Security)")
    p.set_defaults(func=run)


def _name(item, root: str) -> str:
    """An image's name in the sidecar: its path under ``--images``, or ``shard.tar:KEY`` for shards."""
    path, what = item
    return f"{os.path.basename(path)}:{what.key}" if hasattr(what, "key") else os.path.relpath(path, root)


def run(args, argv: list[str] | None = None) -> int:
    import numpy as np
    import torch

    from mawstron.core.data.image_folder import image_loader
    from mawstron.parallel.evaluation.evaluate import (Ranks, check_rank_count, extract_split,
                                                      load_encoder_from_checkpoint, pick_decoder)

    if not args.out.endswith(".npy"):
        print(f"mawstron features: --out {args.out!r} must end in .npy", file=sys.stderr)
        return 2
    problem = check_rank_args(args, "features")
    if problem:
        print(problem, file=sys.stderr)
        return 2
    cmd = launch_command(args, sys.argv[1:] if argv is None else argv)
    if cmd:
        prefetch_release(args.checkpoint)
        exec_launcher(cmd, args.device)
    from mawstron.parallel.checkpoints.sources import check_local_input
    from mawstron.parallel.console import stdout_to_stderr

    ranks = Ranks(args.device)
    try:
        check_local_input(args.images, "--images", "features")
        checkpoint, tag = resolve_source(args)
        dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
        with stdout_to_stderr():  # DeepSpeed's ZeRO merge prints progress: stdout keeps the result alone
            model = load_encoder_from_checkpoint(checkpoint, tag, dtype=dtype).to(ranks.device)
        loader = image_loader(args.images, img_size=model.config.img_size, batch_size=args.batch_size)
        check_rank_count(loader.num_images, ranks.world, f"--images {args.images}")
        workers = args.workers
        if workers is None:
            workers = min(8, len(os.sched_getaffinity(0)) // ranks.world) if ranks.device.type == "cuda" else 0
        decoder = pick_decoder(args.loader, loader, ranks)
        ranks.join()
        feats, labels = extract_split(model, loader, ranks, split="images", pool=args.pool, precision=args.precision,
                                      batch_size=args.batch_size, workers=workers, quiet=args.quiet, decoder=decoder)
    except (ValueError, FileNotFoundError) as e:
        print(f"mawstron features: {e}", file=sys.stderr)
        ranks.close()
        leave_rank(2)
        return 2
    ranks.close()
    if not ranks.first:  # rank 0 writes the file
        leave_rank(0)
        return 0
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    np.save(args.out, feats.numpy())
    index = {"checkpoint": args.checkpoint, "tag": tag, "pool": args.pool, "shape": list(feats.shape),
             "images": [_name(item, args.images) for item in loader.items()]}
    if (labels >= 0).all():
        index["labels"] = labels.tolist()
        if hasattr(loader, "classes"):
            index["classes"] = loader.classes
    sidecar = args.out[:-len(".npy")] + ".json"
    with open(sidecar, "w") as f:
        json.dump(index, f)
    print(f"wrote {args.out}: {feats.shape[0]} x {feats.shape[1]} float32 ({args.pool} features); "
          f"image order and labels in {sidecar}")
    leave_rank(0)
    return 0
