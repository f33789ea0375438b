"""Batch-level regularisation of MAE's fine-tuning recipe, on tensors already decoded and normalised.

MAE fine-tunes with (FINETUNE.md of facebookresearch/mae, through timm's Mixup and RandomErasing):

* mixup (Zhang et al. 2018, "mixup: Beyond Empirical Risk Minimization"): ``x = lam x_i + (1 - lam) x_j`` and
  the same mix of the targets, ``lam ~ Beta(alpha, alpha)``; MAE uses alpha 0.8;
* cutmix (Yun et al. 2019, "CutMix"): a box of image ``j`` pasted into image ``i``, the targets mixed by the
  box's area, ``lam ~ Beta(alpha, alpha)``; MAE uses alpha 1.0;
* with both enabled, each batch takes one of them (cutmix with probability ``switch_prob`` = 0.5), and a batch
  is mixed at all with probability ``mixup_prob`` = 1.0; image ``i`` is paired with image ``B - 1 - i`` (the
  batch flipped), one ``lam`` per batch, as timm's ``mode="batch"`` does;
* label smoothing (Szegedy et al. 2016) 0.1, applied to the one-hot targets before mixing (smoothing and mixing
  commute: both are affine maps of rows that sum to one);
* random erasing (Zhong et al. 2020, "Random Erasing Data Augmentation"), probability 0.25, ``mode="pixel"``:
  one rectangle of 2%-33% of the image with aspect ratio in [0.3, 3.3] filled with per-pixel normal noise (the
  images are normalised, so N(0, 1) is "random pixels").

The random draws use torch's global generator; the trainer seeds it per rank and saves it in checkpoints, so a
resumed run draws what an uninterrupted one would have.  Kept out of the data loaders on purpose: DALI and the
PyTorch path hand over the same batches, and these act on them wherever they are (CPU or GPU).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class MixupConfig:
    mixup_alpha: float = 0.0  # 0 disables mixup
    cutmix_alpha: float = 0.0  # 0 disables cutmix
    mixup_prob: float = 1.0  # probability that a batch is mixed at all
    switch_prob: float = 0.5  # with both on: probability of cutmix instead of mixup
    label_smoothing: float = 0.0

    def __post_init__(self):
        if self.mixup_alpha < 0 or self.cutmix_alpha < 0:
            raise ValueError(f"mixup and cutmix alphas must be >= 0 (0 disables), got {self.mixup_alpha}, "
                             f"{self.cutmix_alpha}")
        for name in ("mixup_prob", "switch_prob", "label_smoothing"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")

    @property
    def enabled(self) -> bool:
        return (self.mixup_alpha > 0 or self.cutmix_alpha > 0) and self.mixup_prob > 0


def smooth_targets(targets: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Label smoothing of rows that sum to one (one-hot or normalised multi-hot); all-zero rows (no label) stay
    zero so that the loss still drops them."""
    if not smoothing:
        return targets
    totals = targets.sum(1, keepdim=True)
    smoothed = targets / totals.clamp_min(1e-12) * (1 - smoothing) + smoothing / targets.shape[1]
    return torch.where(totals > 0, smoothed, targets)


def cutmix_box(height: int, width: int, lam: float) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of a box covering about ``1 - lam`` of the image, centred uniformly at random
    and clipped to the image (the CutMix paper's sampling)."""
    cut = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * cut), int(width * cut)
    cy = int(torch.randint(0, height, ()).item())
    cx = int(torch.randint(0, width, ()).item())
    top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
    left, right = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
    return top, bottom, left, right


def mix_batch(images: torch.Tensor, targets: torch.Tensor, cfg: MixupConfig) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(images, soft targets, what was done) for one batch; ``targets`` are one-hot (or normalised) rows.

    Label smoothing applies whether or not the batch is mixed.  Returns new tensors; the inputs are untouched."""
    targets = smooth_targets(targets.float(), cfg.label_smoothing)
    info = {"mix": "none", "lam": 1.0}
    if not cfg.enabled or images.shape[0] < 2 or torch.rand(()).item() >= cfg.mixup_prob:
        return images, targets, info
    use_cutmix = cfg.cutmix_alpha > 0 and (cfg.mixup_alpha == 0 or torch.rand(()).item() < cfg.switch_prob)
    alpha = cfg.cutmix_alpha if use_cutmix else cfg.mixup_alpha
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    partner = images.flip(0)
    if use_cutmix:
        h, w = images.shape[-2:]
        top, bottom, left, right = cutmix_box(h, w, lam)
        images = images.clone()
        images[..., top:bottom, left:right] = partner[..., top:bottom, left:right]
        lam = 1.0 - (bottom - top) * (right - left) / float(h * w)  # the area actually pasted
        info["mix"] = "cutmix"
    else:
        images = images * lam + partner * (1.0 - lam)
        info["mix"] = "mixup"
    info["lam"] = lam
    return images, targets * lam + targets.flip(0) * (1.0 - lam), info


def random_erasing(images: torch.Tensor, prob: float, area=(0.02, 1 / 3), log_ratio=(math.log(0.3), math.log(1 / 0.3)),
                   attempts: int = 10) -> torch.Tensor:
    """Each image, with probability ``prob``, gets one rectangle replaced by N(0, 1) noise (``mode="pixel"``).
    Returns a new tensor when anything was erased."""
    if prob <= 0:
        return images
    if not 0 <= prob <= 1:
        raise ValueError(f"random erasing probability must be in [0, 1], got {prob}")
    out = None
    b, c, h, w = images.shape
    for i in range(b):
        if torch.rand(()).item() >= prob:
            continue
        for _ in range(attempts):
            target = h * w * float(torch.empty(()).uniform_(*area))
            aspect = math.exp(float(torch.empty(()).uniform_(*log_ratio)))
            eh, ew = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
            if 0 < eh < h and 0 < ew < w:
                top = int(torch.randint(0, h - eh + 1, ()).item())
                left = int(torch.randint(0, w - ew + 1, ()).item())
                if out is None:
                    out = images.clone()
                out[i, :, top:top + eh, left:left + ew] = torch.randn(c, eh, ew, dtype=images.dtype).to(images.device)
                break
    return images if out is None else out
