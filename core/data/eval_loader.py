"""Evaluation loader: every usable image of the given shards exactly once, in shard order, deterministic.

Resize the shorter side to ``img_size / 0.875`` (bilinear), centre-crop ``img_size``, normalise (ImageNet).
This module decodes with PIL (``load_item``, ``__iter__``; the evaluation commands' ``--loader torch``); with
``--loader dali`` the same ordered items are decoded by DALI with the same geometry (dali_eval.py).  Either way
every usable image is read exactly once, in order, so the probe's features are reproducible.
"""

from __future__ import annotations

import io

import torch

from .shards import build_index, expand_shards, parse_meta
from .storage import open_shard
from .torch_loader import to_normalised_chw


def eval_transform(data: bytes, img_size: int) -> torch.Tensor:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        im = im.convert("RGB")
        short = round(img_size / 0.875)
        w, h = im.size
        if w <= h:
            nw, nh = short, max(short, round(h * short / w))
        else:
            nw, nh = max(short, round(w * short / h)), short
        im = im.resize((nw, nh), Image.BILINEAR)
        left, top = (nw - img_size) // 2, (nh - img_size) // 2
        return to_normalised_chw(im.crop((left, top, left + img_size, top + img_size)))


class EvalLoader:
    def __init__(self, cfg, *, img_size: int, batch_size: int, shards: str):
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.paths = expand_shards(shards, what="evaluation shards")
        self.img_size, self.batch_size = img_size, batch_size
        self.indexes = [build_index(p, validate=cfg.validate, index_dir=cfg.index_dir) for p in self.paths]
        self.skipped = sum(sum(ix.skipped.values()) for ix in self.indexes)
        self.num_images = sum(len(ix.samples) for ix in self.indexes)
        if not self.num_images:
            raise ValueError(f"evaluation shards {shards!r} hold no readable labelled image")

    def __len__(self):
        return -(-self.num_images // self.batch_size)

    require_labels = True  # False: unlabelled samples get label -1 (pictures, feature extraction)

    def items(self) -> list:
        """Every usable sample as ``(shard path, Sample)``, in order (for callers that split the work)."""
        return [(ix.path, s) for ix in self.indexes for s in ix.samples]

    def load_item(self, item) -> tuple[torch.Tensor, int]:
        path, s = item
        with open_shard(path) as f:
            f.seek(s.meta[0])
            label = parse_meta(f.read(s.meta[1]), s.meta_ext).get("label")
            if not isinstance(label, int):
                if not self.require_labels:
                    label = -1
                else:
                    raise ValueError(f"{path}: sample {s.key} has no json 'label'; evaluation needs labelled shards")
            f.seek(s.image[0])
            return eval_transform(f.read(s.image[1]), self.img_size), label

    def __iter__(self):
        images, labels = [], []
        for ix in self.indexes:
            with open_shard(ix.path) as f:
                for s in ix.samples:
                    f.seek(s.meta[0])
                    label = parse_meta(f.read(s.meta[1]), s.meta_ext).get("label")
                    if not isinstance(label, int) and not self.require_labels:
                        label = -1
                    elif not isinstance(label, int):
                        raise ValueError(f"{ix.path}: sample {s.key} has no json 'label'; evaluation needs labelled "
                                         f"shards (eval-train-*.tar / eval-test-*.tar from `mawstron data synth`)")
                    f.seek(s.image[0])
                    images.append(eval_transform(f.read(s.image[1]), self.img_size))
                    labels.append(label)
                    if len(images) == self.batch_size:
                        yield {"images": torch.stack(images), "labels": torch.tensor(labels, dtype=torch.int64)}
                        images, labels = [], []
        if images:
            yield {"images": torch.stack(images), "labels": torch.tensor(labels, dtype=torch.int64)}
