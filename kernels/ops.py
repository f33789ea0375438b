"""Fused ops as the models see them: one function per op, dispatching between Triton and the reference.

Each ``*_reference`` below is the plain-PyTorch definition of the op: it is what runs on CPU, what the Triton
kernels are tested against, and the numerical contract (it reproduces timm's and MAE's own code step by step,
so a model running on references gives timm's outputs bit for bit).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .dispatch import use_triton


# ----------------------------------------------------------------------------------------------- attention
def attention_reference(q, k, v, softmax_scale=None):
    """Non-causal attention on ``[batch, heads, seq, head_dim]``; same semantics as SDPA without a mask."""
    return F.scaled_dot_product_attention(q, k, v, scale=softmax_scale)


def attention(q, k, v, softmax_scale=None):
    if use_triton(q, k, v):
        from .fused.attention import flash_attention

        return flash_attention(q, k, v, softmax_scale=softmax_scale)
    return attention_reference(q, k, v, softmax_scale)


def packed_attention_reference(qkv, num_heads, softmax_scale=None):
    """Attention straight from a ViT's fused qkv projection.

    ``qkv`` is ``[batch, seq, 3 * width]`` as ``Attention.qkv`` produces it (timm's layout: q, k, v blocks, each
    split into heads); returns ``[batch, seq, width]`` ready for the output projection.
    """
    b, n, three_d = qkv.shape
    head_dim = three_d // (3 * num_heads)
    q, k, v = qkv.reshape(b, n, 3, num_heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    out = attention_reference(q, k, v, softmax_scale)
    return out.transpose(1, 2).reshape(b, n, num_heads * head_dim)


def packed_attention(qkv, num_heads, softmax_scale=None):
    if use_triton(qkv):
        from .fused.attention import flash_attention_packed

        return flash_attention_packed(qkv, num_heads, softmax_scale=softmax_scale)
    return packed_attention_reference(qkv, num_heads, softmax_scale)


# ----------------------------------------------------------------------------------------------- layer norm
def layer_norm_reference(x, weight, bias, eps):
    return F.layer_norm(x, x.shape[-1:], weight, bias, eps)


def layer_norm(x, weight, bias, eps):
    if use_triton(x, weight, bias):
        from .fused.layer_norm import fused_layer_norm

        return fused_layer_norm(x, weight, bias, eps)
    return layer_norm_reference(x, weight, bias, eps)


def add_layer_norm_reference(x, residual, weight, bias, eps):
    """``h = x + residual`` and ``layer_norm(h)``; returns ``(h, normed)`` (pre-norm block: h is the stream)."""
    h = x + residual
    return h, F.layer_norm(h, h.shape[-1:], weight, bias, eps)


def add_layer_norm(x, residual, weight, bias, eps):
    if use_triton(x, residual, weight, bias):
        from .fused.layer_norm import fused_add_layer_norm

        return fused_add_layer_norm(x, residual, weight, bias, eps)
    return add_layer_norm_reference(x, residual, weight, bias, eps)


# ----------------------------------------------------------------------------------------------- MAE masking
def gather_visible_tokens_reference(x, pos_embed, ids_keep):
    """MAE encoder input: ``(x + pos_embed)`` gathered at ``ids_keep``.

    ``x`` ``[batch, patches, width]`` patch tokens; ``pos_embed`` ``[1, patches, width]`` (patch positions only,
    no class token); ``ids_keep`` ``[batch, visible]`` int64.  Returns ``[batch, visible, width]``.
    """
    x = x + pos_embed
    return torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def gather_visible_tokens(x, pos_embed, ids_keep):
    if use_triton(x, pos_embed, ids_keep):
        from .fused.masking import fused_gather_visible_tokens

        return fused_gather_visible_tokens(x, pos_embed, ids_keep)
    return gather_visible_tokens_reference(x, pos_embed, ids_keep)


def unshuffle_with_mask_tokens_reference(x, mask_token, ids_restore, pos_embed):
    """MAE decoder input: append mask tokens, undo the shuffle, add the decoder position embedding.

    ``x`` ``[batch, 1 + visible, width]`` (class token first); ``mask_token`` ``[1, 1, width]``;
    ``ids_restore`` ``[batch, patches]``; ``pos_embed`` ``[1, 1 + patches, width]``.
    Returns ``[batch, 1 + patches, width]``.
    """
    b, n_vis, d = x.shape
    n_patches = ids_restore.shape[1]
    mask_tokens = mask_token.expand(b, n_patches + 1 - n_vis, d)
    patches = torch.cat([x[:, 1:], mask_tokens], dim=1)
    patches = torch.gather(patches, 1, ids_restore.unsqueeze(-1).expand(-1, -1, d))
    return torch.cat([x[:, :1], patches], dim=1) + pos_embed


def unshuffle_with_mask_tokens(x, mask_token, ids_restore, pos_embed):
    if use_triton(x, mask_token, ids_restore, pos_embed):
        from .fused.masking import fused_unshuffle_with_mask_tokens

        return fused_unshuffle_with_mask_tokens(x, mask_token, ids_restore, pos_embed)
    return unshuffle_with_mask_tokens_reference(x, mask_token, ids_restore, pos_embed)


# ----------------------------------------------------------------------------------------------- MAE loss
def mae_loss_reference(pred, target, mask, norm_pix_loss=True, eps=1e-6):
    """MAE's reconstruction loss: mean squared error per patch, averaged over masked patches only.

    ``pred``, ``target`` ``[batch, patches, patch_pixels]``; ``mask`` ``[batch, patches]`` with 1 = masked.
    With ``norm_pix_loss`` each target patch is normalised by its own mean and *unbiased* variance, as the MAE
    reference code does (``Tensor.var`` default).  Computed in float32 whatever the input dtype.
    """
    pred = pred.float()
    target = target.float()
    if norm_pix_loss:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + eps) ** 0.5
    per_patch = ((pred - target) ** 2).mean(dim=-1)
    mask = mask.float()
    return (per_patch * mask).sum() / mask.sum()


def mae_loss(pred, target, mask, norm_pix_loss=True, eps=1e-6):
    if use_triton(pred, target, mask):
        from .fused.mae_loss import fused_mae_loss

        return fused_mae_loss(pred, target, mask, norm_pix_loss=norm_pix_loss, eps=eps)
    return mae_loss_reference(pred, target, mask, norm_pix_loss, eps)
