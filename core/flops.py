"""Forward FLOPs per image, counted from the shapes (never from a materialised model).

Counted: every matrix multiply at 2 FLOPs per multiply-add (patch projection, qkv, attention scores and their
weighted sum, output projection, MLP, MAE decoder projections, heads).  Not counted: norms, softmax, GELU,
adds (under 1% for these shapes), the usual convention for TFLOP/s and MFU (PaLM, Megatron, torchtitan).
Training FLOPs are 3x forward (backward = 2x); recomputation under activation checkpointing is not "model FLOPs"
and is left out, so MFU stays comparable across checkpointing settings.
"""

from __future__ import annotations

from .mae import MAEConfig
from .vit import ViTConfig, vit_config

STAGES = ("mae", "wsp", "features")


def block_flops(tokens: int, dim: int, mlp_dim: int) -> int:
    """One pre-norm transformer block on ``tokens`` tokens of width ``dim``."""
    projections = 2 * tokens * dim * (3 * dim + dim + 2 * mlp_dim)  # qkv, proj, fc1, fc2
    attention = 2 * 2 * tokens * tokens * dim  # q @ k^T and attn @ v, summed over heads
    return projections + attention


def forward_flops_breakdown(vit: ViTConfig, stage: str, mae: MAEConfig | None = None) -> dict[str, int]:
    """Forward FLOPs per image of ``stage`` for model ``vit``, by component.

    * ``"wsp"``: the full-resolution encoder and its ``num_classes``-way head (fine-tuning counts the same).
    * ``"features"``: the encoder alone (linear probe / feature extraction).
    * ``"mae"``: the encoder on the visible tokens plus the decoder on all tokens (``mae`` defaults to
      ``MAEConfig()``: 75% masking, decoder 8 x 512).
    """
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    n = vit.num_patches
    parts = {"patch_embed": 2 * n * vit.patch_pixels * vit.embed_dim}  # the projection runs on every patch
    if stage == "mae":
        mae = mae or MAEConfig()
        tokens = 1 + mae.num_visible(n)
        d = mae.decoder_embed_dim
        parts["encoder_blocks"] = vit.depth * block_flops(tokens, vit.embed_dim, vit.hidden_dim)
        parts["decoder_embed"] = 2 * tokens * vit.embed_dim * d
        parts["decoder_blocks"] = mae.decoder_depth * block_flops(1 + n, d, mae.decoder_hidden_dim)
        parts["decoder_pred"] = 2 * (1 + n) * d * vit.patch_pixels
    else:
        parts["encoder_blocks"] = vit.depth * block_flops(1 + n, vit.embed_dim, vit.hidden_dim)
        if stage == "wsp":
            parts["head"] = 2 * vit.embed_dim * vit.num_classes
    return parts


def forward_flops(vit: ViTConfig, stage: str, mae: MAEConfig | None = None) -> int:
    return sum(forward_flops_breakdown(vit, stage, mae).values())


def training_flops(vit: ViTConfig, stage: str, mae: MAEConfig | None = None) -> int:
    """Model FLOPs of one training step per image: forward + backward (2x forward)."""
    return 3 * forward_flops(vit, stage, mae)


PAPER_PRESETS = ("vit_b16", "vit_l16", "vit_h14", "vit_2b14", "vit_6.5b14")
FINETUNE_IMG_SIZE = 518  # the /14 models' high-resolution fine-tuning (37 x 37 patches)


def attention_shapes(presets=PAPER_PRESETS) -> tuple[tuple[str, int, int, tuple[int, ...]], ...]:
    """(preset, heads, head dim, sequence lengths) of each preset's attention, sequences with the class token:
    the MAE encoder at 224 px (the visible 25 % of the patches), the full 224 px sequence and, for the /14
    models, fine-tuning at 518 px; e.g. ("vit_h14", 16, 80, (65, 257, 1370))."""
    shapes = []
    for name in presets:
        vit = vit_config(name)
        seqs = [1 + MAEConfig().num_visible(vit.num_patches), 1 + vit.num_patches]
        if FINETUNE_IMG_SIZE % vit.patch_size == 0:
            seqs.append(1 + vit_config(name, img_size=FINETUNE_IMG_SIZE).num_patches)
        shapes.append((name, vit.num_heads, vit.head_dim, tuple(seqs)))
    return tuple(shapes)
