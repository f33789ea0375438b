"""The ImageFolder layout (``ROOT/<class name>/<image>``, torchvision's and ImageNet's): evaluation and
fine-tuning read it directly, and ``mawstron data from-folder`` converts it to shards.

Classes are the sorted subfolder names (label = position), as torchvision's ``ImageFolder`` numbers them, so
labels agree with checkpoints trained on the same folder elsewhere.  Any image PIL reads is accepted (JPEG, PNG,
WebP, BMP); an image that fails to decode during training is replaced by the next one and counted, as in the
shard loaders.
"""

from __future__ import annotations

import os
from collections import Counter

import numpy as np
import torch

from .common import WorkerStridedBatches, batch_spec
from .config import DataConfig

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def is_image_folder(path: str) -> bool:
    """True for a directory with at least one subfolder holding an image (the ImageFolder layout)."""
    if not path or not os.path.isdir(path):
        return False
    for entry in sorted(os.scandir(path), key=lambda e: e.name):
        if entry.is_dir() and any(f.lower().endswith(IMAGE_SUFFIXES) for f in os.listdir(entry.path)):
            return True
    return False


def list_images(folder: str) -> list[str]:
    """Image files directly in ``folder``, sorted by name."""
    return sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.lower().endswith(IMAGE_SUFFIXES))


def scan_image_folder(root: str) -> tuple[list[str], list[tuple[str, int]]]:
    """(class names, [(image path, label)]) of an ImageFolder; ValueError naming the fix if it is not one."""
    if not os.path.isdir(root):
        raise ValueError(f"{root!r} is not a directory; an ImageFolder is ROOT/<class name>/<image files>")
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    samples = [(path, label) for label, name in enumerate(classes) for path in list_images(os.path.join(root, name))]
    if not samples:
        raise ValueError(f"{root!r} holds no image in class subfolders; an ImageFolder is ROOT/<class name>/"
                         f"<image files> ({', '.join(IMAGE_SUFFIXES)})")
    return classes, samples


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


class ImageFolderEvalLoader:
    """Every image of an ImageFolder once, in class then file order (the evaluation loader's contract)."""

    def __init__(self, root: str, *, img_size: int, batch_size: int):
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.classes, self.samples = scan_image_folder(root)
        self.img_size, self.batch_size = img_size, batch_size
        self.num_images, self.skipped = len(self.samples), 0

    def __len__(self):
        return -(-self.num_images // self.batch_size)

    def use_classes(self, classes: list[str]) -> None:
        """Number labels by another split's class list (a val folder may lack some of train's classes, which
        would shift every label after the gap); ValueError for a class the list does not have."""
        unknown = sorted(set(self.classes) - set(classes))
        if unknown:
            raise ValueError(f"classes {unknown[:5]} are not in the training split's class folders")
        index = {name: i for i, name in enumerate(classes)}
        self.samples = [(path, index[os.path.basename(os.path.dirname(path))]) for path, _ in self.samples]
        self.classes = list(classes)

    def items(self) -> list:
        return list(self.samples)

    def load_item(self, item) -> tuple[torch.Tensor, int]:
        from .eval_loader import eval_transform

        path, label = item
        return eval_transform(_read(path), self.img_size), label

    def __iter__(self):
        for start in range(0, self.num_images, self.batch_size):
            loaded = [self.load_item(item) for item in self.samples[start:start + self.batch_size]]
            yield {"images": torch.stack([x for x, _ in loaded]),
                   "labels": torch.tensor([y for _, y in loaded], dtype=torch.int64)}


class _FolderBatches(WorkerStridedBatches):
    """Batch ``k`` holds stream positions ``[k*B, (k+1)*B)``; position ``p`` is image ``perm_e[p % N]`` of epoch
    ``e = p // N`` cropped with an RNG seeded by ``(seed, rank, p)``: the stream depends on neither the number of
    workers nor on where a run was resumed (the shard loader's scheme)."""

    def __init__(self, samples, num_classes, *, img_size, micro_batch, scale, seed, rank, start):
        self.samples, self.num_classes = samples, num_classes
        self.size, self.batch, self.scale = img_size, micro_batch, scale
        self.seed, self.rank, self.start = seed, rank, start
        self._perm: tuple[int, np.ndarray] | None = None

    def _sample_at(self, position: int) -> int:
        n, epoch = len(self.samples), position // len(self.samples)
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, np.random.default_rng([self.seed, self.rank, epoch]).permutation(n))
        return int(self._perm[1][position % n])

    def make_batch(self, k: int) -> dict:
        from .torch_loader import train_transform

        n = len(self.samples)
        images, labels, skips = [], [], Counter()
        for p in range(k * self.batch, (k + 1) * self.batch):
            rng = np.random.default_rng([self.seed, self.rank, p, 1])
            i = self._sample_at(p)
            for attempt in range(n):
                path, label = self.samples[(i + attempt) % n]
                try:
                    images.append(train_transform(_read(path), rng, self.size, self.scale))
                    labels.append(label)
                    break
                except Exception:
                    skips[("decode_error", path)] += 1
        targets = torch.zeros(len(labels), self.num_classes)
        targets[torch.arange(len(labels)), torch.tensor(labels)] = 1.0
        return {"images": torch.stack(images), "targets": targets, "_skips": dict(skips)}


