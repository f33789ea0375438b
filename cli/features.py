"""``mawstron features``: frozen features of a checkpoint's encoder for a folder of images, as a .npy file."""

from __future__ import annotations

import json
import os
import sys


def add_parser(subparsers):
    p = subparsers.add_parser("features", help="encoder features of a folder of images -> .npy")
    p.add_argument("--checkpoint", required=True,
                   help="a run's checkpoints/ folder, a consolidated .safetensors, or a released name (maws_vit_b16)")
    p.add_argument("--tag", default=None, help="checkpoint step (step_00000400 or 400; default: 'latest')")
    p.add_argument("--images", required=True, help="a folder of images, or an ImageFolder (ROOT/<class>/<image>)")
    p.add_argument("--out", required=True, help="output .npy: float32 [images, embed_dim]")
    p.add_argument("--pool", choices=("token", "avg"), default="token",
                   help="class token, or the mean of the patch tokens (often better for MAE encoders)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="load a checkpoint folder whose files need more than tensors (unpickling runs code from "
                        "the files: only for folders whose source you trust; README: Security)")
    p.set_defaults(func=run)


def _name(item, root: str) -> str:
    """An image's name in the sidecar: its path under ``--images``, or ``shard.tar:KEY`` for shards."""
    path, what = item
    return f"{os.path.basename(path)}:{what.key}" if hasattr(what, "key") else os.path.relpath(path, root)


def run(args) -> int:
    import numpy as np

    from mawstron.core.data.image_folder import image_loader
    from mawstron.core.eval import extract_features
    from mawstron.parallel.evaluation.evaluate import load_encoder_from_checkpoint

    if not args.out.endswith(".npy"):
        print(f"mawstron features: --out {args.out!r} must end in .npy", file=sys.stderr)
        return 2
    try:
        model = load_encoder_from_checkpoint(args.checkpoint, args.tag)
        loader = image_loader(args.images, img_size=model.config.img_size, batch_size=args.batch_size)
    except (ValueError, FileNotFoundError) as e:
        print(f"mawstron features: {e}", file=sys.stderr)
        return 2
    feats, labels = extract_features(model, loader, pool=args.pool)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    np.save(args.out, feats.numpy())
    index = {"checkpoint": args.checkpoint, "tag": args.tag, "pool": args.pool, "shape": list(feats.shape),
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
    return 0
