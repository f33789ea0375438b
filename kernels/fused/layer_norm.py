"""Fused LayerNorm and residual-add + LayerNorm (apex ``FusedLayerNorm`` style), forward and backward, in Triton.

Rows of width ``N`` (any width: the row block is ``next_power_of_2(N)`` with masks).  Statistics in float32,
biased variance and ``eps`` as ``F.layer_norm``.  Forward saves per-row ``mean`` and ``rstd``; backward computes
``dx`` per row and per-program partial sums of ``dweight``/``dbias`` (summed by a tiny reduction afterwards, so
no atomics and a deterministic result).

``fused_add_layer_norm(x, residual, ...)`` returns ``(h, normed)`` with ``h = x + residual`` (rounded to the
input dtype, exactly as the reference computes it) and ``normed = layer_norm(h)``; its backward adds the
gradient flowing into ``h`` directly to the LayerNorm input gradient.  Reference: ``ops.layer_norm_reference``
and ``ops.add_layer_norm_reference``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import check_tensor, interpreting, new_empty

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@triton.jit
def _ln_fwd_kernel(
    X, R, H, Y, W, B, MEAN, RSTD,
    sx, sr, sh, sy,
    N, eps,
    HAS_RESIDUAL: tl.constexpr, BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)  # 64-bit: row * stride passes 2^31 beyond ~2M rows of width 1024
    cols = tl.arange(0, BLOCK)
    mask = cols < N
    x = tl.load(X + row * sx + cols, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        r = tl.load(R + row * sr + cols, mask=mask, other=0.0)
        h = (x.to(tl.float32) + r.to(tl.float32)).to(H.dtype.element_ty)
        tl.store(H + row * sh + cols, h, mask=mask)
        x = h
    x = x.to(tl.float32)
    mean = tl.sum(x, 0) / N
    xc = tl.where(mask, x - mean, 0.0)
    var = tl.sum(xc * xc, 0) / N
    rstd = 1.0 / tl.sqrt(var + eps)
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(B + cols, mask=mask, other=0.0).to(tl.float32)
    y = xc * rstd * w + b
    tl.store(Y + row * sy + cols, y.to(Y.dtype.element_ty), mask=mask)
    tl.store(MEAN + row, mean)
    tl.store(RSTD + row, rstd)


@triton.jit
def _ln_bwd_kernel(
    X, DY, DH, DX, W, MEAN, RSTD, DW_PART, DB_PART,
    sx, sdy, sdh, sdx,
    M, N, ROWS_PER_PROGRAM,
    HAS_DH: tl.constexpr, BLOCK: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)  # 64-bit row offsets (row * stride can pass 2^31)
    cols = tl.arange(0, BLOCK)
    mask = cols < N
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    dw = tl.zeros([BLOCK], dtype=tl.float32)
    db = tl.zeros([BLOCK], dtype=tl.float32)
    row_start = pid * ROWS_PER_PROGRAM
    for i in range(0, ROWS_PER_PROGRAM):
        row = row_start + i
        if row < M:
            x = tl.load(X + row * sx + cols, mask=mask, other=0.0).to(tl.float32)
            dy = tl.load(DY + row * sdy + cols, mask=mask, other=0.0).to(tl.float32)
            mean = tl.load(MEAN + row)
            rstd = tl.load(RSTD + row)
            xhat = tl.where(mask, (x - mean) * rstd, 0.0)
            wdy = w * dy
            c1 = tl.sum(xhat * wdy, 0) / N
            c2 = tl.sum(wdy, 0) / N
            dx = (wdy - (xhat * c1 + c2)) * rstd
            if HAS_DH:
                dx += tl.load(DH + row * sdh + cols, mask=mask, other=0.0).to(tl.float32)
            tl.store(DX + row * sdx + cols, dx.to(DX.dtype.element_ty), mask=mask)
            dw += dy * xhat
            db += dy
    tl.store(DW_PART + pid * N + cols, dw, mask=mask)
    tl.store(DB_PART + pid * N + cols, db, mask=mask)


def _rows(t, n):
    t2 = t.reshape(-1, n)
    return t2 if t2.stride(-1) == 1 else t2.contiguous()


def _num_warps(block):
    return min(max(block // 256, 1), 16)


def _forward(x, residual, weight, bias, eps):
    n = x.shape[-1]
    x2 = _rows(x, n)
    m = x2.shape[0]
    block = triton.next_power_of_2(n)
    y = new_empty((m, n), x.dtype, x.device)
    h = new_empty((m, n), x.dtype, x.device) if residual is not None else None
    r2 = _rows(residual, n) if residual is not None else None
    mean = new_empty((m,), torch.float32, x.device)
    rstd = new_empty((m,), torch.float32, x.device)
    _ln_fwd_kernel[(m,)](
        x2, r2 if r2 is not None else x2, h if h is not None else y, y, weight, bias, mean, rstd,
        x2.stride(0), r2.stride(0) if r2 is not None else 0, h.stride(0) if h is not None else 0, y.stride(0),
        n, eps, HAS_RESIDUAL=residual is not None, BLOCK=block, num_warps=_num_warps(block),
    )
    return y, h, mean, rstd


def _backward(xin, dy, dh, weight, mean, rstd):
    """xin: the LayerNorm input as [M, N]; dy: grad of the normalised output; dh: extra grad into xin or None."""
    m, n = xin.shape
    block = triton.next_power_of_2(n)
    dy2 = _rows(dy, n)
    dh2 = _rows(dh, n) if dh is not None else None
    if interpreting():
        programs = min(m, 4)
    else:
        programs = min(m, 4 * torch.cuda.get_device_properties(xin.device).multi_processor_count)
    rows_per_program = triton.cdiv(m, programs)
    programs = triton.cdiv(m, rows_per_program)
    dx = new_empty((m, n), xin.dtype, xin.device)
    dw_part = new_empty((programs, n), torch.float32, xin.device)
    db_part = new_empty((programs, n), torch.float32, xin.device)
    _ln_bwd_kernel[(programs,)](
        xin, dy2, dh2 if dh2 is not None else dy2, dx, weight, mean, rstd, dw_part, db_part,
        xin.stride(0), dy2.stride(0), dh2.stride(0) if dh2 is not None else 0, dx.stride(0),
        m, n, rows_per_program, HAS_DH=dh2 is not None, BLOCK=block, num_warps=_num_warps(block),
    )
    return dx, dw_part.sum(0), db_part.sum(0)


def _check(x, weight, bias, residual=None):
    check_tensor("x", x, dtypes=_DTYPES)
    n = x.shape[-1]
    if residual is not None:
        check_tensor("residual", residual, shape=x.shape, dtypes=(x.dtype,), device=x.device)
    check_tensor("weight", weight, shape=(n,), dtypes=_DTYPES, device=x.device)
    check_tensor("bias", bias, shape=(n,), dtypes=_DTYPES, device=x.device)


def _affine(x, weight, bias):
    n = x.shape[-1]
    if weight is None:
        weight = torch.ones(n, dtype=x.dtype, device=x.device)
    if bias is None:
        bias = torch.zeros(n, dtype=x.dtype, device=x.device)
    return weight, bias


class _LayerNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        y, _, mean, rstd = _forward(x, None, weight, bias, eps)
        ctx.save_for_backward(x, weight, mean, rstd)
        ctx.bias_dtype = bias.dtype
        return y.view(x.shape)

    @staticmethod
    def backward(ctx, dy):
        x, weight, mean, rstd = ctx.saved_tensors
        dx, dw, db = _backward(_rows(x, x.shape[-1]), dy, None, weight, mean, rstd)
        return dx.view(x.shape), dw.to(weight.dtype), db.to(ctx.bias_dtype), None


class _AddLayerNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, residual, weight, bias, eps):
        y, h, mean, rstd = _forward(x, residual, weight, bias, eps)
        ctx.save_for_backward(h, weight, mean, rstd)
        ctx.bias_dtype = bias.dtype
        return h.view(x.shape), y.view(x.shape)

    @staticmethod
    def backward(ctx, dh, dy):
        h, weight, mean, rstd = ctx.saved_tensors
        dxh, dw, db = _backward(h, dy, dh, weight, mean, rstd)
        dxh = dxh.view(dy.shape)
        return dxh, dxh, dw.to(weight.dtype), db.to(ctx.bias_dtype), None


def fused_layer_norm(x, weight, bias, eps):
    weight, bias = _affine(x, weight, bias)
    _check(x, weight, bias)
    return _LayerNorm.apply(x, weight, bias, float(eps))


def fused_add_layer_norm(x, residual, weight, bias, eps):
    """``(h, layer_norm(h))`` with ``h = x + residual``."""
    weight, bias = _affine(x, weight, bias)
    _check(x, weight, bias, residual)
    return _AddLayerNorm.apply(x, residual, weight, bias, float(eps))
