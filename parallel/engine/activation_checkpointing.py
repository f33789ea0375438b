"""Activation checkpointing per transformer block, applied from outside the model.

The selected blocks' ``forward`` is replaced *on the instance* by a checkpointed call of the original method.
Nothing is wrapped, so the module tree and therefore the state-dict names (timm's ``blocks.N...``) are exactly
those of the plain model; a checkpointed model saves and loads like an unwrapped one.  Under ZeRO-3 the
submodules' gather/release hooks run again during recomputation, which is what DeepSpeed expects.
"""

from __future__ import annotations

import functools

import torch
from torch.utils.checkpoint import checkpoint


def _checkpointed(forward, *args, **kwargs):
    if not torch.is_grad_enabled():  # eval / no_grad: nothing to save, nothing to recompute
        return forward(*args, **kwargs)
    return checkpoint(forward, *args, use_reentrant=False, **kwargs)


def apply_activation_checkpointing(model: torch.nn.Module, every: int) -> int:
    """Checkpoint every ``every``-th transformer block (1: all, 0: none); returns how many were wrapped.

    Counting restarts in the decoder, so ``every=2`` checkpoints blocks 0, 2, 4, ... of each stack.
    """
    if every <= 0:
        return 0
    wrapped = 0
    stacks = [list(model.blocks), list(getattr(model, "decoder_blocks", []))]
    for stack in stacks:
        for i, block in enumerate(stack):
            if i % every == 0 and not getattr(block, "_mawstron_checkpointed", False):
                block.forward = functools.partial(_checkpointed, block.forward)
                block._mawstron_checkpointed = True
                wrapped += 1
    return wrapped
