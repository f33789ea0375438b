"""The MAWS paper's training settings as ``RunConfig`` builders; recipes call these with per-model sizes.

Sources, and how sure we are of each number:

* MAE (He et al. 2022, Table 8 / appendix A.1; MAWS keeps MAE's recipe): mask ratio 0.75, decoder 8 blocks x
  512 wide with 16 heads, normalised-pixel loss, AdamW betas (0.9, 0.95), weight decay 0.05, base lr 1.5e-4
  scaled by global batch / 256, cosine decay after a linear warmup, 224 px, RandomResizedCrop(0.2, 1) + flip.
  Also the values issue #3 asks for.  Global batch 4096 is MAE's; warmup 5% of the schedule is our choice
  (MAE: 40 of 800 epochs = 5%).
* WSP (MAWS follows SWAG, Singh et al. 2022): softmax cross-entropy over hashtags, AdamW, 224 px, cosine
  schedule with linear warmup.  The values below (peak lr 1e-3 at global batch 8192, weight decay 0.1, betas
  (0.9, 0.95), warmup 5%) are our reading of SWAG's recipe and were NOT verified against the MAWS appendix
  from this machine (no copy of it was reachable): check them before a paper-scale run and override with
  ``--set optim.lr=... optim.weight_decay=...``.
* Global batch: every recipe states ``train.global_batch`` (4096 MAE, 8192 WSP, 1024 fine-tuning); gradient
  accumulation is derived from it for the GPU count at hand, so steps, lr and images seen do not depend on it.
* Lengths: MAWS pre-pretrains and pretrains on IG-3B (about 3 billion images); one epoch at global batch 4096
  is about 730k steps.  ``train.steps`` is set per recipe from the data you have; the default below is that
  one-epoch figure and is meant to be overridden.
"""

from __future__ import annotations

from mawstron.core import LitConfig, MAEConfig
from mawstron.core.data import DataConfig

from ..config import CheckpointConfig, FinetuneConfig, ModelConfig, OptimConfig, ParallelConfig, RunConfig, TrainConfig

IG3B_IMAGES = 3_000_000_000
MAE_GLOBAL_BATCH = 4096
WSP_GLOBAL_BATCH = 8192


