"""``Stage``: what differs between the training stages, asked by the trainer, the model builder, the planner,
evaluation during training and export (as torchtitan's ``TrainSpec``), so that none of them compares names.

A stage object is stateless; ``parallel/stages/__init__.py`` registers one per ``train.stage`` value.  The
defaults below are the image-classifier stages' (WSP, fine-tuning); MAE and LiT override what they change.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from mawstron.core import training_flops

from ..engine.activation_checkpointing import apply_activation_checkpointing
from ..engine.optim import param_groups

if TYPE_CHECKING:  # type hints only: config.py imports this package to validate train.stage
    from ..config import RunConfig


class Stage:
    name: str = ""
    flops_mode: str = "wsp"  # core.flops' forward: "mae" (visible tokens + decoder) or "wsp" (every token + head)
    needs_labels: bool = True  # the head is sized by the data's classes / vocabulary
    head_eval: bool = False  # evaluation during training scores the model's own head (else the k-NN monitor)
    text_tower: bool = False  # the model has a text tower (LiT): planned, exported and evaluated as a CLIP
    plan_classes: int = 1000  # head size assumed by a dry run's plan (the run sizes it from the data)

    # ------------------------------------------------------------------------------------------- config
    def config_problem(self, cfg: RunConfig) -> str | None:
        """What in ``cfg`` this stage cannot run with (``RunConfig`` raises it as a ConfigError), or None."""
        if cfg.finetune.augments:
            return "finetune.mixup / cutmix / reprob apply to train.stage=finetune only"
        if cfg.eval.test_shards and not self.head_eval and not cfg.eval.train_shards:
            return ("the k-NN monitor of MAE / WSP needs eval.train_shards (its memory) as well as "
                    "eval.test_shards, e.g. DIR/eval-train-*.tar and DIR/eval-test-*.tar")
        return None

    def plan_inputs(self, cfg: RunConfig) -> dict:
        """What ``planning.plan.plan`` needs beyond the model for this stage (a dry run's plan)."""
        return {"num_classes": self.plan_classes} if self.plan_classes else {}

    def synthetic_data_hint(self) -> str:
        """What ``data.source=synthetic``'s notice adds to its ``--set`` advice for this stage."""
        return ""

    # ------------------------------------------------------------------------------------------- model
    def tokenizer(self, cfg: RunConfig, rank: int):
        """The caption tokenizer every rank uses, or None for a stage without text."""
        return None

    def num_outputs(self, loader, tokenizer) -> int | None:
        """The size the model's output layer takes from the data (classes, hashtags, or token vocabulary)."""
        return loader.num_classes

    def construct(self, cfg: RunConfig, num_outputs: int | None) -> torch.nn.Module:
        """The plain ``core`` model (call under ``zero.Init`` or a device context)."""
        raise NotImplementedError

    def build(self, cfg: RunConfig, num_outputs: int | None, zero_init) -> torch.nn.Module:
        """``construct`` under ``zero_init`` (a ``deepspeed.zero.Init`` context, or a null context)."""
        with zero_init:
            return self.construct(cfg, num_outputs)

    def encoder_of(self, model: torch.nn.Module) -> torch.nn.Module:
        """The module ``checkpoint.init_from`` loads an encoder into."""
        return model

    def prepare(self, model: torch.nn.Module, cfg: RunConfig) -> None:
        """After the weights are in: activation checkpointing (and whatever else the stage freezes)."""
        apply_activation_checkpointing(model, cfg.parallel.activation_checkpointing)

    def param_groups(self, model: torch.nn.Module, cfg: RunConfig) -> list[dict]:
        return param_groups(model, cfg.optim, model.config.depth)

    def training_flops(self, cfg: RunConfig, vit_config) -> int:
        """Model FLOPs per training sample (forward + backward)."""
        return training_flops(vit_config, self.flops_mode, cfg.mae)

    # ------------------------------------------------------------------------------------------- step
    def loss(self, engine, batch: dict, device, dtype, cfg: RunConfig) -> torch.Tensor:
        """The loss of one micro-batch (``engine`` runs the model)."""
        raise NotImplementedError

    # ------------------------------------------------------------------------------------------- export
    def label_names(self, run: dict) -> list[str] | None:
        """The names of the head's outputs for a saved run's config (``run_config.json``), if still on disk."""
        return None
