"""ImageFolder trees for tests: the labelled images of `mawstron data synth` written as ROOT/<class>/<key>.jpg."""

from __future__ import annotations

import os

from mawstron.core.data.synth import make_sample


def make_image_folder(root: str, *, images: int = 24, size: int = 32, split: str = "eval-train", seed: int = 0) -> dict:
    """``images`` labelled JPEGs under ``root/<class name>/``; returns {class name: count}."""
    counts: dict[str, int] = {}
    for i in range(images):
        jpeg, meta = make_sample(seed, split, i, size)
        folder = os.path.join(root, meta["class_name"])
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, f"{meta['key']}.jpg"), "wb") as f:
            f.write(jpeg)
        counts[meta["class_name"]] = counts.get(meta["class_name"], 0) + 1
    return counts
