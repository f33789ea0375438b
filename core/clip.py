"""MAWS-CLIP: a ViT image tower and an XLM-R text tower (Hugging Face ``transformers``) in one embedding space.

The layout follows the MAWS release (facebookresearch/maws ``model.py``): ``vision_encoder`` (a timm-layout
ViT without head, class token pooled), ``text_encoder`` (XLM-R; the first token's output), bias-free projection
matrices ``vision_projection`` ``[vision width, embed_dim]`` and ``text_projection`` ``[text width, embed_dim]``
(features are ``x @ projection``), and a learnable ``logit_scale`` initialised to ``log(1 / 0.07)``.

Trained LiT-style (Zhai et al. 2022): the image tower comes from a MAWS checkpoint and stays locked, which here
means the model runs it under ``no_grad`` whenever none of its parameters require a gradient (the trainer
freezes them).  Single-device PyTorch: nothing here knows about DeepSpeed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .flops import block_flops
from .vit import VisionTransformer, vit_config

LOGIT_SCALE_INIT = math.log(1 / 0.07)
LOGIT_SCALE_MAX = 100.0  # CLIP clamps the temperature so that training cannot blow up the logits
PAD_ID, BOS_ID, EOS_ID, UNK_ID = 1, 0, 2, 3  # XLM-R / fairseq special token ids


@dataclass
class LitConfig:
    """The text tower, the joint space and the locking of the image tower for ``train.stage=lit``.

    ``text_model`` empty: a randomly initialised XLM-R tower of the given size, with a tokenizer trained on the
    training captions (``vocab_size`` is then the tokenizer's target size) unless ``tokenizer`` names a
    ``tokenizer.json``.  ``text_model`` a Hugging Face name or folder (``xlm-roberta-base``): its pretrained
    weights and tokenizer (``from_pretrained``; needs the network or a local copy), as MAWS-CLIP did.
    """

    text_model: str = ""
    tokenizer: str = ""  # a tokenizer.json; "" = text_model's, or trained on the captions
    vocab_size: int = 250002
    text_width: int = 768
    text_depth: int = 12
    text_heads: int = 12
    text_mlp_dim: int = 0  # 0: 4 x text_width
    context_length: int = 100  # caption tokens, plus <s> and </s>
    embed_dim: int = 768  # joint embedding dimension
    unlock_image: bool = False  # train the image tower too (at image_lr_scale x the lr)
    image_lr_scale: float = 1.0

    def __post_init__(self):
        for name in ("vocab_size", "text_width", "text_depth", "text_heads", "context_length", "embed_dim"):
            if getattr(self, name) <= 0:
                raise ValueError(f"lit.{name} must be positive, got {getattr(self, name)}")
        if self.text_width % self.text_heads:
            raise ValueError(f"lit.text_width={self.text_width} is not divisible by lit.text_heads={self.text_heads}")
        if self.text_mlp_dim < 0 or self.image_lr_scale < 0:
            raise ValueError("lit.text_mlp_dim and lit.image_lr_scale must be >= 0")

    @property
    def max_length(self) -> int:
        """Token ids per caption: the context plus <s> and </s>."""
        return self.context_length + 2


def text_tower_config(cfg: LitConfig, vocab_size: int | None = None):
    """The ``XLMRobertaConfig`` of a randomly initialised tower (dropout off: LiT trains one epoch)."""
    from transformers import XLMRobertaConfig

    return XLMRobertaConfig(
        vocab_size=vocab_size or cfg.vocab_size, hidden_size=cfg.text_width, num_hidden_layers=cfg.text_depth,
        num_attention_heads=cfg.text_heads, intermediate_size=cfg.text_mlp_dim or 4 * cfg.text_width,
        # positions start after the padding id (fairseq convention): ids 2 .. max_length + 1
        max_position_embeddings=max(cfg.max_length + PAD_ID + 1, 514 if cfg.vocab_size == 250002 else 0),
        type_vocab_size=1, pad_token_id=PAD_ID, bos_token_id=BOS_ID, eos_token_id=EOS_ID,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, layer_norm_eps=1e-5,
    )


def create_text_tower(cfg: LitConfig, vocab_size: int | None = None) -> nn.Module:
    """XLM-R from ``transformers``: pretrained when ``cfg.text_model`` names one, else random of cfg's size."""
    from transformers import XLMRobertaModel

    if cfg.text_model:
        return XLMRobertaModel.from_pretrained(cfg.text_model, add_pooling_layer=False)
    return XLMRobertaModel(text_tower_config(cfg, vocab_size), add_pooling_layer=False)


class CLIP(nn.Module):
    """Image and text towers with bias-free projections into a ``embed_dim`` space (MAWS-CLIP's key layout)."""

    def __init__(self, vision_encoder: VisionTransformer, text_encoder: nn.Module, embed_dim: int):
        super().__init__()
        if vision_encoder.config.num_classes:
            raise ValueError("the CLIP image tower has no classification head: build it with num_classes=0")
        self.vision_encoder = vision_encoder
        self.text_encoder = text_encoder
        vision_width, text_width = vision_encoder.config.embed_dim, text_encoder.config.hidden_size
        self.vision_projection = nn.Parameter(torch.randn(vision_width, embed_dim) * vision_width**-0.5)
        self.text_projection = nn.Parameter(torch.randn(text_width, embed_dim) * text_width**-0.5)
        # shape [1], not the release's []: ZeRO-3 cannot partition a 0-dim parameter (clip_weights reshapes)
        self.logit_scale = nn.Parameter(torch.full((1,), LOGIT_SCALE_INIT))

    @property
    def config(self):
        """The image tower's ``ViTConfig`` (what FLOP counts and presets refer to)."""
        return self.vision_encoder.config

    @property
    def image_locked(self) -> bool:
        return not any(p.requires_grad for p in self.vision_encoder.parameters())

    def train(self, mode: bool = True):
        """A locked image tower stays in eval mode (no drop-path): it is a fixed feature extractor."""
        super().train(mode)
        if self.image_locked:
            self.vision_encoder.eval()
        return self

    def no_weight_decay(self) -> set[str]:
        return {"logit_scale"} | {f"vision_encoder.{n}" for n in self.vision_encoder.no_weight_decay()}

    def encode_images(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.image_locked):
            pooled = self.vision_encoder.forward_head(self.vision_encoder.forward_features(images), pre_logits=True)
        x = pooled @ self.vision_projection.to(pooled.dtype)
        return F.normalize(x, dim=-1) if normalize else x

    def encode_texts(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                     normalize: bool = True) -> torch.Tensor:
        if attention_mask is None:
            attention_mask = (input_ids != PAD_ID).long()
        hidden = self.text_encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        x = hidden[:, 0] @ self.text_projection.to(hidden.dtype)  # the <s> token, as RobertaIdentityHead
        return F.normalize(x, dim=-1) if normalize else x

    def scale(self) -> torch.Tensor:
        return self.logit_scale.exp().clamp(max=LOGIT_SCALE_MAX).squeeze(0)

    def forward(self, images, input_ids, attention_mask=None):
        """``(image features, text features, logit scale)``, features L2-normalised."""
        return self.encode_images(images), self.encode_texts(input_ids, attention_mask), self.scale()


def create_clip(preset: str, lit: LitConfig, vocab_size: int | None = None, **vit_overrides) -> CLIP:
    """ViT preset ``preset`` (no head) + the XLM-R tower of ``lit``; ``vocab_size`` overrides lit's (a tokenizer
    trained on the captions has fewer tokens)."""
    vision = VisionTransformer(vit_config(preset, num_classes=0, **vit_overrides))
    return CLIP(vision, create_text_tower(lit, vocab_size), lit.embed_dim)


def text_flops(lit: LitConfig, tokens: int | None = None) -> int:
    """Forward FLOPs of the text tower on one caption (matmuls only, as ``core.flops``)."""
    tokens = tokens or lit.max_length
    return lit.text_depth * block_flops(tokens, lit.text_width, lit.text_mlp_dim or 4 * lit.text_width) \
        + 2 * lit.text_width * lit.embed_dim