def mae_run(name: str, preset: str, micro_batch: int, activation_checkpointing: int = 1,
            steps: int = IG3B_IMAGES // MAE_GLOBAL_BATCH, **parallel) -> RunConfig:
    """MAE pre-pretraining of ``preset`` (paper settings above); ``micro_batch`` per GPU."""
    return RunConfig(
        name=name,
        model=ModelConfig(preset=preset),
        mae=MAEConfig(mask_ratio=0.75, decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16,
                      norm_pix_loss=True),
        data=DataConfig(source="shards"),
        optim=OptimConfig(base_lr=1.5e-4, weight_decay=0.05, betas=(0.9, 0.95), warmup_steps=steps // 20),
        train=TrainConfig(stage="mae", steps=steps, micro_batch=micro_batch, global_batch=MAE_GLOBAL_BATCH,
                          log_every=50),
        parallel=ParallelConfig(activation_checkpointing=activation_checkpointing, **parallel),
        checkpoint=CheckpointConfig(every_steps=2000, keep_last=3),
    )


def wsp_run(name: str, preset: str, micro_batch: int, init_from: str, activation_checkpointing: int = 1,
            steps: int = IG3B_IMAGES // WSP_GLOBAL_BATCH, **parallel) -> RunConfig:
    """WSP of ``preset`` initialised from the MAE checkpoint ``init_from`` (MAWS); empty ``init_from`` gives
    WSP from scratch."""
    return RunConfig(
        name=name,
        model=ModelConfig(preset=preset),
        data=DataConfig(source="shards"),
        optim=OptimConfig(lr=1e-3, lr_reference_batch=WSP_GLOBAL_BATCH, weight_decay=0.1, betas=(0.9, 0.95),
                          warmup_steps=steps // 20),
        train=TrainConfig(stage="wsp", steps=steps, micro_batch=micro_batch, global_batch=WSP_GLOBAL_BATCH,
                          log_every=50),
        parallel=ParallelConfig(activation_checkpointing=activation_checkpointing, **parallel),
        checkpoint=CheckpointConfig(every_steps=2000, keep_last=3, init_from=init_from),
    )


# Fine-tuning (MAE's FINETUNE.md in facebookresearch/mae, the recipe MAWS's transfer follows): global batch
# 1024, base lr 1e-3 (ViT-L/H; 5e-4 for ViT-B) scaled by batch / 256, layer-wise lr decay 0.75 (0.65 for ViT-B),
# weight decay 0.05, drop path 0.2 (L) / 0.3 (H) / 0.1 (B), 50 epochs (100 for B) with 5 warmup epochs, AdamW
# betas (0.9, 0.999), label smoothing 0.1, min lr 1e-6, and on top of RandomResizedCrop + flip: mixup 0.8,
# cutmix 1.0 (one of the two per batch, switch probability 0.5), random erasing 0.25 (core/augment.py; the
# ``finetune`` section).  MAE's recipe has no EMA; ``finetune.ema_decay`` adds one (parallel/engine/ema.py).  MAWS's
# released ImageNet-1k models are fine-tuned at higher resolution: set ``model.img_size`` (position embeddings
# are interpolated).
IMAGENET_TRAIN_IMAGES = 1_281_167
FINETUNE_GLOBAL_BATCH = 1024
FINETUNE = {  # preset: (base lr, layer decay, drop path, epochs)
    "vit_b16": (5e-4, 0.65, 0.1, 100),
    "vit_l16": (1e-3, 0.75, 0.2, 50),
    "vit_h14": (1e-3, 0.75, 0.3, 50),
}


def finetune_run(name: str, preset: str, micro_batch: int, init_from: str, shards: str = "",
                 train_images: int = IMAGENET_TRAIN_IMAGES, img_size: int = 0, activation_checkpointing: int = 1,
                 **parallel) -> RunConfig:
    """Supervised fine-tuning of a pretrained encoder on labelled shards (json ``label``) with layer-wise lr decay."""
    base_lr, layer_decay, drop_path, epochs = FINETUNE[preset]
    steps_per_epoch = max(1, train_images // FINETUNE_GLOBAL_BATCH)
    steps = epochs * steps_per_epoch
    return RunConfig(
        name=name,
        model=ModelConfig(preset=preset, img_size=img_size, drop_path_rate=drop_path),
        data=DataConfig(source="shards", shards=shards),
        optim=OptimConfig(base_lr=base_lr, min_lr=1e-6, weight_decay=0.05, betas=(0.9, 0.999),
                          layer_decay=layer_decay, warmup_steps=5 * steps_per_epoch),
        train=TrainConfig(stage="finetune", steps=steps, micro_batch=micro_batch, global_batch=FINETUNE_GLOBAL_BATCH,
                          log_every=50, label_smoothing=0.1),
        parallel=ParallelConfig(activation_checkpointing=activation_checkpointing, **parallel),
        checkpoint=CheckpointConfig(every_steps=2000, keep_last=3, init_from=init_from),
        finetune=FinetuneConfig(mixup=0.8, cutmix=1.0, mixup_prob=1.0, mixup_switch_prob=0.5, reprob=0.25),
    )


# ----------------------------------------------------------------------------------------------- LiT (MAWS-CLIP)
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


def maws_clip_lit(preset: str, pretrained_text: bool = True) -> LitConfig:
    """The release's text tower and joint dim for ``preset``; ``pretrained_text`` starts from the Hugging Face
    XLM-R weights and tokenizer (``from_pretrained``), as MAWS-CLIP did."""
    text, embed_dim = MAWS_CLIP[preset]
    return LitConfig(text_model=text if pretrained_text else "", vocab_size=250002, context_length=100,
                     embed_dim=embed_dim, **XLMR[text])


def lit_run(name: str, preset: str, micro_batch: int, init_from: str, activation_checkpointing: int = 1,
            steps: int = IG3B_IMAGES // LIT_GLOBAL_BATCH, **parallel) -> RunConfig:
    """LiT of the release's text tower on the frozen MAWS encoder ``init_from`` (settings above)."""
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
