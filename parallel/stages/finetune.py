"""The fine-tuning stage (``train.stage=finetune``): the WSP classifier on labelled images (one-hot targets),
with MAE's fine-tuning regularisation (mixup / cutmix, random erasing, label smoothing) and evaluation of its
own head during training."""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING

from .wsp import WSPStage

if TYPE_CHECKING:
    from ..config import RunConfig


class FinetuneStage(WSPStage):
    name = "finetune"
    head_eval = True

    def config_problem(self, cfg: RunConfig) -> str | None:
        return None  # the regularisation is this stage's; its evaluation scores the head (no k-NN memory)

    def synthetic_data_hint(self) -> str:
        return ""

    def label_names(self, run: dict) -> list[str] | None:
        """The classes of the labelled shards' ``manifest.json``."""
        shards = run.get("data", {}).get("shards")
        if not shards:
            return None
        manifest = os.path.join(os.path.dirname(shards.split(",")[0]), "manifest.json")
        if os.path.isfile(manifest):
            with open(manifest) as f:
                return list(json.load(f).get("classes", [])) or None
        return None


STAGE = FinetuneStage()
