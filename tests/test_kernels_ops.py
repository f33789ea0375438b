"""Triton LayerNorm / add+LayerNorm, MAE masking and MAE loss against float64 references: forward and every
gradient, fp32 and fp16 under the interpreter on CPU (bf16 only on a GPU), outputs NaN-poisoned before each call.
"""

import _kernel_testing as kt  # noqa: F401  (sets TRITON_INTERPRET=1 without CUDA, before Triton kernels load)
import pytest
import torch
import torch.nn.functional as F

from _kernel_testing import DEVICE, assert_close, poisoned_outputs, requires_cuda  # noqa: F401

DTYPES = (torch.float32, torch.float16)


@pytest.fixture(autouse=True)
def _poison(poisoned_outputs):
    yield


def _leaves(*tensors, dtype):
    """(kernel inputs in dtype requiring grad, float64 copies of the same rounded values requiring grad)."""
    ours = [t.to(DEVICE, dtype).requires_grad_() for t in tensors]
    ref = [t.detach().double().requires_grad_() for t in ours]
    return ours, ref


def _compare(outs, refs, ours, ref_leaves, dtype, names):
    outs, refs = (outs if isinstance(outs, tuple) else (outs,)), (refs if isinstance(refs, tuple) else (refs,))
    grads = [torch.randn_like(o) for o in outs]
    torch.autograd.backward(outs, grads)
    torch.autograd.backward(refs, [g.double() for g in grads])
    for i, (o, r) in enumerate(zip(outs, refs)):
        assert o.dtype == dtype
        assert_close(o, r, dtype, f"output {i}")
    for name, a, r in zip(names, ours, ref_leaves):
        assert_close(a.grad, r.grad, dtype, f"d{name}")


# ----------------------------------------------------------------------------------------------- LayerNorm
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", ((2, 65, 192), (3, 80), (1, 50, 1000), (2, 7, 1280)))
def test_layer_norm(shape, dtype):
    from mawstron.kernels.fused.layer_norm import fused_layer_norm

    n = shape[-1]
    (x, w, b), (xr, wr, br) = _leaves(torch.randn(shape) * 3 + 1, 1 + torch.randn(n) * 0.1, torch.randn(n),
                                      dtype=dtype)
    _compare(fused_layer_norm(x, w, b, 1e-6), F.layer_norm(xr, (n,), wr, br, 1e-6), (x, w, b), (xr, wr, br),
             dtype, ("x", "weight", "bias"))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", ((2, 65, 192), (1, 50, 1000)))
def test_add_layer_norm(shape, dtype):
    from mawstron.kernels.fused.layer_norm import fused_add_layer_norm

    n = shape[-1]
    leaves, refs = _leaves(torch.randn(shape), torch.randn(shape), 1 + torch.randn(n) * 0.1, torch.randn(n),
                           dtype=dtype)
    xr, rr, wr, br = refs
    hr = (xr + rr).to(dtype).double()  # the contract (ops.add_layer_norm_reference): h is in the input dtype
    _compare(fused_add_layer_norm(*leaves, 1e-5), (hr, F.layer_norm(hr, (n,), wr, br, 1e-5)), leaves, refs, dtype,
             ("x", "residual", "weight", "bias"))


def test_layer_norm_eps_and_non_contiguous_input():
    from mawstron.kernels.fused.layer_norm import fused_layer_norm

    x = torch.randn(80, 6, device=DEVICE).t() * 1e-3  # small variance: eps matters; strided rows
    w, b = torch.randn(80, device=DEVICE), torch.randn(80, device=DEVICE)
    torch.testing.assert_close(fused_layer_norm(x, w, b, 1e-2), F.layer_norm(x, (80,), w, b, 1e-2),
                               atol=2e-5, rtol=2e-5)


