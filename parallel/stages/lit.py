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

import torch
import torch.distributed as dist

from mawstron.core import CLIP, clip_loss, create_clip, create_vit, forward_flops
from mawstron.core.clip import create_text_tower, text_flops
from mawstron.core.text import TOKENIZER_FILE, load_tokenizer, train_tokenizer

from ..engine.activation_checkpointing import _checkpointed, apply_activation_checkpointing
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
            from mawstron.core.data.captions import read_captions
            from mawstron.core.data.shards import expand_shards

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


# ----------------------------------------------------------------------------------------------- paper recipes
# The released MAWS-CLIP towers (facebookresearch/maws model_builder.py): XLM-R Base (12 x 768) for ViT-B, XLM-R
# Large (24 x 1024) for L, H and 2B; vocabulary 250,002 (sentencepiece + fairseq ids), context 100 tokens; joint
# dims 768 (B), 1024 (L, H), 2048 (2B).  Training settings are NOT from the MAWS paper (not reachable from this
# machine): CLIP's AdamW (betas 0.9/0.98, eps 1e-6, weight decay 0.2), LiT's global batch 32k, peak lr 5e-4,
# cosine with 5% warmup, one pass over IG-3B as MAWS trains LiT "for one epoch".  Check before a paper-scale run.
XLMR = {"xlm-roberta-base": dict(text_width=768, text_depth=12, text_heads=12, text_mlp_dim=3072),
        "xlm-roberta-large": dict(text_width=1024, text_depth=24, text_heads=16, text_mlp_dim=4096)}
MAWS_CLIP = {"vit_b16": ("xlm-roberta-base", 768), "vit_l16": ("xlm-roberta-large", 1024),
             "vit_h14": ("xlm-roberta-large", 1024), "vit_2b14": ("xlm-roberta-large", 2048)}
LIT_GLOBAL_BATCH = 32768
IG3B_IMAGES = 3_000_000_000


def maws_clip_lit(preset: str, pretrained_text: bool = True) -> "LitConfig":
    """The release's text tower and joint dim for ``preset``; ``pretrained_text`` starts from the Hugging Face
    XLM-R weights and tokenizer (``from_pretrained``), as MAWS-CLIP did."""
    from mawstron.core import LitConfig

    text, embed_dim = MAWS_CLIP[preset]
    return LitConfig(text_model=text if pretrained_text else "", vocab_size=250002, context_length=100,
                     embed_dim=embed_dim, **XLMR[text])


def lit_run(name: str, preset: str, micro_batch: int, init_from: str, activation_checkpointing: int = 1,
            steps: int = IG3B_IMAGES // LIT_GLOBAL_BATCH, **parallel) -> RunConfig:
    """LiT of the release's text tower on the frozen MAWS encoder ``init_from`` (settings above)."""
    from mawstron.core.data import DataConfig

    from ..config import CheckpointConfig, ModelConfig, OptimConfig, ParallelConfig, TrainConfig

    return RunConfig(
        name=name,
        model=ModelConfig(preset=preset),
        data=DataConfig(source="shards"),
        optim=OptimConfig(lr=5e-4, weight_decay=0.2, betas=(0.9, 0.98), eps=1e-6, warmup_steps=steps // 20),
        train=TrainConfig(stage="lit", steps=steps, micro_batch=micro_batch, log_every=50),
        parallel=ParallelConfig(activation_checkpointing=activation_checkpointing, **parallel),
        checkpoint=CheckpointConfig(every_steps=2000, keep_last=3, init_from=init_from),
        lit=maws_clip_lit(preset),
    )
