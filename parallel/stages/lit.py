"""The LiT stage (``train.stage=lit``): what it adds to the shared trainer.

* the tokenizer: trained on the training captions by rank 0 (or loaded from ``lit.tokenizer`` /
  ``lit.text_model``), written to ``<checkpoint_dir>/tokenizer.json`` so that resume, ``mawstron eval`` and
  ``mawstron consolidate`` use the very same ids, then loaded by every rank;
* the model: ``core.clip.CLIP`` with the image tower from ``checkpoint.init_from``; locked by default (no
  gradient, hence in no optimizer group and without optimizer state, run under ``no_grad``, not
  activation-checkpointed); ``lit.unlock_image=true`` trains it at ``lit.image_lr_scale`` x the lr;
* the loss: ``core.clip_loss`` over the global batch (features all-gathered with autograd on the world group).

Under ZeRO-3 the text tower, the projections and the (frozen) image tower are partitioned like any model.
"""

from __future__ import annotations

import functools
import os
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

from mawstron.core import CLIP, clip_loss, create_clip, create_vit, forward_flops
from mawstron.core.clip import create_text_tower, text_flops
from mawstron.core.data.captions import read_captions
from mawstron.core.data.shards import expand_shards
from mawstron.core.text import TOKENIZER_FILE, load_tokenizer, train_tokenizer

from ..engine.activation_checkpointing import _checkpointed, apply_activation_checkpointing
from .base import Stage

if TYPE_CHECKING:
    from ..config import OptimConfig, RunConfig

TOKENIZER_TRAINING_CAPTIONS = 200_000  # enough for a BPE vocabulary of a few thousand tokens


def tokenizer_path(cfg: RunConfig) -> str:
    return os.path.join(cfg.checkpoint_dir, TOKENIZER_FILE)


def prepare_tokenizer(cfg: RunConfig, rank: int):
    """Every rank's tokenizer, identical: rank 0 makes ``<checkpoint_dir>/tokenizer.json`` (kept if it exists,
    as on resume), the others wait for it."""
    path = tokenizer_path(cfg)
    lit = cfg.lit
    if rank == 0 and not os.path.isfile(path):
        if lit.tokenizer or lit.text_model:
            tokenizer = load_tokenizer(lit.tokenizer or lit.text_model, lit.context_length)
        else:
            captions = read_captions(expand_shards(cfg.data.shards), TOKENIZER_TRAINING_CAPTIONS,
                                     validate=cfg.data.validate, index_dir=cfg.data.index_dir)
            tokenizer = train_tokenizer(captions, lit.vocab_size, lit.context_length)
        os.makedirs(cfg.checkpoint_dir, exist_ok=True)
        tokenizer.save(path + ".tmp")
        os.replace(path + ".tmp", path)
    if dist.is_initialized():
        dist.barrier()
    return load_tokenizer(path, lit.context_length)


def construct_clip(cfg: RunConfig, vocab_size: int) -> CLIP:
    """The plain ``core`` CLIP of the run (``vocab_size``: the tokenizer's)."""
    return create_clip(cfg.model.preset, cfg.lit, vocab_size if not cfg.lit.text_model else None,
                       **cfg.model.vit_overrides())


def build_clip(cfg: RunConfig, vocab_size: int, zero_init) -> CLIP:
    """The run's CLIP: image tower and projections constructed under ``zero_init`` (a ``deepspeed.zero.Init``
    context, or a null context below ZeRO-3); the text tower outside it, whole on each rank (identical: same
    seed), and partitioned by the engine at ``deepspeed.initialize``.  Why: ``transformers`` initialises (and
    ``from_pretrained`` loads) its weights after construction by indexing them, which partitioned stubs cannot
    take; only ``transformers``' own ZeRO-3 path knows how, and it skips its initialisation instead."""
    # import transformers' model code (and the torch._dynamo it pulls in) before zero.Init patches the tensor
    # constructors: imported inside the context, torch._dynamo's polyfills fail their signature checks
    import torch._dynamo  # noqa: F401
    from transformers import XLMRobertaModel  # noqa: F401

    text = create_text_tower(cfg.lit, None if cfg.lit.text_model else vocab_size)
    with zero_init:
        vision = create_vit(cfg.model.preset, num_classes=0, **cfg.model.vit_overrides())
        return CLIP(vision, text, cfg.lit.embed_dim)


