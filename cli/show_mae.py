"""``mawstron show-mae``: a PNG grid of original / masked / reconstructed images from an MAE checkpoint."""

from __future__ import annotations

import sys


def add_parser(subparsers):
    p = subparsers.add_parser("show-mae", help="PNG grid: original / masked / MAE reconstruction")
    p.add_argument("--checkpoint", required=True,
                   help="an MAE run's checkpoints/ folder, or a weights file with the decoder (then --preset)")
    p.add_argument("--tag", default=None,
                   help="checkpoint step: 400, step_400, step_00000400 or latest (default: the one 'latest' names)")
    p.add_argument("--strict", action="store_true",
                   help="refuse, instead of falling back to the newest checkpoint that verifies, when 'latest' names "
                        "a torn, missing or damaged checkpoint")
    p.add_argument("--preset", default="", help="encoder preset of a weights file, e.g. vit_l16")
    p.add_argument("--norm-pix", choices=("auto", "yes", "no"), default="auto",
                   help="whether the decoder predicts per-patch normalised pixels (auto: the run's setting; "
                        "MAE's released visualisation weights: no)")
    p.add_argument("--images", required=True, help="a folder of images (or an ImageFolder)")
    p.add_argument("--max-images", type=int, default=8, help="rows of the grid")
    p.add_argument("--seed", type=int, default=0, help="seed of the random masks")
    p.add_argument("--out", required=True, help="output .png")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="where the MAE runs (auto: the GPU when there is one)")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="load a checkpoint folder whose files need more than tensors (unpickling runs code from "
                        "the files: only for folders whose source you trust; README: Security)")
    p.set_defaults(func=run)


def run(args) -> int:
    import torch
    from PIL import Image

    from mawstron.core.data.image_folder import image_loader
    from mawstron.core.eval.linear import resolve_device
    from mawstron.core.eval.reconstruction import reconstruct, reconstruction_grid
    from mawstron.parallel.checkpoints.sources import check_local_input, resolve_checkpoint
    from mawstron.parallel.evaluation.evaluate import checkpoint_tag
    from mawstron.parallel.evaluation.show_mae import load_mae

    if not args.out.lower().endswith(".png"):
        print(f"mawstron show-mae: --out {args.out!r} must end in .png", file=sys.stderr)
        return 2
    norm_pix = {"auto": None, "yes": True, "no": False}[args.norm_pix]
    if args.norm_pix == "auto" and args.preset:
        norm_pix = False  # MAE's visualisation weights were trained on raw pixels

    try:
        device = resolve_device(args.device)
        check_local_input(args.images, "--images", "show-mae")
        checkpoint, tag = resolve_checkpoint(args.checkpoint, args.tag, strict=args.strict)
        model = load_mae(checkpoint, checkpoint_tag(checkpoint, tag), args.preset, norm_pix)
        loader = image_loader(args.images, img_size=model.config.img_size, batch_size=max(1, args.max_images))
    except (ValueError, FileNotFoundError) as e:
        print(f"mawstron show-mae: {e}", file=sys.stderr)
        return 2
    items = loader.items()[:args.max_images]
    images = torch.stack([loader.load_item(item)[0] for item in items])
    parts = reconstruct(model.to(device), images.to(device), seed=args.seed)
    Image.fromarray(reconstruction_grid(parts)).save(args.out)
    print(f"wrote {args.out}: {len(items)} rows (original | masked {model.mae_config.mask_ratio:.0%} | "
          f"reconstruction), {model.config.img_size} px")
    return 0
