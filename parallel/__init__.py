"""Distributed training on DeepSpeed ZeRO-3: configs, model construction, the trainer, checkpoints, planning.

Applies sharding, activation checkpointing and the engine to ``mawstron.core`` models, which know nothing of
any of it.  Recipes import from here: a ``RunConfig`` and ``launch(CONFIG)``.
"""

from mawstron.core import MAEConfig
from mawstron.core.data import DataConfig

from .config import (
    CheckpointConfig,
    ConfigError,
    ModelConfig,
    OptimConfig,
    ParallelConfig,
    RunConfig,
    TrainConfig,
    apply_overrides,
)
from .checkpoints import zero_weights  # noqa: F401,I001  (registers the ZeRO folder reader with core's load_pretrained)
from .launcher.launch import launch

__all__ = [
    "CheckpointConfig",
    "ConfigError",
    "DataConfig",
    "MAEConfig",
    "ModelConfig",
    "OptimConfig",
    "ParallelConfig",
    "RunConfig",
    "TrainConfig",
    "apply_overrides",
    "launch",
]
