"""AdamW parameter groups (weight decay, layer-wise lr decay) and the warmup + cosine schedule."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # type hints only: config.py -> stages -> this module
    from ..config import OptimConfig


def layer_id(name: str, depth: int) -> int:
    """Depth of parameter ``name`` for layer-wise lr decay: embeddings 0, ``blocks.i`` i + 1, the rest depth + 1
    (final norm, head, MAE decoder), as in BEiT / MAE fine-tuning."""
    if name in ("cls_token", "pos_embed", "mask_token") or name.startswith("patch_embed"):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return depth + 1


def param_groups(model: torch.nn.Module, cfg: OptimConfig, depth: int) -> list[dict]:
    """Groups of trainable parameters keyed by (weight decay, lr scale).

    No weight decay on biases, norm weights (every parameter with fewer than 2 dims) and on the names the model
    lists in ``no_weight_decay()`` (position embeddings, class and mask tokens).  Each group carries
    ``lr_scale``; ``set_lr`` multiplies the scheduled lr by it.
    """
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    groups: dict[tuple, dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        # ZeRO-3 partitions parameters in place: ds_shape is the real shape, the local stub is 1-D
        shape = getattr(param, "ds_shape", param.shape)
        no_decay = len(shape) < 2 or name in skip or name.endswith(".bias")
        wd = 0.0 if no_decay else cfg.weight_decay
        scale = cfg.layer_decay ** (depth + 1 - layer_id(name, depth)) if cfg.layer_decay < 1.0 else 1.0
        group = groups.setdefault((wd, scale), {"params": [], "names": [], "weight_decay": wd, "lr_scale": scale})
        group["params"].append(param)
        group["names"].append(name)
    return list(groups.values())


def build_optimizer(groups: list[dict], cfg: OptimConfig, use_fused: bool) -> torch.optim.Optimizer:
    """AdamW over ``groups``.  ``use_fused`` picks torch's fused CUDA implementation."""
    clean = [{k: v for k, v in g.items() if k != "names"} for g in groups]
    kwargs = dict(lr=0.0, betas=tuple(cfg.betas), eps=cfg.eps)
    if use_fused:
        kwargs["fused"] = True
    return torch.optim.AdamW(clean, **kwargs)


def lr_at(step: int, total_steps: int, peak_lr: float, warmup_steps: int, min_lr: float) -> float:
    """Linear warmup for ``warmup_steps`` then half-cosine to ``min_lr`` at ``total_steps`` (MAE, SWAG).

    ``step`` counts optimizer steps from 0; a pure function of the step, so resuming needs no scheduler state.
    """
    if warmup_steps and step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    span = max(total_steps - warmup_steps, 1)
    progress = min(max(step - warmup_steps, 0) / span, 1.0)
    return min_lr + (peak_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
