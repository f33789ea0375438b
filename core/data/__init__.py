"""Data: loaders that feed the trainer (see ``loader.py`` for the contract every loader meets)."""

from __future__ import annotations

from dataclasses import dataclass

from .loader import IMAGENET_MEAN, IMAGENET_STD, SyntheticLoader

SOURCES = ("synthetic", "shards", "folder")  # folder: an ImageFolder at data.shards (fine-tuning)
LOADERS = ("dali", "torch")
DALI_DEVICES = ("auto", "cpu", "mixed")


@dataclass
class DataConfig:
    """Where training images come from.  ``source="synthetic"`` needs nothing on disk."""

    source: str = "synthetic"
    # webdataset tar shards: a glob, a brace pattern or a comma-separated list; local, s3://bucket/prefix/... or
    # https://host/path/... (brace patterns; s3 also globs)
    shards: str = ""
    loader: str = "dali"  # "dali" or "torch" (PIL DataLoader) for source="shards"
    vocab: str = ""  # vocab.json for WSP (mawstron data vocab)
    num_workers: int = 2  # DALI threads or DataLoader worker processes
    dali_device: str = "auto"  # decoder device: "auto" (mixed with CUDA, cpu otherwise), "cpu" or "mixed"
    shuffle_buffer: int = 256  # samples in the shuffle buffer (DALI initial_fill); 0 or 1 reads in order
    validate: bool = True  # decode every image once with PIL when indexing a shard (cached); bad ones are skipped
    # where index files (and precomputed tag ids) go; "" = beside local shards (a private temporary folder, removed
    # at exit, for read-only folders and s3:// / https:// shards: set it to keep their indexes between runs)
    index_dir: str = ""
    max_open_shards: int = 64  # shard files the PyTorch loader keeps open per worker (least recently used closed)
    # WSP re-sampling of long-tailed hashtags (resample.py): none | sqrt | inverse; the power overrides the mode's
    # (sqrt 0.5, inverse 0); an epoch is a weighted draw with replacement of epoch_size images (0: all of them)
    resample: str = "none"
    min_crop_area: float = 0.0  # RandomResizedCrop's smallest area share; 0: the stage's (MAE 0.2, WSP 0.08)
    resample_power: float = -1.0
    epoch_size: int = 0

    def __post_init__(self):
        if self.source not in SOURCES:
            raise ValueError(f"data.source must be one of {SOURCES}, got {self.source!r}")
        if self.loader not in LOADERS:
            raise ValueError(f"data.loader must be one of {LOADERS}, got {self.loader!r}")
        if self.dali_device not in DALI_DEVICES:
            raise ValueError(f"data.dali_device must be one of {DALI_DEVICES}, got {self.dali_device!r}")
        if self.num_workers < 0:
            raise ValueError(f"data.num_workers must be >= 0, got {self.num_workers}")
        if self.max_open_shards < 1:
            raise ValueError(f"data.max_open_shards must be >= 1, got {self.max_open_shards}")
        if self.shuffle_buffer < 0:
            raise ValueError(f"data.shuffle_buffer must be >= 0, got {self.shuffle_buffer}")
        from .resample import rank_epoch_size, resample_power

        resample_power(self.resample, self.resample_power)
        rank_epoch_size(self.epoch_size, 1, 1)
        if not 0.0 <= self.min_crop_area <= 1.0:
            raise ValueError(f"data.min_crop_area must be in [0, 1] (0: the stage's default), got {self.min_crop_area}")


def build_train_loader(cfg: DataConfig, *, stage: str, img_size: int, micro_batch: int, rank: int = 0,
                       world_size: int = 1, seed: int = 0, tokenizer=None):
    """This rank's infinite train loader for ``stage`` ("mae", "wsp", "finetune" or "lit"; lit tokenizes the
    captions with ``tokenizer``)."""
    if cfg.source == "synthetic":
        if stage == "lit":
            raise ValueError("LiT needs captioned images: set data.source=shards and data.shards=DIR/train-*.tar "
                             "(from `mawstron data synth --out DIR`)")
        if stage == "finetune":
            raise ValueError("fine-tuning needs labelled shards: set data.source=shards and "
                             "data.shards=DIR/eval-train-*.tar (from `mawstron data synth --out DIR`)")
        return SyntheticLoader(img_size=img_size, micro_batch=micro_batch, rank=rank, world_size=world_size,
                               seed=seed, with_targets=stage == "wsp")
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
    if stage == "wsp":
        Vocab(cfg.vocab)


def build_eval_loader(cfg: DataConfig, *, img_size: int, batch_size: int, shards: str):
    """A finite, ordered pass over every usable labelled image of ``shards`` (see eval_loader.py), or of an
    ImageFolder directory (image_folder.py)."""
    from .image_folder import ImageFolderEvalLoader, is_image_folder

    if is_image_folder(shards):
        return ImageFolderEvalLoader(shards, img_size=img_size, batch_size=batch_size)
    from .eval_loader import EvalLoader

    return EvalLoader(cfg, img_size=img_size, batch_size=batch_size, shards=shards)


__all__ = ["DALI_DEVICES", "DataConfig", "IMAGENET_MEAN", "IMAGENET_STD", "LOADERS", "SOURCES", "SyntheticLoader",
           "build_eval_loader", "build_train_loader", "check_data"]
