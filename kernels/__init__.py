"""Fused ops for ViT training: attention, MAE masking, MAE loss, LayerNorm.

Models call the functions exported here; ``dispatch`` picks the Triton kernel on CUDA tensors and the
plain-PyTorch reference elsewhere (``MAWSTRON_KERNELS=auto|reference|triton`` overrides).  Kernels know nothing
of models: every op is defined on plain tensors.

Layout: ``kernels/ops.py`` (one dispatching function and its plain-PyTorch reference per op),
``kernels/dispatch.py`` (the backend rule), ``kernels/fused/`` (the Triton implementations, one file per op;
named apart from the public functions, so no submodule ever shadows one of them).
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


def flash_attention(q, k, v, softmax_scale=None):
    """The Triton FlashAttention-2 kernel on ``[batch, heads, seq, head_dim]`` (forward and backward).

    Always the Triton implementation (CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``); use
    ``attention`` for the dispatching entry.  Imported lazily so that ``import mawstron.kernels`` works
    without Triton.
    """
    from .fused.attention import flash_attention as _flash_attention

    return _flash_attention(q, k, v, softmax_scale=softmax_scale)


__all__ = [
    "flash_attention",
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

