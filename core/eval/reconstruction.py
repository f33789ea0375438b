"""The picture every MAE paper shows: each image, what the encoder saw (masked patches greyed out), and the
decoder's reconstruction (visible patches as given, masked patches as predicted; MAE's demo shows the same).

With ``norm_pix_loss`` the decoder predicts each patch normalised by its own mean and variance; those are taken
from the original patch to draw it, as MAE's paper figures do, so only the patch's structure is the model's.
"""

from __future__ import annotations

import numpy as np
import torch

from ..data.loader import IMAGENET_MEAN, IMAGENET_STD
from ..mae import MaskedAutoencoder, patchify, unpatchify


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """Normalised ``[B, 3, H, W]`` -> ``[B, H, W, 3]`` uint8."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    pixels = (images.float().cpu() * std + mean).clamp(0, 1)
    return (pixels.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)


@torch.no_grad()
def reconstruct(model: MaskedAutoencoder, images: torch.Tensor, seed: int = 0) -> dict[str, torch.Tensor]:
    """``{"original", "masked", "reconstruction"}`` normalised images and the ``mask`` [B, L] (1 = hidden)."""
    model.eval()
    noise = torch.rand(images.shape[0], model.config.num_patches, generator=torch.Generator().manual_seed(seed))
    _, pred, mask = model(images, noise=noise.to(images.device))
    p = model.config.patch_size
    target = patchify(images, p)
    if model.mae_config.norm_pix_loss:
        mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
        pred = pred * (var + 1e-6).sqrt() + mean
    hidden = mask.unsqueeze(-1).to(pred.dtype)
    grey = torch.zeros_like(target)  # 0 in normalised space: the dataset's mean colour
    return {
        "original": images,
        "masked": unpatchify(target * (1 - hidden) + grey * hidden, p),
        "reconstruction": unpatchify(target * (1 - hidden) + pred * hidden, p),
        "mask": mask,
    }


def reconstruction_grid(parts: dict[str, torch.Tensor], gap: int = 2) -> np.ndarray:
    """One row per image, columns original / masked / reconstruction, ``gap`` white pixels between tiles:
    ``[rows * (H + gap) - gap, 3 * (W + gap) - gap, 3]`` uint8."""
    columns = [to_uint8(parts[k]) for k in ("original", "masked", "reconstruction")]
    b, h, w, _ = columns[0].shape
    grid = np.full((b * (h + gap) - gap, 3 * (w + gap) - gap, 3), 255, dtype=np.uint8)
    for row in range(b):
        for col, tiles in enumerate(columns):
            grid[row * (h + gap):row * (h + gap) + h, col * (w + gap):col * (w + gap) + w] = tiles[row]
    return grid
