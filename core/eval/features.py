"""Frozen features of a ViT over an evaluation loader."""

from __future__ import annotations

import torch

from ..vit import VisionTransformer

POOLS = ("token", "avg")


@torch.no_grad()
def extract_features(model: VisionTransformer, batches, pool: str = "token", device: str | torch.device = "cpu",
                     dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """``(features [N, D] float32 on CPU, labels [N] int64)`` over ``batches`` of ``{"images", "labels"}``.

    ``pool="token"``: the class token after the final norm (what MAWS and timm classifiers use);
    ``pool="avg"``: the mean of the patch tokens after the final norm (often better for MAE encoders, whose
    class token is not trained by a classification loss).
    """
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
    was_training = model.training
    model.eval()
    feats, labels = [], []
    try:
        for batch in batches:
            tokens = model.forward_features(batch["images"].to(device=device, dtype=dtype))
            pooled = tokens[:, 0] if pool == "token" else tokens[:, 1:].mean(1)
            feats.append(pooled.float().cpu())
            labels.append(batch["labels"].long().cpu())
    finally:
        model.train(was_training)
    if not feats:
        raise ValueError("the evaluation loader yielded no batches: check the evaluation split path")
    return torch.cat(feats), torch.cat(labels)