# ----------------------------------------------------------------------------------------------- MAE masking
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("b,length,keep,d", ((2, 64, 16, 64), (3, 16, 4, 80)))
def test_gather_visible_tokens(b, length, keep, d, dtype):
    from mawstron.kernels.fused.masking import fused_gather_visible_tokens

    ids_keep = torch.stack([torch.randperm(length)[:keep] for _ in range(b)]).to(DEVICE)
    (x, pos), (xr, posr) = _leaves(torch.randn(b, length, d), torch.randn(1, length, d), dtype=dtype)
    ref = torch.gather(xr + posr, 1, ids_keep.unsqueeze(-1).expand(-1, -1, d))
    _compare(fused_gather_visible_tokens(x, pos, ids_keep), ref, (x, pos), (xr, posr), dtype, ("x", "pos_embed"))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("b,length,keep,d", ((2, 64, 16, 64), (3, 16, 4, 80)))
def test_unshuffle_with_mask_tokens(b, length, keep, d, dtype):
    from mawstron.kernels.fused.masking import fused_unshuffle_with_mask_tokens
    from mawstron.kernels.ops import unshuffle_with_mask_tokens_reference

    ids_restore = torch.stack([torch.argsort(torch.randperm(length)) for _ in range(b)]).to(DEVICE)
    leaves, refs = _leaves(torch.randn(b, 1 + keep, d), torch.randn(1, 1, d), torch.randn(1, 1 + length, d),
                           dtype=dtype)
    x, mt, pos = leaves
    xr, mtr, posr = refs
    _compare(fused_unshuffle_with_mask_tokens(x, mt, ids_restore, pos),
             unshuffle_with_mask_tokens_reference(xr, mtr, ids_restore, posr), leaves, refs, dtype,
             ("x", "mask_token", "pos_embed"))


