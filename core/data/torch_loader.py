"""The PyTorch DataLoader path: PIL decode, RandomResizedCrop / flip / normalise in PIL + numpy + torch.

Order and augmentation are functions of (seed, rank, position): batch ``k`` holds stream positions
``[k*B, (k+1)*B)``; position ``p`` is sample ``perm_e[p % N]`` of epoch ``e = p // N`` (a seeded permutation of
this rank's samples per epoch), cropped with an RNG seeded by ``(seed, rank, p)``.  Workers produce whole
batches (worker ``w`` makes batches ``k = w, w+W, ...``) and the DataLoader returns them in order, so the
stream does not depend on the number of workers and resuming at batch ``k`` gives exactly the batches an
uninterrupted run would have produced.
"""

from __future__ import annotations

import io
import math
from collections import Counter

import numpy as np
import torch

from .common import CROP_RATIO, RankShards, WorkerStridedBatches, check_resample_state, crop_scale
from .loader import IMAGENET_MEAN, IMAGENET_STD
from .shards import parse_meta

_MEAN = np.array(IMAGENET_MEAN, dtype=np.float32) * 255
_STD = np.array(IMAGENET_STD, dtype=np.float32) * 255


def random_resized_crop_box(rng: np.random.Generator, width: int, height: int, scale, ratio=CROP_RATIO):
    """torchvision's RandomResizedCrop.get_params: (left, top, w, h)."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1)), w, h
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def to_normalised_chw(img) -> torch.Tensor:
    arr = (np.asarray(img, dtype=np.float32) - _MEAN) / _STD
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def train_transform(data: bytes, rng: np.random.Generator, size: int, scale) -> torch.Tensor:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        im = im.convert("RGB")
        left, top, w, h = random_resized_crop_box(rng, im.width, im.height, scale)
        out = im.resize((size, size), Image.BILINEAR, box=(left, top, left + w, top + h))
    if rng.random() < 0.5:
        out = out.transpose(Image.FLIP_LEFT_RIGHT)
    return to_normalised_chw(out)


class _BatchStream(WorkerStridedBatches):
    def __init__(self, shards: RankShards, *, img_size, micro_batch, seed, rank, start, draws=None):
        self.shards, self.size, self.batch = shards, img_size, micro_batch
        self.draws = draws  # data.resample: position p is draw p of the weighted epoch draws instead
        self.seed, self.rank, self.start = seed, rank, start
        self.scale = crop_scale(shards.cfg, shards.stage)
        self._files: dict[str, object] = {}
        self._perms: dict[int, np.ndarray] = {}

    def _read(self, path, span):
        f = self._files.get(path)
        if f is None:
            f = self._files[path] = open(path, "rb")
        f.seek(span[0])
        return f.read(span[1])

    def _sample_at(self, n: int, position: int) -> int:
        if self.draws is not None:
            return self.draws.sample_at(position)
        epoch = position // n
        perm = self._perms.get(epoch)
        if perm is None:
            self._perms = {epoch: np.random.default_rng([self.seed, self.rank, epoch]).permutation(n)}
            perm = self._perms[epoch]
        return int(perm[position % n])

    def make_batch(self, k: int) -> dict:
        n = len(self.shards.samples)
        images, metas, skips = [], [], Counter()
        for p in range(k * self.batch, (k + 1) * self.batch):
            rng = np.random.default_rng([self.seed, self.rank, p, 1])
            i = self._sample_at(n, p)
            for attempt in range(n):  # a sample that fails now (not caught by the index) is replaced by the next
                path, s = self.shards.samples[(i + attempt) % n]
                try:
                    images.append(train_transform(self._read(path, s.image), rng, self.size, self.scale))
                    metas.append(parse_meta(self._read(path, s.meta), s.meta_ext))
                    break
                except Exception:
                    skips[("decode_error", path)] += 1
        batch = {"images": torch.stack(images)}
        targets, missing = self.shards.targets(metas)
        if targets is not None:
            batch["targets"] = targets
        if self.shards.batches.captions:
            batch.update(self.shards.captions(metas))
        batch["_no_tag"] = missing
        batch["_skips"] = dict(skips)
        return batch


class TorchShardLoader:
    """This rank's infinite loader over webdataset shards through a PyTorch DataLoader (see loader.py)."""

    def __init__(self, cfg, *, stage, img_size, micro_batch, rank=0, world_size=1, seed=0, tokenizer=None):
        self.shards = RankShards(cfg, stage=stage, rank=rank, world_size=world_size, tokenizer=tokenizer)
        self.num_classes = self.shards.num_classes
        self.img_size, self.micro_batch, self.seed, self.rank = img_size, micro_batch, seed, rank
        self.num_workers = cfg.num_workers
        self.draws = self.shards.resample_draws(seed=seed, world_size=world_size)
        self.batches_served = 0
        self.no_known_hashtag = 0
        self.runtime_skips: Counter = Counter()
        self._loader = None

    def __iter__(self):
        stream = _BatchStream(self.shards, img_size=self.img_size, micro_batch=self.micro_batch, seed=self.seed,
                              rank=self.rank, start=self.batches_served, draws=self.draws)
        kwargs = {"prefetch_factor": 2, "persistent_workers": False} if self.num_workers else {}
        self._loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=self.num_workers, **kwargs)
        for batch in self._loader:
            self.batches_served += 1
            self.no_known_hashtag += batch.pop("_no_tag")
            self.runtime_skips.update(batch.pop("_skips"))
            yield batch

    def state_dict(self) -> dict:
        state = {"loader": "torch", "batches_served": self.batches_served, "no_known_hashtag": self.no_known_hashtag}
        if self.draws is not None:
            state["resample"] = self.draws.fingerprint()
        return state

    def load_state_dict(self, state: dict) -> None:
        if state.get("loader", "torch") != "torch":
            raise ValueError(f"this checkpoint's data position was written by the {state.get('loader')} loader; "
                             f"resume with data.loader={state.get('loader')}")
        check_resample_state(state, self.draws)
        self.batches_served = int(state["batches_served"])
        self.no_known_hashtag = int(state.get("no_known_hashtag", 0))

    def stats(self) -> dict:
        return self.shards.stats(self.batches_served * self.micro_batch, self.no_known_hashtag, self.runtime_skips)

    def close(self) -> None:
        self._loader = None
