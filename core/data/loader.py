"""The contract between data pipelines and the trainer, and the synthetic in-memory source.

A *train loader* is an infinite iterable of batches for one rank:

* ``batch["images"]``: float32 ``[micro_batch, 3, img_size, img_size]``, normalised (ImageNet mean/std), on the
  CPU or (DALI ``mixed``) already on this rank's GPU;
* ``batch["targets"]`` (WSP only): float32 ``[micro_batch, num_classes]`` multi-hot hashtag targets; an all-zero
  row is an image with no known hashtag (``wsp_loss`` drops it).

and it has:

* ``num_classes``: the WSP vocabulary size (``None`` for a source without labels);
* ``state_dict()`` / ``load_state_dict(state)``: the position in the stream, saved with training checkpoints so a
  resumed run sees exactly the batches an uninterrupted run would have seen;
* ``stats()``: ``{"images_seen": int, "skipped": int, "skipped_by_reason": {...}, "worst_shards": [...]}`` for
  the metrics (a corrupt image is skipped and counted, never fatal);
* ``close()``.

Each rank builds its own loader with its ``rank`` / ``world_size`` and sees a disjoint part of the data.
"""

from __future__ import annotations

import math

import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class SyntheticLoader:
    """Procedural images generated on the fly: deterministic for (seed, rank, batch index), free to resume.

    Each image is a coloured gradient with a stripe pattern; its "hashtags" are its colour and its stripe
    orientation, so both MAE (structure to reconstruct) and WSP (labels that depend on the pixels) can learn
    from it.  For unit tests, the demo before real shards exist, and throughput runs that must not wait on
    decoding ("synthetic tensors").
    """

    NUM_COLOURS = 8
    NUM_ORIENTATIONS = 4

    def __init__(self, *, img_size: int, micro_batch: int, rank: int = 0, world_size: int = 1, seed: int = 0,
                 with_targets: bool = False):
        if micro_batch <= 0 or img_size <= 0:
            raise ValueError(f"micro_batch and img_size must be positive, got {micro_batch}, {img_size}")
        self.img_size = img_size
        self.micro_batch = micro_batch
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.with_targets = with_targets
        self.num_classes = self.NUM_COLOURS + self.NUM_ORIENTATIONS if with_targets else None
        self.batches_served = 0

    def _batch(self, index: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(hash((self.seed, self.rank, self.world_size, index)) & 0x7FFFFFFF)
        b, s = self.micro_batch, self.img_size
        colour = torch.randint(0, self.NUM_COLOURS, (b,), generator=g)
        orientation = torch.randint(0, self.NUM_ORIENTATIONS, (b,), generator=g)
        # colour k: a fixed RGB per class, jittered per image
        palette = torch.tensor([[(k >> 2) & 1, (k >> 1) & 1, k & 1] for k in range(self.NUM_COLOURS)], dtype=torch.float32)
        rgb = 0.25 + 0.5 * palette[colour] + 0.1 * torch.rand(b, 3, generator=g)
        yy, xx = torch.meshgrid(torch.linspace(0, 1, s), torch.linspace(0, 1, s), indexing="ij")
        angle = orientation.float() * (math.pi / self.NUM_ORIENTATIONS)
        phase = torch.rand(b, generator=g) * 2 * math.pi
        coord = xx[None] * torch.cos(angle)[:, None, None] + yy[None] * torch.sin(angle)[:, None, None]
        stripes = 0.5 + 0.5 * torch.sin(2 * math.pi * 4 * coord + phase[:, None, None])
        images = rgb[:, :, None, None] * (0.6 + 0.4 * stripes[:, None])
        images = images + 0.03 * torch.randn(b, 3, s, s, generator=g)
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        batch = {"images": (images - mean) / std}
        if self.with_targets:
            targets = torch.zeros(b, self.num_classes)
            targets[torch.arange(b), colour] = 1.0
            targets[torch.arange(b), self.NUM_COLOURS + orientation] = 1.0
            batch["targets"] = targets
        return batch

    def __iter__(self):
        while True:
            batch = self._batch(self.batches_served)
            self.batches_served += 1
            yield batch

    def state_dict(self) -> dict:
        return {"batches_served": self.batches_served}

    def load_state_dict(self, state: dict) -> None:
        self.batches_served = int(state["batches_served"])

    def stats(self) -> dict:
        return {
            "images_seen": self.batches_served * self.micro_batch,
            "skipped": 0,
            "skipped_by_reason": {},
            "worst_shards": [],
        }

    def close(self) -> None:
        pass
