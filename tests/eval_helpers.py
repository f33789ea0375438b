"""An ImageNet-style tree (train/ and val/ class folders named by WordNet id) and a small encoder checkpoint, for
the evaluation tests."""

from __future__ import annotations

import json
import os

import numpy as np
import torch

# the first four ImageNet-1k classes: tench, goldfish, great white shark, tiger shark
WNIDS = ("n01440764", "n01443537", "n01484850", "n01491361")
COLOURS = ((200, 40, 40), (40, 200, 40), (40, 40, 200), (200, 200, 40))


def make_imagenet_tree(root: str, *, train_per_class: int = 6, val_per_class: int = 3, size: int = 32,
                       classes=WNIDS, seed: int = 0, noise: float = 40.0,
                       contrast: float = 1.0) -> str:
    """``root/train/<wnid>/*.JPEG`` and ``root/val/<wnid>/*.JPEG``: each class a colour (``contrast`` of it
    over grey) plus pixel noise, so that even a random encoder's features separate them, some of the time."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, per in (("train", train_per_class), ("val", val_per_class)):
        for c, wnid in enumerate(classes):
            folder = os.path.join(root, split, wnid)
            os.makedirs(folder, exist_ok=True)
            for i in range(per):
                pixels = np.clip(128 + contrast * (np.array(COLOURS[c % len(COLOURS)]) - 128) + rng.normal(0, noise, (size, size, 3)), 0, 255)
                Image.fromarray(pixels.astype(np.uint8)).save(os.path.join(folder, f"{wnid}_{i}.JPEG"), quality=90)
    return root


def save_encoder(path: str, preset: str = "vit_micro", seed: int = 0, metadata_preset: str | None = None) -> str:
    """A randomly initialised ``preset`` encoder as a consolidated safetensors file whose metadata names
    ``metadata_preset`` (default: ``preset``), as `mawstron consolidate` writes."""
    from safetensors.torch import save_file

    from mawstron.core import create_vit

    torch.manual_seed(seed)
    model = create_vit(preset)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path,
              metadata={"model": json.dumps({"preset": metadata_preset or preset})})
    return path
