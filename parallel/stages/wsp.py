"""The WSP stage (``train.stage=wsp``): a ViT classifier on hashtags as noisy multi-labels (softmax
cross-entropy against the normalised multi-hot target, as MAWS), optionally label-smoothed."""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING

import torch

from mawstron.core import create_wsp, wsp_loss

from .base import Stage
from .regularize import regularize

if TYPE_CHECKING:
    from ..config import RunConfig


class WSPStage(Stage):
    name = "wsp"

    def synthetic_data_hint(self) -> str:
        return " --set data.vocab=DIR/vocab.json"

    def construct(self, cfg: RunConfig, num_outputs: int | None) -> torch.nn.Module:
        if not num_outputs:
            raise ValueError(f"stage {self.name!r} needs labels: the data source gave no vocabulary / classes")
        return create_wsp(cfg.model.preset, num_outputs, **cfg.model.vit_overrides())

    def loss(self, engine, batch: dict, device, dtype, cfg: RunConfig) -> torch.Tensor:
        images = batch["images"].to(device, dtype, non_blocking=True)
        targets = batch["targets"].to(device, non_blocking=True)
        images, targets = regularize(images, targets, cfg)  # label smoothing, mixup/cutmix, random erasing
        loss, _ = wsp_loss(engine(images), targets)
        return loss

    def label_names(self, run: dict) -> list[str] | None:
        """The WSP vocabulary's tags."""
        vocab = run.get("data", {}).get("vocab")
        if vocab and os.path.isfile(vocab):
            with open(vocab) as f:
                return list(json.load(f).get("tags", [])) or None
        return None


STAGE = WSPStage()
