"""The ViT family of the MAWS paper, with timm's state-dict names and numerics.

Single-device PyTorch: nothing here knows about DeepSpeed, sharding or activation checkpointing (``parallel/``
applies those).  Every parameter is initialised inside the constructor of the module that owns it, so that
``deepspeed.zero.Init`` can partition each module as soon as it is built and building on the ``meta`` device
costs nothing.  Fused ops (attention, LayerNorm, residual-add + LayerNorm) go through ``mawstron.kernels``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn as nn

from mawstron import kernels

from .pos_embed import sincos_2d

INIT_SCHEMES = ("timm", "mae")


@dataclass(frozen=True)
class ViTConfig:
    """Shape and numerics of a ViT.

    ``mlp_dim=None`` means 4 x ``embed_dim`` (every MAWS model); it is resolved by ``hidden_dim`` when used, never
    stored, so a config derived with another ``embed_dim`` (``dataclasses.replace``, overrides) keeps the ratio.
    """

    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_dim: int | None = None
    num_classes: int = 0
    qkv_bias: bool = True
    layer_norm_eps: float = 1e-6  # timm's ViT and MAE both use 1e-6, not PyTorch's 1e-5
    drop_path_rate: float = 0.0
    global_pool: str = "token"  # "token": class token after `norm` (timm default); "avg": mean of patches + fc_norm
    init: str = "timm"  # "timm": trunc-normal(0.02) linears; "mae": xavier-uniform linears as MAE pretraining

    def __post_init__(self):
        problems = []
        if self.img_size % self.patch_size:
            problems.append(f"img_size {self.img_size} is not a multiple of patch_size {self.patch_size}")
        if self.embed_dim % self.num_heads:
            problems.append(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.global_pool not in ("token", "avg"):
            problems.append(f"global_pool {self.global_pool!r} must be 'token' or 'avg'")
        if self.init not in INIT_SCHEMES:
            problems.append(f"init {self.init!r} must be one of {INIT_SCHEMES}")
        if self.mlp_dim is not None and self.mlp_dim <= 0:
            problems.append(f"mlp_dim must be positive (or None for 4 x embed_dim), got {self.mlp_dim}")
        for name in ("img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads"):
            if getattr(self, name) <= 0:
                problems.append(f"{name} must be positive, got {getattr(self, name)}")
        if self.num_classes < 0:
            problems.append(f"num_classes must be >= 0, got {self.num_classes}")
        if problems:
            raise ValueError("invalid ViT config: " + "; ".join(problems))

    @property
    def hidden_dim(self) -> int:
        """Width of the MLP's hidden layer: ``mlp_dim``, or 4 x ``embed_dim`` when that is None."""
        return self.mlp_dim if self.mlp_dim is not None else 4 * self.embed_dim

    @property
    def grid_size(self) -> int:
        return self.img_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size**2

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def patch_pixels(self) -> int:
        return self.patch_size**2 * self.in_chans


# The paper's models (Table 1 of MAWS; the released checkpoints are timm ViTs of these shapes), plus tiny
# presets for tests and the CPU demo.  Head dims: 64 (B, L, 6.5B is 128), 80 (H, 2B): never assume a power of 2.
# Every MLP is 4 x wide (3072, 4096, 5120, 10240, 16384 for the paper's models), so mlp_dim is left at None.
PRESETS: dict[str, dict] = {
    "vit_b16": dict(patch_size=16, embed_dim=768, depth=12, num_heads=12),
    "vit_l16": dict(patch_size=16, embed_dim=1024, depth=24, num_heads=16),
    "vit_h14": dict(patch_size=14, embed_dim=1280, depth=32, num_heads=16),
    "vit_2b14": dict(patch_size=14, embed_dim=2560, depth=24, num_heads=32),
    "vit_6.5b14": dict(patch_size=14, embed_dim=4096, depth=32, num_heads=32),
    # tiny: 32 px images for CPU tests and the demo
    "vit_micro": dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2),
    "vit_tiny": dict(img_size=32, patch_size=4, embed_dim=192, depth=4, num_heads=3),
    "vit_tiny_h80": dict(img_size=32, patch_size=4, embed_dim=160, depth=2, num_heads=2),
}


# The shape fields a run may override on top of its preset (``model.*`` in a run config).  Checkpoints record them,
# and every reader that rebuilds a model from a checkpoint's config passes exactly these on.
SIZE_FIELDS = ("img_size", "patch_size", "embed_dim", "depth", "num_heads")


def size_overrides(model: dict) -> dict:
    """The non-zero ``SIZE_FIELDS`` of a recorded ``model`` section (0 and missing mean: the preset's value)."""
    return {k: model[k] for k in SIZE_FIELDS if model.get(k)}


