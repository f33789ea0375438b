"""Frozen features of a ViT over an evaluation loader, on the CPU or a GPU (bf16 autocast by default there)."""

from __future__ import annotations

import contextlib

import torch

from ..vit import VisionTransformer

POOLS = ("token", "avg")
PRECISIONS = ("auto", "fp32", "bf16")


def autocast_for(device: torch.device | str, precision: str = "auto"):
    """The context features are computed under: bf16 autocast on a GPU for ``auto`` / ``bf16``, bf16 autocast on
    the CPU only when asked (``bf16``), fp32 otherwise."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    device = torch.device(device)
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def extract_features(model: VisionTransformer, batches, pool: str = "token", device: str | torch.device = "cpu",
                     dtype: torch.dtype | None = None, precision: str = "fp32",
                     on_batch=None, encode=None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(features [N, D] float32 on CPU, labels [N] int64)`` over ``batches`` of ``{"images", "labels"}``.

    ``pool="token"``: the class token after the final norm (what MAWS and timm classifiers use);
    ``pool="avg"``: the mean of the patch tokens after the final norm (often better for MAE encoders, whose
    class token is not trained by a classification loss).  The model must already be on ``device``; images are
    moved there in the model's parameter dtype (or ``dtype``), and ``precision`` picks the autocast
    (:func:`autocast_for`).  ``on_batch(images_done)`` is called after each batch (progress).  ``encode(images)``
    replaces the pooled ViT features (e.g. a CLIP model's ``encode_images``).
    """
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
    device = torch.device(device)
    if dtype is None:
        dtype = next(model.parameters()).dtype
    was_training = model.training
    model.eval()
    feats, labels = [], []
    done = 0
    try:
        for batch in batches:
            with autocast_for(device, precision):
                images = batch["images"].to(device=device, dtype=dtype, non_blocking=True)
                if encode is not None:
                    pooled = encode(images)
                else:
                    tokens = model.forward_features(images)
                    pooled = tokens[:, 0] if pool == "token" else tokens[:, 1:].float().mean(1)
            feats.append(pooled.float().cpu())
            labels.append(batch["labels"].long().cpu())
            done += len(labels[-1])
            if on_batch is not None:
                on_batch(done)
    finally:
        model.train(was_training)
    if not feats:
        raise ValueError("the evaluation loader yielded no batches: check the evaluation split path")
    return torch.cat(feats), torch.cat(labels)
