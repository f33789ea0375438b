"""The fine-tuning batch regularisation a run's config asks for (core/augment.py holds the methods)."""

from __future__ import annotations

import torch

from mawstron.core.augment import MixupConfig, mix_batch, random_erasing, smooth_targets


def regularize(images: torch.Tensor, targets: torch.Tensor, cfg) -> tuple[torch.Tensor, torch.Tensor]:
    """Random erasing per image, then mixup or cutmix of the batch (one-hot targets become soft), with label
    smoothing applied to the targets first; the order of timm's pipeline that MAE's fine-tuning uses (erasing is
    a per-image transform, mixing happens on the collated batch).  WSP runs (and fine-tuning without mixup, cutmix
    or erasing) only smooth: with none of them, the full pipeline's result is the smoothed targets too."""
    smoothing = cfg.train.label_smoothing
    if not cfg.finetune.augments:  # RunConfig allows them for train.stage=finetune only; without them, as WSP
        return images, smooth_targets(targets, smoothing)
    ft = cfg.finetune
    images = random_erasing(images, ft.reprob)
    mix = MixupConfig(mixup_alpha=ft.mixup, cutmix_alpha=ft.cutmix, mixup_prob=ft.mixup_prob,
                      switch_prob=ft.mixup_switch_prob, label_smoothing=smoothing)
    images, targets, _ = mix_batch(images, targets, mix)
    return images, targets
