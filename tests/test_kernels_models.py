"""Whole models through the Triton kernels (interpreter on CPU) against the same models on the references.

fp32: forward outputs within atol/rtol 1e-4 and every parameter gradient within atol 1e-4, rtol 1e-3 (the
kernels reorder sums: softmax online, LayerNorm statistics in one pass, so bits differ, not values).
"""

import _kernel_testing as kt  # noqa: F401  (sets TRITON_INTERPRET=1 without CUDA, before Triton kernels load)
import pytest
import torch

from _kernel_testing import DEVICE, poisoned_outputs  # noqa: F401
from mawstron.core import create_mae, create_vit

FWD_TOL = dict(atol=1e-4, rtol=1e-4)
GRAD_TOL = dict(atol=1e-4, rtol=1e-3)


@pytest.fixture(autouse=True)
def _poison(poisoned_outputs):
    yield


def _run(model, backend, monkeypatch, *inputs):
    monkeypatch.setenv("MAWSTRON_KERNELS", backend)
    model.zero_grad(set_to_none=True)
    out = model(*inputs)
    loss = out[0] if isinstance(out, tuple) else out
    if loss.dim():
        loss = (loss * torch.linspace(-1, 1, loss.numel(), device=loss.device).view_as(loss)).sum()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return [o.detach().clone() for o in (out if isinstance(out, tuple) else (out,))], grads


def _compare(model, monkeypatch, *inputs):
    ref_out, ref_grads = _run(model, "reference", monkeypatch, *inputs)
    tri_out, tri_grads = _run(model, "triton", monkeypatch, *inputs)
    for r, t in zip(ref_out, tri_out):
        torch.testing.assert_close(t, r, **FWD_TOL)
    assert ref_grads.keys() == tri_grads.keys() and ref_grads
    for name in ref_grads:
        torch.testing.assert_close(tri_grads[name], ref_grads[name], **GRAD_TOL, msg=lambda m: f"grad {name}: {m}")


def test_vit_tiny_triton_equals_reference(monkeypatch):
    """vit_tiny (2 blocks): head dim 64, seq 65, LayerNorm and add+LayerNorm of width 192; classifier features."""
    model = create_vit("vit_tiny", num_classes=10, depth=2).to(DEVICE)
    _compare(model, monkeypatch, torch.randn(2, 3, 32, 32, device=DEVICE))


def test_mae_tiny_triton_equals_reference(monkeypatch):
    """MAE on vit_tiny_h80 (head dim 80) with a head-dim-80 decoder and learned position embeddings, so the
    masking kernels' dpos and dmask_token are exercised too; same masking noise on both runs."""
    model = create_mae("vit_tiny_h80", decoder_embed_dim=160, decoder_depth=1, decoder_num_heads=2,
                       fixed_pos_embed=False).to(DEVICE)
    imgs = torch.randn(2, 3, 32, 32, device=DEVICE)
    noise = torch.rand(2, model.config.num_patches, device=DEVICE)
    _compare(model, monkeypatch, imgs, noise)
