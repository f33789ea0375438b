"""MAE reconstruction loss in Triton: per-patch norm_pix target normalisation, squared error, masked mean.

One program per patch row (``P`` pixels, any width: block ``next_power_of_2(P)`` with masks), float32 math
whatever the input dtype.  Forward writes only per-row values: the masked per-patch loss and, with
``norm_pix_loss``, the target row's mean and ``rstd = 1 / sqrt(var + eps)`` with the *unbiased* variance (as MAE's
``Tensor.var``).  The scalar is ``sum(row_loss) / sum(mask)``.  Backward is one kernel that recomputes the
normalised target from the saved inputs and row statistics and writes ``dpred`` (and ``dtarget`` when the target
requires grad); no per-pixel intermediate is saved.  Reference: ``ops.mae_loss_reference``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import check_tensor, new_empty

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@triton.jit
def _mae_loss_fwd_kernel(
    PRED, TARGET, MASK, ROW_LOSS, MEAN, RSTD, sp, st, P, eps, NORM: tl.constexpr, BLOCK: tl.constexpr
):
    row = tl.program_id(0).to(tl.int64)  # 64-bit: row * stride can pass 2^31
    cols = tl.arange(0, BLOCK)
    valid = cols < P
    pred = tl.load(PRED + row * sp + cols, mask=valid, other=0.0).to(tl.float32)
    t = tl.load(TARGET + row * st + cols, mask=valid, other=0.0).to(tl.float32)
    if NORM:
        mean = tl.sum(t, 0) / P
        tc = tl.where(valid, t - mean, 0.0)
        var = tl.sum(tc * tc, 0) / (P - 1)
        rstd = 1.0 / tl.sqrt(var + eps)
        t = tc * rstd
        tl.store(MEAN + row, mean)
        tl.store(RSTD + row, rstd)
    diff = tl.where(valid, pred - t, 0.0)
    m = tl.load(MASK + row)
    tl.store(ROW_LOSS + row, tl.sum(diff * diff, 0) / P * m)


@triton.jit
def _mae_loss_bwd_kernel(
    PRED, TARGET, MASK, MEAN, RSTD, GRAD_SCALE, DPRED, DTARGET,
    sp, st, sdp, sdt, P,
    NORM: tl.constexpr, TARGET_GRAD: tl.constexpr, BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)  # 64-bit: row * stride can pass 2^31
    cols = tl.arange(0, BLOCK)
    valid = cols < P
    # d loss / d row_loss = grad_out * mask[row] / sum(mask), precomputed on device as GRAD_SCALE
    g = tl.load(GRAD_SCALE) * tl.load(MASK + row)
    pred = tl.load(PRED + row * sp + cols, mask=valid, other=0.0).to(tl.float32)
    t = tl.load(TARGET + row * st + cols, mask=valid, other=0.0).to(tl.float32)
    if NORM:
        mean = tl.load(MEAN + row)
        rstd = tl.load(RSTD + row)
        xhat = tl.where(valid, (t - mean) * rstd, 0.0)
    else:
        xhat = t
    dpred = tl.where(valid, (pred - xhat) * (2.0 * g / P), 0.0)
    tl.store(DPRED + row * sdp + cols, dpred.to(DPRED.dtype.element_ty), mask=valid)
    if TARGET_GRAD:
        gt = -dpred  # grad w.r.t. the normalised target
        if NORM:
            # t_hat = (t - mean) * rstd, rstd = (var + eps)^-1/2, var unbiased:
            # dt = rstd * (gt - mean(gt) - t_hat * sum(gt * t_hat) / (P - 1))
            dt = rstd * (gt - tl.sum(gt, 0) / P - xhat * (tl.sum(gt * xhat, 0) / (P - 1)))
        else:
            dt = gt
        tl.store(DTARGET + row * sdt + cols, dt.to(DTARGET.dtype.element_ty), mask=valid)


def _num_warps(block):
    return min(max(block // 256, 1), 8)


class _MAELoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pred, target, mask, norm_pix_loss, eps):
        b, length, p = pred.shape
        rows = b * length
        pred2 = pred.reshape(rows, p)
        pred2 = pred2 if pred2.stride(-1) == 1 else pred2.contiguous()
        tgt2 = target.reshape(rows, p)
        tgt2 = tgt2 if tgt2.stride(-1) == 1 else tgt2.contiguous()
        mask_f = mask.reshape(rows).to(torch.float32).contiguous()
        row_loss = new_empty((rows,), torch.float32, pred.device)
        mean = new_empty((rows,), torch.float32, pred.device) if norm_pix_loss else row_loss
        rstd = new_empty((rows,), torch.float32, pred.device) if norm_pix_loss else row_loss
        block = triton.next_power_of_2(p)
        _mae_loss_fwd_kernel[(rows,)](
            pred2, tgt2, mask_f, row_loss, mean, rstd, pred2.stride(0), tgt2.stride(0), p, eps,
            NORM=bool(norm_pix_loss), BLOCK=block, num_warps=_num_warps(block),
        )
        mask_sum = mask_f.sum()
        ctx.save_for_backward(pred2, tgt2, mask_f, mean, rstd, mask_sum)
        ctx.norm, ctx.shape, ctx.dtypes = bool(norm_pix_loss), (b, length, p), (pred.dtype, target.dtype)
        return row_loss.sum() / mask_sum

    @staticmethod
    def backward(ctx, grad):
        pred2, tgt2, mask_f, mean, rstd, mask_sum = ctx.saved_tensors
        rows, p = pred2.shape
        grad_scale = (grad.to(torch.float32) / mask_sum).reshape(1)
        dpred = new_empty((rows, p), ctx.dtypes[0], pred2.device)
        target_grad = ctx.needs_input_grad[1]
        dtarget = new_empty((rows, p), ctx.dtypes[1], pred2.device) if target_grad else dpred
        block = triton.next_power_of_2(p)
        _mae_loss_bwd_kernel[(rows,)](
            pred2, tgt2, mask_f, mean, rstd, grad_scale, dpred, dtarget,
            pred2.stride(0), tgt2.stride(0), dpred.stride(0), dtarget.stride(0), p,
            NORM=ctx.norm, TARGET_GRAD=target_grad, BLOCK=block, num_warps=_num_warps(block),
        )
        return dpred.view(ctx.shape), dtarget.view(ctx.shape) if target_grad else None, None, None, None


def fused_mae_loss(pred, target, mask, norm_pix_loss=True, eps=1e-6):
    """MAE loss (scalar, float32): masked mean over patches of the per-patch mean squared error."""
    check_tensor("pred", pred, ndim=3, dtypes=_DTYPES)
    check_tensor("target", target, shape=pred.shape, dtypes=_DTYPES, device=pred.device)
    check_tensor("mask", mask, shape=pred.shape[:2], device=pred.device)
    if norm_pix_loss and pred.shape[-1] < 2:
        raise ValueError("norm_pix_loss needs at least 2 pixels per patch (unbiased variance)")
    return _MAELoss.apply(pred, target, mask, bool(norm_pix_loss), float(eps))
