"""``DataConfig``: where training images come from (the ``data`` section of a run's config)."""

from __future__ import annotations

from dataclasses import dataclass

from .resample import rank_epoch_size, resample_power

SOURCES = ("synthetic", "shards", "folder")  # folder: an ImageFolder at data.shards (fine-tuning)
LOADERS = ("dali", "torch")
DALI_DEVICES = ("auto", "cpu", "mixed")


@dataclass
class DataConfig:
    """Where training images come from.  ``source="synthetic"`` needs nothing on disk."""

    source: str = "synthetic"
    shards: str = ""  # webdataset tar shards: a glob, a brace pattern or a comma-separated list
    loader: str = "dali"  # "dali" or "torch" (PIL DataLoader) for source="shards"
    vocab: str = ""  # vocab.json for WSP (mawstron data vocab)
    num_workers: int = 2  # DALI threads or DataLoader worker processes
    dali_device: str = "auto"  # decoder device: "auto" (mixed with CUDA, cpu otherwise), "cpu" or "mixed"
    shuffle_buffer: int = 256  # samples in the shuffle buffer (DALI initial_fill); 0 or 1 reads in order
    validate: bool = True  # decode every image once with PIL when indexing a shard (cached); bad ones are skipped
    index_dir: str = ""  # where index files go; "" = beside the shards (falls back to a temp folder if read-only)
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
        if self.shuffle_buffer < 0:
            raise ValueError(f"data.shuffle_buffer must be >= 0, got {self.shuffle_buffer}")
        resample_power(self.resample, self.resample_power)
        rank_epoch_size(self.epoch_size, 1, 1)
        if not 0.0 <= self.min_crop_area <= 1.0:
            raise ValueError(f"data.min_crop_area must be in [0, 1] (0: the stage's default), got {self.min_crop_area}")