def test_masking_validation_names_the_argument():
    from mawstron.kernels.fused.masking import fused_gather_visible_tokens, fused_unshuffle_with_mask_tokens

    x = torch.randn(2, 16, 8, device=DEVICE)
    with pytest.raises(ValueError, match="pos_embed has shape"):
        fused_gather_visible_tokens(x, torch.randn(1, 15, 8, device=DEVICE), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(TypeError, match="ids_keep has dtype"):
        fused_gather_visible_tokens(x, torch.randn(1, 16, 8, device=DEVICE), torch.zeros(2, 4, device=DEVICE))
    with pytest.raises(ValueError, match="mask_token has shape"):
        fused_unshuffle_with_mask_tokens(x[:, :5], torch.randn(1, 8, device=DEVICE),
                                         torch.zeros(2, 16, dtype=torch.long, device=DEVICE),
                                         torch.randn(1, 17, 8, device=DEVICE))



def test_masking_rejects_ids_that_are_not_permutations(monkeypatch):
    """A duplicate id would race in the gather backward; a missing one would leave un-shuffle dx rows unwritten."""
    from mawstron.kernels.fused.masking import fused_gather_visible_tokens, fused_unshuffle_with_mask_tokens

    b, length, d = 2, 16, 8
    x, pos = torch.randn(b, length, d, device=DEVICE), torch.randn(1, length, d, device=DEVICE)
    keep = torch.stack([torch.randperm(length)[:4] for _ in range(b)]).to(DEVICE)
    fused_gather_visible_tokens(x, pos, keep)  # valid ids pass
    for bad in (torch.tensor([[0, 1, 1, 2], [0, 1, 2, 3]]), torch.tensor([[0, 1, 2, 16], [0, 1, 2, 3]]),
                torch.tensor([[-1, 1, 2, 3], [0, 1, 2, 3]])):
        with pytest.raises(ValueError, match="ids_keep is not distinct indices in .0, 16.*MAWSTRON_CHECK_IDS=0"):
            fused_gather_visible_tokens(x, pos, bad.to(DEVICE))

    xv, mt, pos1 = (torch.randn(b, 5, d, device=DEVICE), torch.randn(1, 1, d, device=DEVICE),
                    torch.randn(1, 1 + length, d, device=DEVICE))
    restore = torch.stack([torch.argsort(torch.randperm(length)) for _ in range(b)]).to(DEVICE)
    fused_unshuffle_with_mask_tokens(xv, mt, restore, pos1)
    duplicated = restore.clone()
    duplicated[1, 0] = duplicated[1, 1]
    with pytest.raises(ValueError, match="ids_restore is not a permutation of 0..15"):
        fused_unshuffle_with_mask_tokens(xv, mt, duplicated, pos1)

    monkeypatch.setenv("MAWSTRON_CHECK_IDS", "0")  # the switch: no check, no sync (caller vouches for the ids)
    fused_unshuffle_with_mask_tokens(xv, mt, duplicated, pos1)
    fused_gather_visible_tokens(x, pos, torch.tensor([[0, 1, 1, 2], [0, 1, 2, 3]], device=DEVICE))

# ----------------------------------------------------------------------------------------------- MAE loss
def _mae_loss_f64(pred, target, mask, norm_pix_loss, eps):
    if norm_pix_loss:
        mean = target.mean(-1, keepdim=True)
        var = target.var(-1, keepdim=True)  # unbiased, as MAE
        target = (target - mean) / (var + eps) ** 0.5
    per_patch = ((pred - target) ** 2).mean(-1)
    return (per_patch * mask).sum() / mask.sum()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("norm_pix_loss", (True, False))
@pytest.mark.parametrize("b,length,p", ((2, 64, 48), (1, 50, 768), (1, 37, 588)))
def test_mae_loss(b, length, p, norm_pix_loss, dtype):
    from mawstron.kernels.fused.mae_loss import fused_mae_loss

    mask = (torch.rand(b, length) < 0.75).float().to(DEVICE)
    (pred, target), (pr, tr) = _leaves(torch.randn(b, length, p), torch.rand(b, length, p) * 2, dtype=dtype)
    loss = fused_mae_loss(pred, target, mask, norm_pix_loss=norm_pix_loss, eps=1e-6)
    assert loss.dtype == torch.float32 and loss.dim() == 0
    ref = _mae_loss_f64(pr, tr, mask.double(), norm_pix_loss, 1e-6)
    loss.backward()
    ref.backward()
    assert_close(loss, ref, torch.float32 if dtype == torch.float32 else dtype, "loss")
    # gradients are O(1 / (masked patches * pixels)): compare them relative to their scale
    for name, a, r in (("dpred", pred, pr), ("dtarget", target, tr)):
        scale = r.grad.abs().max()
        assert_close(a.grad / scale, r.grad / scale, dtype, name)


def test_mae_loss_eps_and_bool_mask():
    from mawstron.kernels.fused.mae_loss import fused_mae_loss

    pred, target = torch.randn(2, 9, 12, device=DEVICE), torch.randn(2, 9, 12, device=DEVICE) * 1e-3
    target[0, 0] = 0.5  # constant patch: var = 0, only eps keeps it finite
    mask = torch.rand(2, 9, device=DEVICE) < 0.5
    mask[0, 0] = True
    out = fused_mae_loss(pred, target, mask, eps=1e-2)
    ref = _mae_loss_f64(pred.double(), target.double(), mask.double(), True, 1e-2)
    torch.testing.assert_close(out.double(), ref, atol=2e-5, rtol=2e-5)


# ----------------------------------------------------------------------------------------------- bf16 (GPU)
@requires_cuda
class TestBF16:
    def test_layer_norm_bf16(self):
        test_layer_norm((4, 257, 1280), torch.bfloat16)
        test_add_layer_norm((4, 257, 1280), torch.bfloat16)

    def test_masking_bf16(self):
        test_gather_visible_tokens(8, 256, 64, 1280, torch.bfloat16)
        test_unshuffle_with_mask_tokens(8, 256, 64, 512, torch.bfloat16)

    def test_mae_loss_bf16(self):
        test_mae_loss(8, 256, 588, True, torch.bfloat16)
