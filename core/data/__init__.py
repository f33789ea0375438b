"""Data: loaders that feed the trainer (see ``loader.py`` for the contract every loader meets)."""

from __future__ import annotations

from dataclasses import dataclass

from .loader import IMAGENET_MEAN, IMAGENET_STD, SyntheticLoader

SOURCES = ("synthetic", "shards")


@dataclass
class DataConfig:
    """Where training images come from.  ``source="synthetic"`` needs nothing on disk."""

    source: str = "synthetic"
    shards: str = ""  # webdataset tar shards: a glob, a brace pattern or a comma-separated list
    loader: str = "dali"  # "dali" or "torch" (PIL DataLoader) for source="shards"
    vocab: str = ""  # vocab.json for WSP (mawstron data vocab)
    num_workers: int = 2

    def __post_init__(self):
        if self.source not in SOURCES:
            raise ValueError(f"data.source must be one of {SOURCES}, got {self.source!r}")


def build_train_loader(cfg: DataConfig, *, stage: str, img_size: int, micro_batch: int, rank: int = 0,
                       world_size: int = 1, seed: int = 0):
    """This rank's infinite train loader for ``stage`` ("mae" or "wsp")."""
    if cfg.source == "synthetic":
        return SyntheticLoader(img_size=img_size, micro_batch=micro_batch, rank=rank, world_size=world_size,
                               seed=seed, with_targets=stage == "wsp")
    raise NotImplementedError("data.source='shards' lands with the DALI data pipeline")


__all__ = ["DataConfig", "IMAGENET_MEAN", "IMAGENET_STD", "SOURCES", "SyntheticLoader", "build_train_loader"]
