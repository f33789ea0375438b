"""``mawstron models``: the presets with their parameter counts and FLOPs, computed on the meta device."""

from __future__ import annotations

import json

import torch


def add_parser(subparsers):
    p = subparsers.add_parser("models", help="list ViT presets: parameters and GFLOPs per image")
    p.add_argument("--json", action="store_true", help="one JSON object per preset")
    p.set_defaults(func=run)


def describe(name: str) -> dict:
    from mawstron.core import MAEConfig, count_parameters, create_vit, forward_flops, vit_config

    with torch.device("meta"):
        encoder_params = count_parameters(create_vit(name))
    cfg = vit_config(name)
    return {
        "name": name,
        "img_size": cfg.img_size,
        "patch_size": cfg.patch_size,
        "embed_dim": cfg.embed_dim,
        "depth": cfg.depth,
        "num_heads": cfg.num_heads,
        "head_dim": cfg.head_dim,
        "encoder_params": encoder_params,
        "mae_gflops_per_image": forward_flops(cfg, "mae", MAEConfig()) / 1e9,
        "features_gflops_per_image": forward_flops(cfg, "features") / 1e9,
    }


def run(args) -> int:
    from mawstron.core import PRESETS

    rows = [describe(name) for name in PRESETS]
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return 0
    print(f"{'preset':<12}{'img':>5}{'patch':>6}{'width':>7}{'depth':>6}{'heads':>6}{'params':>12}{'MAE GF':>9}{'full GF':>9}")
    for r in rows:
        print(
            f"{r['name']:<12}{r['img_size']:>5}{r['patch_size']:>6}{r['embed_dim']:>7}{r['depth']:>6}{r['num_heads']:>6}"
            f"{r['encoder_params'] / 1e6:>11.1f}M{r['mae_gflops_per_image']:>9.2f}{r['features_gflops_per_image']:>9.2f}"
        )
    return 0