class ImageFolderTrainLoader:
    """This rank's infinite fine-tuning loader over an ImageFolder (the train-loader contract of loader.py):
    rank ``r`` reads images ``r, r + world, ...``, RandomResizedCrop + flip as the shard loaders do."""

    def __init__(self, root: str, *, stage: str, img_size: int, micro_batch: int, rank: int = 0, world_size: int = 1,
                 seed: int = 0, num_workers: int = 0):
        if batch_spec(stage).labels != "classes":
            raise ValueError(f"an ImageFolder gives labels, not hashtags: data.source=folder is for "
                             f"train.stage=finetune (got {stage!r}); convert it for WSP / MAE with "
                             f"`mawstron data from-folder`")
        self.classes, all_samples = scan_image_folder(root)
        self.samples = all_samples[rank::world_size]
        self.num_classes = len(self.classes)
        self.scale = batch_spec(stage).crop_scale
        self.img_size, self.micro_batch, self.seed, self.rank = img_size, micro_batch, seed, rank
        self.num_workers = num_workers
        self.batches_served = 0
        self.runtime_skips: Counter = Counter()

    def __iter__(self):
        stream = _FolderBatches(self.samples, self.num_classes, img_size=self.img_size, micro_batch=self.micro_batch,
                                scale=self.scale, seed=self.seed, rank=self.rank, start=self.batches_served)
        kwargs = {"prefetch_factor": 2} if self.num_workers else {}
        loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=self.num_workers, **kwargs)
        for batch in loader:
            self.batches_served += 1
            self.runtime_skips.update(batch.pop("_skips"))
            yield batch

    def state_dict(self) -> dict:
        return {"loader": "folder", "batches_served": self.batches_served}

    def load_state_dict(self, state: dict) -> None:
        if state.get("loader") != "folder":
            raise ValueError(f"this checkpoint's data position was written by the {state.get('loader')} loader; "
                             f"resume with the data settings it was trained with")
        self.batches_served = int(state["batches_served"])

    def stats(self) -> dict:
        by_reason, by_file = Counter(), Counter()
        for (reason, path), n in self.runtime_skips.items():
            by_reason[reason] += n
            by_file[path] += n
        return {"images_seen": self.batches_served * self.micro_batch, "skipped": sum(by_reason.values()),
                "skipped_by_reason": dict(by_reason), "worst_shards": [[p, n] for p, n in by_file.most_common(5)],
                "no_known_hashtag": 0}

    def close(self) -> None:
        pass


class ImageListLoader:
    """The images of a folder without class subfolders (or any list of image paths), in name order, label -1:
    for feature extraction and pictures, where there are no labels."""

    def __init__(self, paths: list[str], *, img_size: int, batch_size: int):
        if not paths:
            raise ValueError("no image to read (looked for " + ", ".join(IMAGE_SUFFIXES) + ")")
        self.samples = [(p, -1) for p in paths]
        self.img_size, self.batch_size, self.num_images = img_size, batch_size, len(paths)

    load_item = ImageFolderEvalLoader.load_item
    __iter__ = ImageFolderEvalLoader.__iter__
    __len__ = ImageFolderEvalLoader.__len__

    def items(self) -> list:
        return list(self.samples)


def align_classes(train_loader, test_loader) -> None:
    """Give an ImageFolder test split the training split's class numbering (no-op for shards)."""
    if hasattr(train_loader, "classes") and hasattr(test_loader, "use_classes"):
        test_loader.use_classes(train_loader.classes)


def image_loader(path: str, *, img_size: int, batch_size: int):
    """An ImageFolder's evaluation loader (labels from class subfolders), an unlabelled one for a plain folder of
    images, or the images of webdataset shards (a glob or brace pattern; json ``label`` if present); ValueError
    naming ``path`` when it holds none of these."""
    if is_image_folder(path):
        return ImageFolderEvalLoader(path, img_size=img_size, batch_size=batch_size)
    if os.path.isdir(path) and list_images(path):
        return ImageListLoader(list_images(path), img_size=img_size, batch_size=batch_size)
    if not os.path.isdir(path) and (path.endswith(".tar") or "*" in path or "{" in path or "," in path):
        from .eval_loader import EvalLoader

        loader = EvalLoader(DataConfig(), img_size=img_size, batch_size=batch_size, shards=path)
        loader.require_labels = False
        return loader
    raise ValueError(f"--images {path!r} holds no image: give a folder of images, an ImageFolder "
                     f"(ROOT/<class>/<image>) with {', '.join(IMAGE_SUFFIXES)} files, or webdataset shards")
