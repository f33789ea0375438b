"""FlashAttention-2 style fused attention (non-causal), forward and backward, in Triton.

Layouts: ``flash_attention`` takes ``[batch, heads, seq, head_dim]`` tensors with any strides;
``flash_attention_packed`` takes a ViT's fused qkv projection ``[batch, seq, 3 * heads * head_dim]`` (timm's
layout) and reads q, k and v through strided views of it (no copies), writes the output directly as
``[batch, seq, heads * head_dim]`` and, in backward, writes ``dqkv`` in the packed layout.

Forward: one program per (query block, batch * head); online softmax over key blocks in float32, the output
normalised once at the end, and the log-sum-exp (base 2, scale folded in) saved per query row.
Backward: a preprocess kernel computes ``delta = rowsum(dO * O)``; a dK/dV kernel (one program per key block)
loops over query blocks; a dQ kernel (one program per query block) loops over key blocks.  No atomics, no
N x N tensor in memory.

The sequence dimension is masked (any length); the head dim is padded to the next power of two and masked
(80 -> 128).  Inputs fp16/bf16/fp32, accumulation fp32.  Reference: ``ops.attention_reference`` (SDPA).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ._common import check_tensor, interpreting, new_empty

LOG2E = 1.4426950408889634

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


# ----------------------------------------------------------------------------------------------- kernels
@triton.jit
def _attn_fwd_kernel(
    Q, K, V, O, LSE,
    sqb, sqh, sqn, sqd,
    skb, skh, skn, skd,
    svb, svh, svn, svd,
    sob, soh, son, sod,
    H, N, D,
    qk_scale,  # softmax_scale * log2(e)
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)  # 64-bit offsets: batch * batch_stride can pass 2^31
    h = pid_bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    mask_m = offs_m < N
    mask_d = offs_d < D

    q_ptrs = Q + b * sqb + h * sqh + offs_m[:, None] * sqn + offs_d[None, :] * sqd
    q = tl.load(q_ptrs, mask=mask_m[:, None] & mask_d[None, :], other=0.0)
    k_base = K + b * skb + h * skh
    v_base = V + b * svb + h * svh

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for start_n in range(0, N, BLOCK_N):
        cols = start_n + offs_n
        mask_n = cols < N
        # K loaded transposed: [BLOCK_D, BLOCK_N]
        kt = tl.load(k_base + cols[None, :] * skn + offs_d[:, None] * skd,
                     mask=mask_n[None, :] & mask_d[:, None], other=0.0)
        s = tl.dot(q, kt, input_precision=PRECISION) * qk_scale
        s = tl.where(mask_n[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.exp2(s - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_base + cols[:, None] * svn + offs_d[None, :] * svd,
                    mask=mask_n[:, None] & mask_d[None, :], other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new
    acc = acc / l_i[:, None]
    o_ptrs = O + b * sob + h * soh + offs_m[:, None] * son + offs_d[None, :] * sod
    tl.store(o_ptrs, acc.to(O.dtype.element_ty), mask=mask_m[:, None] & mask_d[None, :])
    tl.store(LSE + pid_bh * N + offs_m, m_i + tl.log2(l_i), mask=mask_m)


@triton.jit
def _attn_bwd_preprocess_kernel(
    O, DO, DELTA,
    sob, soh, son, sod,
    sdb, sdh, sdn, sdd,
    H, N, D,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)  # 64-bit offsets: batch * batch_stride can pass 2^31
    h = pid_bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (offs_m[:, None] < N) & (offs_d[None, :] < D)
    o = tl.load(O + b * sob + h * soh + offs_m[:, None] * son + offs_d[None, :] * sod, mask=mask, other=0.0)
    do = tl.load(DO + b * sdb + h * sdh + offs_m[:, None] * sdn + offs_d[None, :] * sdd, mask=mask, other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(DELTA + pid_bh * N + offs_m, delta, mask=offs_m < N)


@triton.jit
def _attn_bwd_dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, DK, DV,
    sqb, sqh, sqn, sqd,
    skb, skh, skn, skd,
    svb, svh, svn, svd,
    sdb, sdh, sdn, sdd,
    sdkb, sdkh, sdkn, sdkd,
    sdvb, sdvh, sdvn, sdvd,
    H, N, D,
    sm_scale, qk_scale,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)  # 64-bit offsets: batch * batch_stride can pass 2^31
    h = pid_bh % H
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask_n = offs_n < N
    mask_d = offs_d < D
    mask_nd = mask_n[:, None] & mask_d[None, :]

    k = tl.load(K + b * skb + h * skh + offs_n[:, None] * skn + offs_d[None, :] * skd, mask=mask_nd, other=0.0)
    v = tl.load(V + b * svb + h * svh + offs_n[:, None] * svn + offs_d[None, :] * svd, mask=mask_nd, other=0.0)
    q_base = Q + b * sqb + h * sqh
    do_base = DO + b * sdb + h * sdh
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    for start_m in range(0, N, BLOCK_M):
        rows = start_m + offs_m
        mask_m = rows < N
        mask_md = mask_m[:, None] & mask_d[None, :]
        q = tl.load(q_base + rows[:, None] * sqn + offs_d[None, :] * sqd, mask=mask_md, other=0.0)
        do = tl.load(do_base + rows[:, None] * sdn + offs_d[None, :] * sdd, mask=mask_md, other=0.0)
        lse = tl.load(LSE + pid_bh * N + rows, mask=mask_m, other=0.0)
        delta = tl.load(DELTA + pid_bh * N + rows, mask=mask_m, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale  # [M, N]
        p = tl.exp2(s - lse[:, None])
        p = tl.where(mask_m[:, None] & mask_n[None, :], p, 0.0)
        dv += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=PRECISION)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PRECISION)
    dk = dk * sm_scale
    tl.store(DK + b * sdkb + h * sdkh + offs_n[:, None] * sdkn + offs_d[None, :] * sdkd,
             dk.to(DK.dtype.element_ty), mask=mask_nd)
    tl.store(DV + b * sdvb + h * sdvh + offs_n[:, None] * sdvn + offs_d[None, :] * sdvd,
             dv.to(DV.dtype.element_ty), mask=mask_nd)


@triton.jit
def _attn_bwd_dq_kernel(
    Q, K, V, DO, LSE, DELTA, DQ,
    sqb, sqh, sqn, sqd,
    skb, skh, skn, skd,
    svb, svh, svn, svd,
    sdb, sdh, sdn, sdd,
    sdqb, sdqh, sdqn, sdqd,
    H, N, D,
    sm_scale, qk_scale,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)  # 64-bit offsets: batch * batch_stride can pass 2^31
    h = pid_bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    mask_m = offs_m < N
    mask_d = offs_d < D
    mask_md = mask_m[:, None] & mask_d[None, :]

    q = tl.load(Q + b * sqb + h * sqh + offs_m[:, None] * sqn + offs_d[None, :] * sqd, mask=mask_md, other=0.0)
    do = tl.load(DO + b * sdb + h * sdh + offs_m[:, None] * sdn + offs_d[None, :] * sdd, mask=mask_md, other=0.0)
    lse = tl.load(LSE + pid_bh * N + offs_m, mask=mask_m, other=0.0)
    delta = tl.load(DELTA + pid_bh * N + offs_m, mask=mask_m, other=0.0)
    k_base = K + b * skb + h * skh
    v_base = V + b * svb + h * svh
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for start_n in range(0, N, BLOCK_N):
        cols = start_n + offs_n
        mask_n = cols < N
        mask_nd = mask_n[:, None] & mask_d[None, :]
        k = tl.load(k_base + cols[:, None] * skn + offs_d[None, :] * skd, mask=mask_nd, other=0.0)
        v = tl.load(v_base + cols[:, None] * svn + offs_d[None, :] * svd, mask=mask_nd, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
        p = tl.exp2(s - lse[:, None])
        p = tl.where(mask_m[:, None] & mask_n[None, :], p, 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)
    dq = dq * sm_scale
    tl.store(DQ + b * sdqb + h * sdqh + offs_m[:, None] * sdqn + offs_d[None, :] * sdqd,
             dq.to(DQ.dtype.element_ty), mask=mask_md)


# ----------------------------------------------------------------------------------------------- launch configs
def _fwd_config(n: int, block_d: int) -> dict:
    """Block sizes for the forward kernel, keyed on (seq, padded head dim).

    Interpreter: 64 x 64 blocks (measured faster than 128 x 128 there).  GPU: 128-row query blocks once the sequence
    fills them, narrower key blocks for wide heads to keep registers in check.  A heuristic, not yet tuned on
    hardware (no GPU was available when it was written).
    """
    if interpreting():
        return dict(BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=1)
    block_m = 64 if n <= 128 else 128
    block_n = 64 if block_d <= 64 else 32
    num_warps = 4 if block_d <= 64 and block_m == 64 else 8
    return dict(BLOCK_M=block_m, BLOCK_N=block_n, num_warps=num_warps, num_stages=2 if block_d > 64 else 3)


def _bwd_config(n: int, block_d: int) -> dict:
    if interpreting():
        return dict(BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=1)
    if block_d <= 64:
        return dict(BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=2)
    return dict(BLOCK_M=32, BLOCK_N=64, num_warps=8, num_stages=1)


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
def _forward(q, k, v, o, scale):
    """q, k, v, o: [B, H, N, D] views (any strides). Returns the base-2 log-sum-exp, float32 [B*H, N]."""
    b, h, n, d = q.shape
    block_d = max(16, triton.next_power_of_2(d))
    lse = new_empty((b * h, n), torch.float32, q.device)
    cfg = _fwd_config(n, block_d)
    grid = (triton.cdiv(n, cfg["BLOCK_M"]), b * h)
    _attn_fwd_kernel[grid](
        q, k, v, o, lse, *_strides(q), *_strides(k), *_strides(v), *_strides(o),
        h, n, d, scale * LOG2E,
        BLOCK_D=block_d, PRECISION=_precision(q.dtype), **cfg,
    )
    return lse


def _backward(q, k, v, o, do, lse, dq, dk, dv, scale):
    b, h, n, d = q.shape
    block_d = max(16, triton.next_power_of_2(d))
    delta = new_empty((b * h, n), torch.float32, q.device)
    pre_m = 64
    _attn_bwd_preprocess_kernel[(triton.cdiv(n, pre_m), b * h)](
        o, do, delta, *_strides(o), *_strides(do), h, n, d, BLOCK_M=pre_m, BLOCK_D=block_d
    )
    cfg = _bwd_config(n, block_d)
    prec = _precision(q.dtype)
    common = (*_strides(q), *_strides(k), *_strides(v), *_strides(do))
    _attn_bwd_dkdv_kernel[(triton.cdiv(n, cfg["BLOCK_N"]), b * h)](
        q, k, v, do, lse, delta, dk, dv, *common, *_strides(dk), *_strides(dv),
        h, n, d, scale, scale * LOG2E, BLOCK_D=block_d, PRECISION=prec, **cfg,
    )
    _attn_bwd_dq_kernel[(triton.cdiv(n, cfg["BLOCK_M"]), b * h)](
        q, k, v, do, lse, delta, dq, *common, *_strides(dq),
        h, n, d, scale, scale * LOG2E, BLOCK_D=block_d, PRECISION=prec, **cfg,
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