def lock_and_checkpoint(model: CLIP, cfg: RunConfig) -> None:
    """Lock the image tower unless ``lit.unlock_image``; checkpoint every k-th text layer (and image block when
    unlocked: a locked tower runs under ``no_grad`` and stores nothing)."""
    every = cfg.parallel.activation_checkpointing
    if cfg.lit.unlock_image:
        apply_activation_checkpointing(model.vision_encoder, every)
    else:
        model.vision_encoder.requires_grad_(False)
        model.vision_encoder.eval()
    if every > 0:
        for i, layer in enumerate(model.text_encoder.encoder.layer):
            if i % every == 0 and not getattr(layer, "_mawstron_checkpointed", False):
                layer.forward = functools.partial(_checkpointed, layer.forward)
                layer._mawstron_checkpointed = True


def lit_param_groups(model: CLIP, cfg: OptimConfig, image_lr_scale: float) -> list[dict]:
    """Trainable parameters by (weight decay, lr scale): the image tower (when unlocked) at ``image_lr_scale``;
    no weight decay on biases, norms, embeddings' 1-D params and the logit scale."""
    skip = model.no_weight_decay()
    groups: dict[tuple, dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        shape = getattr(param, "ds_shape", param.shape)
        wd = 0.0 if len(shape) < 2 or name in skip or name.endswith(".bias") else cfg.weight_decay
        scale = image_lr_scale if name.startswith("vision_encoder.") else 1.0
        group = groups.setdefault((wd, scale), {"params": [], "names": [], "weight_decay": wd, "lr_scale": scale})
        group["params"].append(param)
        group["names"].append(name)
    return list(groups.values())


def lit_loss(engine, batch: dict, device, dtype) -> torch.Tensor:
    """The contrastive loss of one micro-batch, over the global batch of every rank."""
    images = batch["images"].to(device, dtype, non_blocking=True)
    input_ids = batch["input_ids"].to(device, non_blocking=True)
    attention_mask = batch["attention_mask"].to(device, non_blocking=True)
    image_features, text_features, scale = engine(images, input_ids, attention_mask)
    group = dist.group.WORLD if dist.is_initialized() and dist.get_world_size() > 1 else None
    return clip_loss(image_features, text_features, scale, group=group)


def lit_training_flops(cfg: RunConfig) -> int:
    """Model FLOPs per image-caption pair of one LiT step: the text tower forward + backward, the image tower
    forward only when locked (forward + backward when unlocked)."""
    vision = forward_flops(cfg.model.vit_config(), "features") + 2 * cfg.model.vit_config().embed_dim * cfg.lit.embed_dim
    return 3 * text_flops(cfg.lit) + (3 if cfg.lit.unlock_image else 1) * vision


class LiTStage(Stage):
    """Image-caption pairs, a text tower trained against the (locked) image tower of ``checkpoint.init_from``."""

    name = "lit"
    needs_labels = False
    text_tower = True
    plan_classes = 0

    def config_problem(self, cfg: RunConfig) -> str | None:
        problem = super().config_problem(cfg)
        if problem is None and not cfg.checkpoint.init_from and not cfg.lit.unlock_image:
            problem = ("train.stage=lit locks the image tower: set checkpoint.init_from to a WSP/MAWS run's "
                       "checkpoints/ folder or a consolidated encoder (or lit.unlock_image=true)")
        return problem

    def plan_inputs(self, cfg: RunConfig) -> dict:
        return {"lit": cfg.lit}

    def tokenizer(self, cfg: RunConfig, rank: int):
        return prepare_tokenizer(cfg, rank)

    def num_outputs(self, loader, tokenizer) -> int | None:
        return tokenizer.get_vocab_size()

    def construct(self, cfg: RunConfig, num_outputs: int | None) -> torch.nn.Module:
        return construct_clip(cfg, num_outputs)

    def build(self, cfg: RunConfig, num_outputs: int | None, zero_init) -> torch.nn.Module:
        return build_clip(cfg, num_outputs, zero_init)

    def encoder_of(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.vision_encoder  # init_from fills the image tower

    def prepare(self, model: torch.nn.Module, cfg: RunConfig) -> None:
        lock_and_checkpoint(model, cfg)

    def param_groups(self, model: torch.nn.Module, cfg: RunConfig) -> list[dict]:
        return lit_param_groups(model, cfg.optim, cfg.lit.image_lr_scale)

    def training_flops(self, cfg: RunConfig, vit_config) -> int:
        return lit_training_flops(cfg)

    def loss(self, engine, batch: dict, device, dtype, cfg: RunConfig) -> torch.Tensor:
        return lit_loss(engine, batch, device, dtype)


STAGE = LiTStage()
