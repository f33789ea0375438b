"""Data: loaders that feed the trainer (see ``loader.py`` for the contract every loader meets)."""

from __future__ import annotations

from .common import BATCHES, BatchSpec, batch_spec
from .config import DALI_DEVICES, LOADERS, SOURCES, DataConfig
from .loader import IMAGENET_MEAN, IMAGENET_STD, SyntheticLoader


def build_train_loader(cfg: DataConfig, *, stage: str, img_size: int, micro_batch: int, rank: int = 0,
                       world_size: int = 1, seed: int = 0, tokenizer=None):
    """This rank's infinite train loader for ``stage`` ("mae", "wsp", "finetune" or "lit"; lit tokenizes the
    captions with ``tokenizer``)."""
    batches = batch_spec(stage)
    if cfg.source == "synthetic":
        if batches.captions:
            raise ValueError("LiT needs captioned images: set data.source=shards and data.shards=DIR/train-*.tar "
                             "(from `mawstron data synth --out DIR`)")
        if batches.labels == "classes":
            raise ValueError("fine-tuning needs labelled shards: set data.source=shards and "
                             "data.shards=DIR/eval-train-*.tar (from `mawstron data synth --out DIR`)")
        return SyntheticLoader(img_size=img_size, micro_batch=micro_batch, rank=rank, world_size=world_size,
                               seed=seed, with_targets=batches.labels == "hashtags")
    kwargs = dict(stage=stage, img_size=img_size, micro_batch=micro_batch, rank=rank, world_size=world_size,
                  seed=seed)
    if cfg.source == "folder":  # labels only (fine-tuning): no captions to tokenize
        from .image_folder import ImageFolderTrainLoader

        return ImageFolderTrainLoader(cfg.shards, num_workers=cfg.num_workers, **kwargs)
    kwargs["tokenizer"] = tokenizer
    if cfg.loader == "dali":
        from .dali import DaliShardLoader

        return DaliShardLoader(cfg, **kwargs)
    from .torch_loader import TorchShardLoader

    return TorchShardLoader(cfg, **kwargs)


def check_data(cfg: DataConfig, stage: str) -> None:
    """Fail fast (ValueError with the fix) when the shards or the vocabulary named by ``cfg`` do not exist:
    called by ``mawstron train`` before any rank starts."""
    if cfg.source == "folder":
        from .image_folder import scan_image_folder

        scan_image_folder(cfg.shards)
        return
    if cfg.source != "shards":
        return
    from .shards import Vocab, expand_shards

    expand_shards(cfg.shards)
    if batch_spec(stage).labels == "hashtags":
        Vocab(cfg.vocab)


def build_eval_loader(cfg: DataConfig, *, img_size: int, batch_size: int, shards: str):
    """A finite, ordered pass over every usable labelled image of ``shards`` (see eval_loader.py), or of an
    ImageFolder directory (image_folder.py)."""
    from .image_folder import ImageFolderEvalLoader, is_image_folder

    if is_image_folder(shards):
        return ImageFolderEvalLoader(shards, img_size=img_size, batch_size=batch_size)
    from .eval_loader import EvalLoader

    return EvalLoader(cfg, img_size=img_size, batch_size=batch_size, shards=shards)


__all__ = ["BATCHES", "BatchSpec", "DALI_DEVICES", "DataConfig", "IMAGENET_MEAN", "IMAGENET_STD", "LOADERS", "SOURCES", "SyntheticLoader",
           "batch_spec", "build_eval_loader", "build_train_loader",
           "check_data"]
