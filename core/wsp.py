"""Weakly-supervised pretraining (WSP): hashtags as noisy multi-labels, softmax cross-entropy.

The WSP model is the ViT with a linear ``head`` over the hashtag vocabulary (tens of thousands of classes in the
paper), so its state dict is a plain timm classifier.  Targets are multi-hot vectors normalised to sum to one
(Mahajan et al. 2018 and SWAG: softmax over hashtags beats per-class sigmoids); an image with no hashtag in the
vocabulary carries no signal and is dropped from the loss rather than counted as a zero target.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .vit import VisionTransformer, vit_config


def create_wsp(name: str, num_classes: int, **overrides) -> VisionTransformer:
    """ViT preset ``name`` with a ``num_classes``-way hashtag head."""
    if num_classes <= 0:
        raise ValueError(f"a WSP model needs a hashtag vocabulary: num_classes must be > 0, got {num_classes}")
    return VisionTransformer(vit_config(name, num_classes=num_classes, **overrides))


def multi_hot(labels: torch.Tensor | Sequence[Sequence[int]], num_classes: int, device=None) -> torch.Tensor:
    """Multi-hot ``[batch, num_classes]`` float targets from per-image label indices.

    ``labels`` is either a list of index lists or a padded ``[batch, max_tags]`` integer tensor with ``-1`` as
    padding.  Repeated indices count once; an index outside ``[0, num_classes)`` is an error.
    """
    if not torch.is_tensor(labels):
        width = max((len(x) for x in labels), default=0)
        padded = torch.full((len(labels), max(width, 1)), -1, dtype=torch.long)
        for i, tags in enumerate(labels):
            if len(tags):
                padded[i, : len(tags)] = torch.as_tensor(list(tags), dtype=torch.long)
        labels = padded
    labels = labels.to(device=device if device is not None else labels.device, dtype=torch.long)
    if labels.numel() and (labels.max() >= num_classes or labels.min() < -1):
        raise ValueError(f"label indices must be in [0, {num_classes}) or -1 for padding, got {labels.min()}..{labels.max()}")
    target = torch.zeros(labels.shape[0], num_classes + 1, device=labels.device)  # column num_classes eats padding
    target.scatter_(1, torch.where(labels < 0, num_classes, labels), 1.0)
    return target[:, :num_classes]


def wsp_loss(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax cross-entropy against multi-hot ``targets`` normalised to sum to one per image.

    Returns ``(loss, num_labelled)``: the mean over images with at least one label, and how many there were.
    With no labelled image the loss is a zero that still carries the graph (every rank must call backward).
    Computed in float32.
    """
    if logits.shape != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} must have the same shape")
    targets = targets.float()
    tags_per_image = targets.sum(dim=1)
    labelled = tags_per_image > 0
    num_labelled = labelled.sum()
    log_probs = F.log_softmax(logits.float(), dim=1)
    per_image = -(targets * log_probs).sum(dim=1) / tags_per_image.clamp_min(1.0)
    loss = (per_image * labelled).sum() / num_labelled.clamp_min(1)
    return loss, num_labelled
