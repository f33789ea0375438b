"""Masked autoencoder (He et al., 2022) around the ViT, as MAWS pre-pretrains it.

The model subclasses ``VisionTransformer`` so that its encoder parameters keep timm's names and its state dict
has the MAE repository's flat layout (``blocks.*``, ``decoder_blocks.*``, ``mask_token``, ...): the encoder is
the state dict minus ``DECODER_KEY_PREFIXES``.  The encoder sees only the visible patches; the decoder
reconstructs every patch and the loss is taken over the masked ones.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn as nn

from mawstron import kernels

from .pos_embed import sincos_2d
from .vit import Block, LayerNorm, Linear, ViTConfig, VisionTransformer, vit_config

# Keys that belong to MAE pretraining only; dropping them leaves a timm encoder.
DECODER_KEY_PREFIXES = ("decoder_", "mask_token")


@dataclass(frozen=True)
class MAEConfig:
    mask_ratio: float = 0.75
    decoder_embed_dim: int = 512
    decoder_depth: int = 8
    decoder_num_heads: int = 16
    decoder_mlp_dim: int | None = None  # None: 4 x decoder_embed_dim, resolved by decoder_hidden_dim
    norm_pix_loss: bool = True
    fixed_pos_embed: bool = True  # MAE: frozen 2-D sin-cos tables for encoder and decoder

    def __post_init__(self):
        problems = []
        if not 0.0 < self.mask_ratio < 1.0:
            problems.append(f"mask_ratio must be in (0, 1), got {self.mask_ratio}")
        if self.decoder_embed_dim % self.decoder_num_heads:
            problems.append(
                f"decoder_embed_dim {self.decoder_embed_dim} is not divisible by decoder_num_heads {self.decoder_num_heads}"
            )
        if self.decoder_depth < 0:
            problems.append(f"decoder_depth must be >= 0, got {self.decoder_depth}")
        if problems:
            raise ValueError("invalid MAE config: " + "; ".join(problems))

    @property
    def decoder_hidden_dim(self) -> int:
        return self.decoder_mlp_dim if self.decoder_mlp_dim is not None else 4 * self.decoder_embed_dim

    def num_visible(self, num_patches: int) -> int:
        """Patches the encoder sees: ``int(L * (1 - mask_ratio))`` as MAE computes it (49 of 196 at 0.75)."""
        return int(num_patches * (1 - self.mask_ratio))


def patchify(imgs: torch.Tensor, patch_size: int) -> torch.Tensor:
    """``[B, C, H, W]`` -> ``[B, patches, p*p*C]``, pixels ordered (row, col, channel) within a patch as MAE."""
    b, c, h, w = imgs.shape
    gh, gw = h // patch_size, w // patch_size
    x = imgs.reshape(b, c, gh, patch_size, gw, patch_size)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, gh * gw, patch_size * patch_size * c)


def unpatchify(patches: torch.Tensor, patch_size: int, in_chans: int = 3) -> torch.Tensor:
    b, n, _ = patches.shape
    g = int(round(n**0.5))
    x = patches.reshape(b, g, g, patch_size, patch_size, in_chans)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(b, in_chans, g * patch_size, g * patch_size)


def random_masking(batch: int, num_patches: int, num_visible: int, noise: torch.Tensor | None = None, device=None):
    """Per-sample random masking by sorting noise (MAE): the ``num_visible`` lowest-noise patches are kept.

    Returns ``ids_keep`` ``[B, num_visible]`` (in shuffled order), ``ids_restore`` ``[B, L]`` (the inverse
    permutation of the shuffle) and ``mask`` ``[B, L]`` (0 visible, 1 masked, in the original patch order).
    ``noise`` ``[B, L]`` can be passed to make the mask deterministic (tests, resumed runs).
    """
    if noise is None:
        noise = torch.rand(batch, num_patches, device=device)
    elif noise.shape != (batch, num_patches):
        raise ValueError(f"noise must be [batch, patches] = {(batch, num_patches)}, got {tuple(noise.shape)}")
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :num_visible]
    mask = torch.ones(batch, num_patches, device=noise.device)
    mask[:, :num_visible] = 0
    mask = torch.gather(mask, 1, ids_restore)
    return ids_keep, ids_restore, mask


class MaskedAutoencoder(VisionTransformer):
    def __init__(self, vit: ViTConfig, mae: MAEConfig = MAEConfig()):
        if vit.num_classes:
            raise ValueError("the MAE encoder has no classification head: build it with num_classes=0")
        super().__init__(vit)
        self.mae_config = m = mae
        d = m.decoder_embed_dim
        if m.fixed_pos_embed:
            with torch.no_grad():
                self.pos_embed.copy_(sincos_2d(vit.embed_dim, vit.grid_size))
            self.pos_embed.requires_grad_(False)
        self.decoder_embed = Linear(vit.embed_dim, d, init=vit.init)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, d))
        nn.init.normal_(self.mask_token, std=0.02)
        self.decoder_pos_embed = nn.Parameter(
            sincos_2d(d, vit.grid_size).to(self.mask_token.device), requires_grad=not m.fixed_pos_embed
        )
        self.decoder_blocks = nn.ModuleList(
            [
                Block(d, m.decoder_num_heads, m.decoder_hidden_dim, True, vit.layer_norm_eps, 0.0, vit.init)
                for _ in range(m.decoder_depth)
            ]
        )
        self.decoder_norm = LayerNorm(d, eps=vit.layer_norm_eps)
        self.decoder_pred = Linear(d, vit.patch_pixels, init=vit.init)

    def no_weight_decay(self) -> set[str]:
        return super().no_weight_decay() | {"mask_token", "decoder_pos_embed"}

    def forward_encoder(self, imgs: torch.Tensor, noise: torch.Tensor | None = None):
        """Encode the visible patches; returns ``(latent [B, 1 + visible, D], mask [B, L], ids_restore [B, L])``."""
        c = self.config
        x = self.patch_embed(imgs)
        ids_keep, ids_restore, mask = random_masking(
            x.shape[0], c.num_patches, self.mae_config.num_visible(c.num_patches), noise, device=x.device
        )
        x = kernels.gather_visible_tokens(x, self.pos_embed[:, 1:], ids_keep)
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        x = self.blocks(x)
        return self.norm(x), mask, ids_restore

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """Predict every patch's pixels from the latent; returns ``[B, L, p*p*C]`` (class token dropped)."""
        x = self.decoder_embed(latent)
        x = kernels.unshuffle_with_mask_tokens(x, self.mask_token, ids_restore, self.decoder_pos_embed)
        for block in self.decoder_blocks:
            x = block(x)
        x = self.decoder_pred(self.decoder_norm(x))
        return x[:, 1:]

    def forward_loss(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        target = patchify(imgs, self.config.patch_size)
        return kernels.mae_loss(pred, target, mask, norm_pix_loss=self.mae_config.norm_pix_loss)

    def forward(self, imgs: torch.Tensor, noise: torch.Tensor | None = None):
        """Returns ``(loss, pred, mask)`` as the MAE reference does."""
        latent, mask, ids_restore = self.forward_encoder(imgs, noise)
        pred = self.forward_decoder(latent, ids_restore)
        return self.forward_loss(imgs, pred, mask), pred, mask


def create_mae(name: str, mae: MAEConfig | None = None, **overrides) -> MaskedAutoencoder:
    """MAE around preset ``name``: ViT fields in ``overrides`` go to the encoder, MAE fields to ``MAEConfig``.

    The encoder defaults to MAE's xavier initialisation (``init="mae"``) unless overridden.
    """
    mae_fields = {f.name for f in dataclasses.fields(MAEConfig)}
    mae_overrides = {k: overrides.pop(k) for k in list(overrides) if k in mae_fields}
    mae = dataclasses.replace(mae or MAEConfig(), **mae_overrides)
    overrides.setdefault("init", "mae")
    return MaskedAutoencoder(vit_config(name, **overrides), mae)


def encoder_state_dict(state_dict: dict) -> dict:
    """The timm encoder inside an MAE state dict: every key but the decoder's and the mask token."""
    return {k: v for k, v in state_dict.items() if not k.startswith(DECODER_KEY_PREFIXES)}
