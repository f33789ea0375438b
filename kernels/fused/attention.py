"""FlashAttention-2 style fused attention (non-causal), forward and backward, in Triton.

Layouts: ``flash_attention`` takes ``[batch, heads, seq, head_dim]`` tensors with any strides;
``flash_attention_packed`` takes a ViT's fused qkv projection ``[batch, seq, 3 * heads * head_dim]`` (timm's
layout) and reads q, k and v through strided views of it (no copies), writes the output directly as
``[batch, seq, heads * head_dim]`` and, in backward, writes ``dqkv`` in the packed layout.

Forward: one program per (query block, batch * head); online softmax over key blocks in float32, the output
normalised once at the end, and the log-sum-exp (base 2, scale folded in) saved per query row.
Backward: a preprocess kernel computes ``delta = rowsum(dO * O)``, then either the ``fused`` schedule (one
program per (batch, head), 5 matmuls, dQ accumulated in float32) or the ``split`` one (dK/dV and dQ kernels,
7 matmuls, more parallel); see kernels/fused/attention_kernels.py.  No atomics, no N x N tensor in memory.

Any sequence length (only the last, partial block is masked); head dim 80 runs as 64 + 16, not padded to 128.
Launch configs: kernels/fused/attention_configs.py (a tuned table over a heuristic).  Inputs fp16/bf16/fp32,
accumulation fp32.  Reference: ``ops.attention_reference`` (SDPA).
"""

from __future__ import annotations

import math

import torch
import triton

from . import attention_configs as configs
from ._common import check_tensor, new_empty
from .attention_kernels import (  # noqa: F401  (re-exported for tests/_compile_kernels.py)
    _attn_bwd_dkdv_kernel,
    _attn_bwd_dq_kernel,
    _attn_bwd_preprocess_kernel,
    _attn_fwd_kernel,
)

LOG2E = 1.4426950408889634

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _strides(t):
    return tuple(t.stride())


def _precision(dtype) -> str:
    # fp32 inputs: true fp32 products (no TF32) so fp32 really means fp32; fp16/bf16 use the tensor cores.
    return "ieee" if dtype == torch.float32 else "tf32"


def _check_qkv(q, k, v):
    check_tensor("q", q, ndim=4, dtypes=_DTYPES)
    check_tensor("k", k, shape=q.shape, dtypes=(q.dtype,), device=q.device)
    check_tensor("v", v, shape=q.shape, dtypes=(q.dtype,), device=q.device)
    if q.shape[-1] > 256:
        raise ValueError(f"q head_dim {q.shape[-1]} > 256 is not supported by the fused attention kernel")


# ----------------------------------------------------------------------------------------------- launchers
_SM_COUNT_DEFAULT = 132  # H100 SXM; used only without CUDA (nothing runs then but the interpreter)


def _capability_and_sms(device):
    if device.type != "cuda":
        return None, _SM_COUNT_DEFAULT
    props = torch.cuda.get_device_properties(device)
    return (props.major, props.minor), props.multi_processor_count


def launch_plan(q_shape, dtype, capability=None, sm_count=_SM_COUNT_DEFAULT) -> dict:
    """Everything the launchers decide for one call: head-dim split, configs per kernel, backward schedule.

    ``capability``: (major, minor) of the GPU, None without one (heuristic configs); tests/_compile_kernels.py
    calls this with (9, 0) to compile exactly what an H100 would run.
    """
    b, h, n, d = q_shape
    cfg = configs.lookup(capability, dtype, n, d)
    d0, d1 = configs.head_dim_split(d)
    head = dict(D0=d0, D1=d1 or 16, HAS_TAIL=d1 > 0, MASK_D0=d0 > d if not d1 else False,
                MASK_D1=d1 > 0 and d0 + d1 > d)
    return dict(cfg=cfg, head=head, mode=configs.backward_mode(cfg, b * h, sm_count), precision=_precision(dtype))


def _split_cfg(part):
    blocks = {k: part[k] for k in ("BLOCK_M", "BLOCK_N")}
    return blocks, dict(num_warps=part["num_warps"], num_stages=part["num_stages"])


def _forward(q, k, v, o, scale):
    """q, k, v, o: [B, H, N, D] views (any strides). Returns the base-2 log-sum-exp, float32 [B*H, N]."""
    b, h, n, d = q.shape
    plan = launch_plan(q.shape, q.dtype, *_capability_and_sms(q.device))
    lse = new_empty((b * h, n), torch.float32, q.device)
    blocks, opts = _split_cfg(plan["cfg"]["fwd"])
    grid = (triton.cdiv(n, blocks["BLOCK_M"]), b * h)
    _attn_fwd_kernel[grid](
        q, k, v, o, lse, *_strides(q), *_strides(k), *_strides(v), *_strides(o),
        h, n, d, scale * LOG2E,
        PRECISION=plan["precision"], **plan["head"], **blocks, **opts,
    )
    return lse


