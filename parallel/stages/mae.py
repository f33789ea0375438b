"""The MAE stage (``train.stage=mae``): the masked autoencoder, its reconstruction loss, images only."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from mawstron.core import create_mae

from .base import Stage

if TYPE_CHECKING:
    from ..config import RunConfig


class MAEStage(Stage):
    name = "mae"
    flops_mode = "mae"
    needs_labels = False
    plan_classes = 0

    def config_problem(self, cfg: RunConfig) -> str | None:
        problem = super().config_problem(cfg)
        if problem is None and cfg.checkpoint.init_from:
            problem = "checkpoint.init_from loads an encoder into a WSP or fine-tuning run, not into MAE"
        return problem

    def construct(self, cfg: RunConfig, num_outputs: int | None) -> torch.nn.Module:
        return create_mae(cfg.model.preset, mae=cfg.mae, **cfg.model.vit_overrides())

    def loss(self, engine, batch: dict, device, dtype, cfg: RunConfig) -> torch.Tensor:
        images = batch["images"].to(device, dtype, non_blocking=True)
        loss, _, _ = engine(images)
        return loss


STAGE = MAEStage()
