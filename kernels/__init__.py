"""Fused ops for ViT training: attention, MAE masking, MAE loss, LayerNorm.

Models call the functions exported here; ``dispatch`` picks the Triton kernel on CUDA tensors and the
plain-PyTorch reference elsewhere (``MAWSTRON_KERNELS=auto|reference|triton`` overrides).  Kernels know nothing
of models: every op is defined on plain tensors.
"""

from .dispatch import BACKENDS, requested_backend, triton_available, use_triton
from .ops import (
    add_layer_norm,
    attention,
    gather_visible_tokens,
    layer_norm,
    mae_loss,
    packed_attention,
    unshuffle_with_mask_tokens,
)

__all__ = [
    "BACKENDS",
    "requested_backend",
    "triton_available",
    "use_triton",
    "add_layer_norm",
    "attention",
    "gather_visible_tokens",
    "layer_norm",
    "mae_loss",
    "packed_attention",
    "unshuffle_with_mask_tokens",
]