def _backward(q, k, v, o, do, lse, dq, dk, dv, scale):
    b, h, n, d = q.shape
    plan = launch_plan(q.shape, q.dtype, *_capability_and_sms(q.device))
    head, prec = plan["head"], plan["precision"]
    delta = new_empty((b * h, n), torch.float32, q.device)
    pre_m = 64
    _attn_bwd_preprocess_kernel[(triton.cdiv(n, pre_m), b * h)](
        o, do, delta, *_strides(o), *_strides(do), h, n, d,
        BLOCK_M=pre_m, BLOCK_D=max(16, triton.next_power_of_2(d)),
    )
    common = (*_strides(q), *_strides(k), *_strides(v), *_strides(do))
    if plan["mode"] == "fused":
        # float32 dQ rows [B*H, N, D0 (+ D1)], owned by one program each; zeroed, then cast into dq's layout
        width = head["D0"] + (head["D1"] if head["HAS_TAIL"] else 0)
        dq_acc = torch.zeros((b * h, n, width), dtype=torch.float32, device=q.device)
        blocks, opts = _split_cfg(plan["cfg"]["bwd_fused"])
        _attn_bwd_dkdv_kernel[(1, b * h)](
            q, k, v, do, lse, delta, dk, dv, dq_acc, *common, *_strides(dk), *_strides(dv),
            h, n, d, scale, scale * LOG2E, width, FUSE_DQ=True, PRECISION=prec, **head, **blocks, **opts,
        )
        dq.copy_(dq_acc[..., :d].view(b, h, n, d))
        return
    blocks, opts = _split_cfg(plan["cfg"]["bwd_kv"])
    _attn_bwd_dkdv_kernel[(triton.cdiv(n, blocks["BLOCK_N"]), b * h)](
        q, k, v, do, lse, delta, dk, dv, delta, *common, *_strides(dk), *_strides(dv),
        h, n, d, scale, scale * LOG2E, 0, FUSE_DQ=False, PRECISION=prec, **head, **blocks, **opts,
    )
    blocks, opts = _split_cfg(plan["cfg"]["bwd_q"])
    _attn_bwd_dq_kernel[(triton.cdiv(n, blocks["BLOCK_M"]), b * h)](
        q, k, v, do, lse, delta, dq, *common, *_strides(dq),
        h, n, d, scale, scale * LOG2E, PRECISION=prec, **head, **blocks, **opts,
    )


def _scale(softmax_scale, d):
    return float(softmax_scale) if softmax_scale is not None else 1.0 / math.sqrt(d)


class _FlashAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, softmax_scale):
        scale = _scale(softmax_scale, q.shape[-1])
        o = new_empty(q.shape, q.dtype, q.device)
        lse = _forward(q, k, v, o, scale)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.scale = scale
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse = ctx.saved_tensors
        dq = new_empty(q.shape, q.dtype, q.device)
        dk = new_empty(k.shape, k.dtype, k.device)
        dv = new_empty(v.shape, v.dtype, v.device)
        _backward(q, k, v, o, do, lse, dq, dk, dv, ctx.scale)
        return dq, dk, dv, None


def _split_packed(qkv, num_heads):
    """Strided [B, H, N, D] views of q, k, v inside ``qkv [B, N, 3*H*D]`` (no copies)."""
    b, n, three_hd = qkv.shape
    d = three_hd // (3 * num_heads)
    five = qkv.view(b, n, 3, num_heads, d) if qkv.stride(-1) == 1 else qkv.unflatten(-1, (3, num_heads, d))
    return (five[:, :, i].permute(0, 2, 1, 3) for i in range(3))


def _heads_view(x, num_heads):
    """[B, N, H*D] -> strided [B, H, N, D] view."""
    b, n, hd = x.shape
    return x.unflatten(-1, (num_heads, hd // num_heads)).permute(0, 2, 1, 3)


class _FlashAttentionPacked(torch.autograd.Function):
    @staticmethod
    def forward(ctx, qkv, num_heads, softmax_scale):
        b, n, three_hd = qkv.shape
        d = three_hd // (3 * num_heads)
        scale = _scale(softmax_scale, d)
        q, k, v = _split_packed(qkv, num_heads)
        out = new_empty((b, n, num_heads * d), qkv.dtype, qkv.device)
        lse = _forward(q, k, v, _heads_view(out, num_heads), scale)
        ctx.save_for_backward(qkv, out, lse)
        ctx.scale, ctx.num_heads = scale, num_heads
        return out

    @staticmethod
    def backward(ctx, dout):
        qkv, out, lse = ctx.saved_tensors
        h = ctx.num_heads
        q, k, v = _split_packed(qkv, h)
        dqkv = new_empty(qkv.shape, qkv.dtype, qkv.device)
        dq, dk, dv = _split_packed(dqkv, h)
        _backward(q, k, v, _heads_view(out, h), _heads_view(dout, h), lse, dq, dk, dv, ctx.scale)
        return dqkv, None, None


# ----------------------------------------------------------------------------------------------- public API
def flash_attention(q, k, v, softmax_scale=None):
    """Non-causal attention on ``[batch, heads, seq, head_dim]``; same semantics as SDPA without a mask."""
    _check_qkv(q, k, v)
    return _FlashAttention.apply(q, k, v, softmax_scale)


def flash_attention_packed(qkv, num_heads, softmax_scale=None):
    """Attention from timm's fused qkv ``[batch, seq, 3 * heads * head_dim]``.

    Returns ``[batch, seq, heads * head_dim]``; q, k, v are read in place through strides.
    """
    check_tensor("qkv", qkv, ndim=3, dtypes=_DTYPES)
    if num_heads <= 0 or qkv.shape[-1] % (3 * num_heads):
        raise ValueError(f"qkv last dim {qkv.shape[-1]} is not 3 * num_heads ({num_heads}) * head_dim")
    if qkv.shape[-1] // (3 * num_heads) > 256:
        raise ValueError("qkv head_dim > 256 is not supported by the fused attention kernel")
    return _FlashAttentionPacked.apply(qkv, num_heads, softmax_scale)