def vit_config(name: str, **overrides) -> ViTConfig:
    """The config of preset ``name`` with ``overrides`` (any ``ViTConfig`` field) applied."""
    if name not in PRESETS:
        raise KeyError(f"unknown ViT preset {name!r}; choose one of {sorted(PRESETS)}")
    fields = {f.name for f in dataclasses.fields(ViTConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise TypeError(f"unknown ViT override(s) {unknown} for preset {name!r}; valid fields: {sorted(fields)}")
    return ViTConfig(**{**PRESETS[name], **overrides})


# ----------------------------------------------------------------------------------------------- layers
def _init_linear(layer: nn.Linear, scheme: str) -> None:
    if scheme == "mae":
        nn.init.xavier_uniform_(layer.weight)
    else:
        nn.init.trunc_normal_(layer.weight, std=0.02)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


class Linear(nn.Linear):
    """``nn.Linear`` initialised by the model's scheme in its own constructor (ZeRO-3 partitions right after)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, init: str = "timm"):
        super().__init__(in_features, out_features, bias)
        _init_linear(self, init)


class LayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` (same parameters and state-dict names) routed through the fused kernel dispatch."""

    def forward(self, x):
        return kernels.layer_norm(x, self.weight, self.bias, self.eps)


class PatchEmbed(nn.Module):
    def __init__(self, img_size: int, patch_size: int, in_chans: int, embed_dim: int, init: str = "timm"):
        super().__init__()
        self.img_size = img_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        if init == "mae":  # MAE treats the patch projection as a linear layer
            nn.init.xavier_uniform_(self.proj.weight.view(embed_dim, -1))

    def forward(self, x):
        if x.shape[-2:] != (self.img_size, self.img_size):
            raise ValueError(
                f"input images are {tuple(x.shape[-2:])} but the model was built for {self.img_size}x{self.img_size}; "
                f"build it with img_size={x.shape[-1]} (position embeddings are resampled on load) or resize the input"
            )
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, init: str = "timm"):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = Linear(dim, dim * 3, bias=qkv_bias, init=init)
        self.proj = Linear(dim, dim, init=init)

    def forward(self, x):
        # softmax scale left at the default head_dim ** -0.5, exactly as timm calls SDPA
        return self.proj(kernels.packed_attention(self.qkv(x), self.num_heads))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden_dim: int, init: str = "timm"):
        super().__init__()
        self.fc1 = Linear(dim, hidden_dim, init=init)
        self.act = nn.GELU()  # exact erf GELU, as timm
        self.fc2 = Linear(hidden_dim, dim, init=init)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class DropPath(nn.Module):
    """Stochastic depth per sample (fine-tuning); identity in eval or at rate 0."""

    def __init__(self, rate: float):
        super().__init__()
        self.rate = rate

    def forward(self, x):
        if self.rate == 0.0 or not self.training:
            return x
        keep = 1.0 - self.rate
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask.div_(keep)


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))`` then ``x + mlp(norm2(x))``."""

    def __init__(self, dim, num_heads, mlp_dim, qkv_bias=True, eps=1e-6, drop_path=0.0, init="timm"):
        super().__init__()
        self.norm1 = LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, init=init)
        self.norm2 = LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, mlp_dim, init=init)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x):
        attn_out = self.drop_path1(self.attn(self.norm1(x)))
        # residual add fused with the second LayerNorm: one pass over the stream instead of two
        x, h = kernels.add_layer_norm(x, attn_out, self.norm2.weight, self.norm2.bias, self.norm2.eps)
        return x + self.drop_path2(self.mlp(h))


# ----------------------------------------------------------------------------------------------- model
class VisionTransformer(nn.Module):
    """timm-compatible ViT: ``patch_embed.proj``, ``cls_token``, ``pos_embed``, ``blocks.N.*``, ``norm``, ``head``."""

    def __init__(self, config: ViTConfig):
        super().__init__()
        self.config = c = config
        self.patch_embed = PatchEmbed(c.img_size, c.patch_size, c.in_chans, c.embed_dim, init=c.init)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + c.num_patches, c.embed_dim))
        rates = torch.linspace(0, c.drop_path_rate, c.depth, device="cpu").tolist()
        self.blocks = nn.Sequential(
            *[
                Block(c.embed_dim, c.num_heads, c.hidden_dim, c.qkv_bias, c.layer_norm_eps, rates[i], c.init)
                for i in range(c.depth)
            ]
        )
        use_fc_norm = c.global_pool == "avg"
        self.norm = nn.Identity() if use_fc_norm else LayerNorm(c.embed_dim, eps=c.layer_norm_eps)
        self.fc_norm = LayerNorm(c.embed_dim, eps=c.layer_norm_eps) if use_fc_norm else nn.Identity()
        self.head = Linear(c.embed_dim, c.num_classes, init="timm") if c.num_classes > 0 else nn.Identity()
        if c.init == "mae":
            nn.init.normal_(self.cls_token, std=0.02)
            with torch.no_grad():
                self.pos_embed.copy_(sincos_2d(c.embed_dim, c.grid_size))
        else:
            nn.init.normal_(self.cls_token, std=1e-6)
            nn.init.trunc_normal_(self.pos_embed, std=0.02)

    @property
    def num_features(self) -> int:
        return self.config.embed_dim

    def no_weight_decay(self) -> set[str]:
        """Parameter names exempt from weight decay beyond biases and norms (timm's convention)."""
        return {"pos_embed", "cls_token"}

    def forward_features(self, x):
        """Tokens after the final norm, ``[batch, 1 + patches, embed_dim]`` (class token first), as timm."""
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        x = self.blocks(x)
        return self.norm(x)

    def forward_head(self, x, pre_logits: bool = False):
        x = x[:, 1:].mean(dim=1) if self.config.global_pool == "avg" else x[:, 0]
        x = self.fc_norm(x)
        return x if pre_logits else self.head(x)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
