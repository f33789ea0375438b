"""MAE token masking in Triton: gather the visible tokens (+ position embedding), and the decoder's un-shuffle
with mask tokens (+ decoder position embedding).  Forward and backward each one pass over the tokens.

``fused_gather_visible_tokens(x, pos_embed, ids_keep)``: ``out[b, j] = x[b, ids_keep[b, j]] + pos[ids_keep[b, j]]``.
Backward: ``dx`` scattered into zeros (each kept index appears once per sample) and ``dpos = sum_b dx[b]``
(a reduction over the batch: deterministic, no atomics).

``fused_unshuffle_with_mask_tokens(x, mask_token, ids_restore, pos_embed)``:
``out[b, 0] = x[b, 0] + pos[0]``; ``out[b, 1 + j] = (x[b, 1 + r] if r < n_vis - 1 else mask_token) + pos[1 + j]``
with ``r = ids_restore[b, j]``.  Backward: every row of ``dx`` receives exactly one output row (ids_restore is
a permutation), so the kernel writes all of ``dx`` without zero-filling; ``dmask_token`` and ``dpos`` are
reductions.  References: ``ops.gather_visible_tokens_reference``, ``ops.unshuffle_with_mask_tokens_reference``.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from ._common import check_tensor, new_empty

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_IDX = (torch.int64, torch.int32)


def _block(d):
    return min(triton.next_power_of_2(d), 1024)


def _num_warps(block):
    return min(max(block // 256, 1), 8)


@triton.jit
def _gather_fwd_kernel(X, POS, IDS, OUT, sxb, sxl, spl, sib, sob, sol, V, D, BLOCK: tl.constexpr):
    row = tl.program_id(0)  # b * V + j
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < D
    b = (row // V).to(tl.int64)
    j = row % V
    src = tl.load(IDS + b * sib + j)
    x = tl.load(X + b * sxb + src * sxl + cols, mask=mask, other=0.0)
    p = tl.load(POS + src * spl + cols, mask=mask, other=0.0)
    out = (x.to(tl.float32) + p.to(tl.float32)).to(OUT.dtype.element_ty)
    tl.store(OUT + b * sob + j * sol + cols, out, mask=mask)


@triton.jit
def _gather_bwd_kernel(DOUT, IDS, DX, sdb, sdl, sib, sxb, sxl, V, D, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < D
    b = (row // V).to(tl.int64)
    j = row % V
    dst = tl.load(IDS + b * sib + j)
    g = tl.load(DOUT + b * sdb + j * sdl + cols, mask=mask, other=0.0)
    tl.store(DX + b * sxb + dst * sxl + cols, g, mask=mask)


@triton.jit
def _unshuffle_source(IDS, b, sib, t, NVIS):
    """Output row ``t`` of the un-shuffle (0 = class token) comes from input row ``src`` of x when ``visible``,
    else it is a mask token: the mapping the forward reads through and the backward scatters through."""
    r = tl.load(IDS + b * sib + tl.maximum(t - 1, 0))
    is_cls = t == 0
    visible = is_cls | (r < NVIS - 1)
    src = tl.where(is_cls, 0, 1 + r)
    return src, visible


@triton.jit
def _unshuffle_fwd_kernel(
    X, MASK_TOKEN, IDS, POS, OUT, sxb, sxl, sib, spl, sob, sol, L1, NVIS, D, BLOCK: tl.constexpr
):
    row = tl.program_id(0)  # b * (1 + L) + t
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < D
    b = (row // L1).to(tl.int64)
    t = row % L1
    src, visible = _unshuffle_source(IDS, b, sib, t, NVIS)
    is_mask_token = visible == 0
    # row predicates broadcast to vectors explicitly (a scalar bool in a load mask trips the interpreter)
    vis_vec = mask & ((cols * 0 + visible.to(tl.int32)) != 0)
    mt_vec = mask & ((cols * 0 + is_mask_token.to(tl.int32)) != 0)
    x = tl.load(X + b * sxb + src * sxl + cols, mask=vis_vec, other=0.0).to(tl.float32)
    mt = tl.load(MASK_TOKEN + cols, mask=mt_vec, other=0.0).to(tl.float32)
    p = tl.load(POS + t * spl + cols, mask=mask, other=0.0).to(tl.float32)
    out = tl.where(visible, x, mt) + p
    tl.store(OUT + b * sob + t * sol + cols, out.to(OUT.dtype.element_ty), mask=mask)


@triton.jit
def _unshuffle_bwd_kernel(DOUT, IDS, DX, sdb, sdl, sib, sxb, sxl, L1, NVIS, D, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < D
    b = (row // L1).to(tl.int64)
    t = row % L1
    dst, visible = _unshuffle_source(IDS, b, sib, t, NVIS)
    vis_vec = mask & ((cols * 0 + visible.to(tl.int32)) != 0)
    g = tl.load(DOUT + b * sdb + t * sdl + cols, mask=vis_vec, other=0.0)
    tl.store(DX + b * sxb + dst * sxl + cols, g, mask=vis_vec)


def _lastdim_contiguous(t):
    return t if t.stride(-1) == 1 else t.contiguous()


class _GatherVisible(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, pos_embed, ids_keep):
        b, length, d = x.shape
        v = ids_keep.shape[1]
        x_, pos, ids = _lastdim_contiguous(x), _lastdim_contiguous(pos_embed), _lastdim_contiguous(ids_keep)
        out = new_empty((b, v, d), x.dtype, x.device)
        block = _block(d)
        _gather_fwd_kernel[(b * v, triton.cdiv(d, block))](
            x_, pos, ids, out, x_.stride(0), x_.stride(1), pos.stride(1), ids.stride(0), out.stride(0), out.stride(1),
            v, d, BLOCK=block, num_warps=_num_warps(block),
        )
        ctx.save_for_backward(ids)
        ctx.x_shape, ctx.pos_dtype = (b, length, d), pos_embed.dtype
        return out

    @staticmethod
    def backward(ctx, dout):
        (ids,) = ctx.saved_tensors
        b, length, d = ctx.x_shape
        v = ids.shape[1]
        dout = _lastdim_contiguous(dout)
        dx = torch.zeros((b, length, d), dtype=dout.dtype, device=dout.device)  # masked positions get no gradient
        block = _block(d)
        _gather_bwd_kernel[(b * v, triton.cdiv(d, block))](
            dout, ids, dx, dout.stride(0), dout.stride(1), ids.stride(0), dx.stride(0), dx.stride(1),
            v, d, BLOCK=block, num_warps=_num_warps(block),
        )
        dpos = None
        if ctx.needs_input_grad[1]:
            dpos = dx.sum(0, keepdim=True, dtype=torch.float32).to(ctx.pos_dtype)
        return dx, dpos, None


class _Unshuffle(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, mask_token, ids_restore, pos_embed):
        b, n_vis, d = x.shape
        length = ids_restore.shape[1]
        x_, mt = _lastdim_contiguous(x), mask_token.reshape(d).contiguous()
        ids, pos = _lastdim_contiguous(ids_restore), _lastdim_contiguous(pos_embed)
        out = new_empty((b, 1 + length, d), x.dtype, x.device)
        block = _block(d)
        _unshuffle_fwd_kernel[(b * (1 + length), triton.cdiv(d, block))](
            x_, mt, ids, pos, out, x_.stride(0), x_.stride(1), ids.stride(0), pos.stride(1), out.stride(0),
            out.stride(1), 1 + length, n_vis, d, BLOCK=block, num_warps=_num_warps(block),
        )
        ctx.save_for_backward(ids)
        ctx.n_vis, ctx.mt_dtype, ctx.pos_dtype = n_vis, mask_token.dtype, pos_embed.dtype
        return out

    @staticmethod
    def backward(ctx, dout):
        (ids,) = ctx.saved_tensors
        b, l1, d = dout.shape
        n_vis = ctx.n_vis
        dout = _lastdim_contiguous(dout)
        dx = new_empty((b, n_vis, d), dout.dtype, dout.device)
        block = _block(d)
        _unshuffle_bwd_kernel[(b * l1, triton.cdiv(d, block))](
            dout, ids, dx, dout.stride(0), dout.stride(1), ids.stride(0), dx.stride(0), dx.stride(1),
            l1, n_vis, d, BLOCK=block, num_warps=_num_warps(block),
        )
        dmask = dpos = None
        if ctx.needs_input_grad[1]:
            masked = (ids >= n_vis - 1).unsqueeze(-1)
            dmask = torch.where(masked, dout[:, 1:], 0).sum((0, 1), dtype=torch.float32)
            dmask = dmask.view(1, 1, d).to(ctx.mt_dtype)
        if ctx.needs_input_grad[3]:
            dpos = dout.sum(0, keepdim=True, dtype=torch.float32).to(ctx.pos_dtype)
        return dx, dmask, None, dpos


def ids_checked() -> bool:
    """Whether the masking ops verify their ids (default on; ``MAWSTRON_CHECK_IDS=0`` turns it off for speed).

    A duplicate id would race in the gather's backward (two rows scattered to one) and a missing one in the
    un-shuffle's would leave ``dx`` rows unwritten: both silently wrong gradients.  The check is a sort of the
    [batch, length] ids and one device-to-host sync per call, small next to the rows the kernels move.
    """
    return os.environ.get("MAWSTRON_CHECK_IDS", "1") not in ("0", "false", "False", "")


def _check_distinct_ids(name, ids, length, full):
    """ids[b] must be distinct values in [0, length) -- all of them when ``full`` (a permutation)."""
    if ids.numel() == 0:
        return
    ordered = torch.sort(ids, dim=1).values
    if full:
        bad = bool((ordered != torch.arange(length, device=ids.device, dtype=ids.dtype)).any())
        what = f"a permutation of 0..{length - 1} in every row"
    else:
        bad = bool((ordered[:, 0] < 0).any() | (ordered[:, -1] >= length).any()
                   | (ordered[:, 1:] == ordered[:, :-1]).any())
        what = f"distinct indices in [0, {length}) in every row"
    if bad:
        raise ValueError(f"{name} is not {what} (duplicate, missing or out-of-range ids give wrong gradients); "
                         f"pass ids from argsort of random noise, or set MAWSTRON_CHECK_IDS=0 to skip this check")


def fused_gather_visible_tokens(x, pos_embed, ids_keep):
    check_tensor("x", x, ndim=3, dtypes=_DTYPES)
    b, length, d = x.shape
    check_tensor("pos_embed", pos_embed, shape=(1, length, d), dtypes=_DTYPES, device=x.device)
    check_tensor("ids_keep", ids_keep, ndim=2, dtypes=_IDX, device=x.device)
    if ids_keep.shape[0] != b:
        raise ValueError(f"ids_keep has batch {ids_keep.shape[0]}, x has batch {b}")
    if ids_checked():
        _check_distinct_ids("ids_keep", ids_keep, length, full=False)
    return _GatherVisible.apply(x, pos_embed, ids_keep)


def fused_unshuffle_with_mask_tokens(x, mask_token, ids_restore, pos_embed):
    check_tensor("x", x, ndim=3, dtypes=_DTYPES)
    b, n_vis, d = x.shape
    check_tensor("mask_token", mask_token, shape=(1, 1, d), dtypes=_DTYPES, device=x.device)
    check_tensor("ids_restore", ids_restore, ndim=2, dtypes=_IDX, device=x.device)
    if ids_restore.shape[0] != b:
        raise ValueError(f"ids_restore has batch {ids_restore.shape[0]}, x has batch {b}")
    length = ids_restore.shape[1]
    if not 1 <= n_vis <= length + 1:
        raise ValueError(f"x has {n_vis} tokens (class + visible); expected between 1 and 1 + {length}")
    check_tensor("pos_embed", pos_embed, shape=(1, 1 + length, d), dtypes=_DTYPES, device=x.device)
    if ids_checked():
        _check_distinct_ids("ids_restore", ids_restore, length, full=True)
    return _Unshuffle.apply(x, mask_token, ids_restore, pos_embed)
