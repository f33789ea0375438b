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



def flash_attention(q, k, v, softmax_scale=None):
    """The Triton FlashAttention-2 kernel on ``[batch, heads, seq, head_dim]`` (forward and backward).

    Always the Triton implementation (CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``); use
    ``attention`` for the dispatching entry.  Imported lazily so that ``import mawstron.kernels`` works
    without Triton.
    """
    from .attention import flash_attention as _flash_attention

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


# The Triton implementations live in submodules named like the ops they implement (``attention``, ``layer_norm``,
# ``mae_loss``).  Importing a submodule makes Python bind it as an attribute of this package, which would replace
# the public function of the same name (``mawstron.kernels.layer_norm`` turning into a module after the first
# Triton call).  This package therefore keeps its public functions: a submodule never overwrites one of them.
# (Reach a submodule with ``from mawstron.kernels.attention import ...`` or ``importlib.import_module``.)
import sys as _sys
import types as _types

_PUBLIC_FUNCTIONS = frozenset(__all__)


class _KernelsPackage(_types.ModuleType):
    def __setattr__(self, name, value):
        if name in _PUBLIC_FUNCTIONS and isinstance(value, _types.ModuleType):
            return
        super().__setattr__(name, value)


_sys.modules[__name__].__class__ = _KernelsPackage
