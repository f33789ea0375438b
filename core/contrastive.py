"""The CLIP contrastive loss over the global batch, computed as a per-rank "local loss".

Each rank holds ``B`` image/text pairs.  Features of every rank are all-gathered *with autograd*
(``all_gather_single_autograd``, a functional collective: its backward reduce-scatters, summing every rank's
gradient for a slot onto the rank that owns it), and each rank scores only its own rows against all ``W * B`` columns: ``B x WB`` logits
instead of ``WB x WB`` (open_clip's ``local_loss`` + ``gather_with_grad``).

Why this gives exactly the single-process gradient: rank ``r``'s loss ``L_r`` is the mean cross-entropy of its
rows, so the global loss is ``L = mean_r L_r``.  The gather's backward delivers ``d(sum_s L_s)/dF_r = W dL/dF_r``
to rank ``r``'s features, and data-parallel training averages parameter gradients over the ``W`` ranks, which
gives ``dL/dtheta``.

This lives in ``core`` because it is the model's loss; it uses only the functional collective, on a process
group the caller passes (``None``: one process, nothing is communicated), never DeepSpeed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def gather_with_grad(x: torch.Tensor, group=None) -> tuple[torch.Tensor, int]:
    """``(cat of every rank's x along dim 0, this rank's index)``; gradients flow back to every rank's part."""
    if group is None:
        return x, 0
    import torch.distributed as dist
    from torch.distributed._functional_collectives import all_gather_single_autograd

    gathered = all_gather_single_autograd(x.contiguous(), 0, group)  # backward: reduce-scatter (sum)
    return gathered, dist.get_rank(group)


def clip_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
              group=None) -> torch.Tensor:
    """Symmetric InfoNCE of this rank's pairs against the global batch (see the module docstring).

    ``image_features``/``text_features``: ``[B, D]``, L2-normalised, row ``i`` a matching pair; every rank must
    pass the same ``B``.  ``logit_scale``: the multiplier (already exponentiated).  Computed in float32.
    """
    if image_features.shape != text_features.shape:
        raise ValueError(f"image {tuple(image_features.shape)} and text {tuple(text_features.shape)} features must "
                         f"have the same shape")
    image_features, text_features = image_features.float(), text_features.float()
    all_images, rank = gather_with_grad(image_features, group)
    all_texts, _ = gather_with_grad(text_features, group)
    scale = logit_scale.float()
    logits_per_image = scale * image_features @ all_texts.t()
    logits_per_text = scale * text_features @ all_images.t()
    local = image_features.shape[0]
    labels = torch.arange(local, device=image_features.device) + rank * local
    return 0.5 * (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels))
