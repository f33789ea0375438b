"""Triton fused attention (kernels/fused/attention.py) against a float64 reference: forward and every gradient.

CPU: runs under the Triton interpreter (fp32, fp16).  bf16 only on a GPU (TestBF16, skipped otherwise).
Inputs are fresh random tensors per case, kernel outputs are NaN-poisoned before every call.
"""

import math

import _kernel_testing as kt  # noqa: F401  (sets TRITON_INTERPRET=1 without CUDA, before Triton kernels load)
import pytest
import torch

from _kernel_testing import DEVICE, assert_close, poisoned_outputs, requires_cuda  # noqa: F401

SEQS = (50, 65, 197, 257, 1370)
HEAD_DIMS = (64, 80, 128)


@pytest.fixture(autouse=True)
def _poison(poisoned_outputs):
    yield


def _reference(q, k, v, scale):
    q, k, v = (t.detach().double().requires_grad_() for t in (q, k, v))
    s = (q @ k.transpose(-1, -2)) * scale
    return q, k, v, torch.softmax(s, -1) @ v


def _cases():
    cases = []
    for dtype in (torch.float32, torch.float16):
        for n in SEQS:
            # 1370 (~18 s a case under the interpreter) at head dim 80 only, to keep the kernel tests under 4 min;
            # on a GPU every head dim is cheap, so all run there
            dims = HEAD_DIMS if (n < 1370 or kt.HAS_CUDA) else (80,)
            for d in dims:
                cases.append(pytest.param(n, d, dtype, id=f"{str(dtype)[6:]}-n{n}-d{d}"))
    return cases


def _check_bhnd(n, d, dtype, heads, scale=None, batch=1):
    from mawstron.kernels.fused.attention import flash_attention

    q, k, v = (torch.randn(batch, heads, n, d, device=DEVICE, dtype=dtype, requires_grad=True) for _ in range(3))
    out = flash_attention(q, k, v, softmax_scale=scale)
    grad = torch.randn_like(out)
    out.backward(grad)
    qr, kr, vr, ref = _reference(q, k, v, scale if scale is not None else 1 / math.sqrt(d))
    ref.backward(grad.double())
    assert out.dtype == dtype and out.shape == q.shape
    assert_close(out, ref, dtype, "out")
    for name, a, r in (("dq", q, qr), ("dk", k, kr), ("dv", v, vr)):
        assert_close(a.grad, r.grad, dtype, name)


@pytest.mark.parametrize("n,d,dtype", _cases())
def test_flash_attention_matches_float64(n, d, dtype):
    _check_bhnd(n, d, dtype, heads=2 if n <= 65 else 1)


@pytest.mark.parametrize("dtype", (torch.float32, torch.float16))
@pytest.mark.parametrize("n,heads,d", ((65, 2, 80), (50, 3, 64), (197, 2, 128)))
def test_packed_qkv_matches_float64(n, heads, d, dtype):
    """timm's fused qkv [B, N, 3*H*D] in, [B, N, H*D] out, dqkv in the packed layout."""
    from mawstron.kernels.fused.attention import flash_attention_packed

    b = 2
    qkv = torch.randn(b, n, 3 * heads * d, device=DEVICE, dtype=dtype, requires_grad=True)
    out = flash_attention_packed(qkv, heads)
    assert out.shape == (b, n, heads * d) and out.is_contiguous()
    grad = torch.randn_like(out)
    out.backward(grad)
    ref_in = qkv.detach().double().requires_grad_()
    q, k, v = ref_in.view(b, n, 3, heads, d).permute(2, 0, 3, 1, 4)
    ref = (torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), -1) @ v).transpose(1, 2).reshape(b, n, heads * d)
    ref.backward(grad.double())
    assert_close(out, ref, dtype, "out")
    assert_close(qkv.grad, ref_in.grad, dtype, "dqkv")


def test_softmax_scale_and_batch():
    _check_bhnd(65, 64, torch.float32, heads=2, scale=0.3, batch=2)


def test_non_contiguous_inputs_read_through_strides():
    from mawstron.kernels.fused.attention import flash_attention

    b, h, n, d = 2, 2, 65, 80
    # [B, N, H, D] storage viewed as [B, H, N, D], and a grad that is non-contiguous too
    q, k, v = (torch.randn(b, n, h, d, device=DEVICE).transpose(1, 2).requires_grad_() for _ in range(3))
    assert not q.is_contiguous()
    out = flash_attention(q, k, v)
    grad = torch.randn(b, n, h, d, device=DEVICE).transpose(1, 2)
    out.backward(grad)
    qr, kr, vr, ref = _reference(q, k, v, 1 / math.sqrt(d))
    ref.backward(grad.double())
    assert_close(out, ref, torch.float32, "out")
    for name, a, r in (("dq", q, qr), ("dk", k, kr), ("dv", v, vr)):
        assert_close(a.grad, r.grad, torch.float32, name)


def test_public_entry_and_dispatch(monkeypatch):
    import importlib

    import mawstron.kernels as K

    for name in ("attention", "layer_norm", "masking", "mae_loss"):  # the submodules shadow no public op
        importlib.import_module(f"mawstron.kernels.fused.{name}")
    assert callable(K.attention) and callable(K.layer_norm) and callable(K.mae_loss)

    q, k, v = (torch.randn(1, 2, 50, 64, device=DEVICE) for _ in range(3))
    monkeypatch.setenv("MAWSTRON_KERNELS", "triton")
    torch.testing.assert_close(K.flash_attention(q, k, v), K.attention(q, k, v))
    torch.testing.assert_close(K.attention(q, k, v), K.ops.attention_reference(q, k, v), atol=2e-5, rtol=2e-5)


def test_bad_inputs_name_the_argument():
    from mawstron.kernels.fused.attention import flash_attention, flash_attention_packed

    q = torch.randn(1, 2, 50, 64, device=DEVICE)
    with pytest.raises(ValueError, match="k has shape"):
        flash_attention(q, q[:, :1], q)
    with pytest.raises(TypeError, match="v has dtype"):
        flash_attention(q, q, q.half())
    with pytest.raises(ValueError, match="q must be 4-D"):
        flash_attention(q[0], q[0], q[0])
    with pytest.raises(ValueError, match="num_heads"):
        flash_attention_packed(torch.randn(1, 50, 3 * 64, device=DEVICE), 5)


@requires_cuda
class TestBF16:
    @pytest.mark.parametrize("mode", ("fused", "split"))
    @pytest.mark.parametrize("n", SEQS)
    @pytest.mark.parametrize("d", HEAD_DIMS)
    def test_flash_attention_bf16(self, n, d, mode, monkeypatch):
        # both backward schedules: at this small batch * heads the launcher alone would always pick split
        monkeypatch.setenv("MAWSTRON_ATTENTION_BWD", mode)
        _check_bhnd(n, d, torch.bfloat16, heads=4, batch=2)

    def test_packed_bf16(self):
        test_packed_qkv_matches_float64(257, 16, 80, torch.bfloat16)


@pytest.mark.parametrize("n,d", ((65, 80), (130, 72), (20, 48), (197, 128)))
def test_split_backward_schedule(monkeypatch, n, d):
    """The 7-matmul sequence-parallel backward (the default under the interpreter is the 5-matmul fused one);
    72 and 48 exercise a masked head-dim tail (64 + 16 with 8 lanes masked, 32 + 16 exactly)."""
    monkeypatch.setenv("MAWSTRON_ATTENTION_BWD", "split")
    _check_bhnd(n, d, torch.float32, heads=1, batch=2)


@pytest.mark.parametrize("n,d", ((130, 72), (20, 48), (33, 112)))
def test_fused_backward_odd_head_dims(monkeypatch, n, d):
    monkeypatch.setenv("MAWSTRON_ATTENTION_BWD", "fused")
    _check_bhnd(n, d, torch.float16, heads=1, batch=2)


def test_launch_configs_table_and_head_dim_split(monkeypatch, tmp_path):
    import importlib
    import json

    cfgs = importlib.import_module("mawstron.kernels.fused.attention_configs")
    assert [cfgs.head_dim_split(d) for d in (64, 80, 96, 72, 112, 128, 48, 200, 8)] == [
        (64, 0), (64, 16), (64, 32), (64, 16), (128, 0), (128, 0), (32, 16), (256, 0), (16, 0)]
    assert cfgs.table_key((9, 0), torch.bfloat16, 80, 1370) == "sm90/bf16/d80/n2048"
    table = tmp_path / "table.json"
    table.write_text(json.dumps({"entries": {"sm90/bf16/d80/n2048": {"fwd": {"BLOCK_N": 128}, "bwd_mode": "split",
                                                                          "source": "test"}}}))
    monkeypatch.setenv("MAWSTRON_ATTENTION_CONFIGS", str(table))
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # the interpreter never reads the table
    cfgs.load_table.cache_clear()
    try:
        cfg = cfgs.lookup((9, 0), torch.bfloat16, 1370, 80)
        assert cfg["fwd"]["BLOCK_N"] == 128 and cfg["fwd"]["BLOCK_M"] == 128 and cfg["source"] == "test"
        assert cfgs.backward_mode(cfg, 4, 132) == "split" and cfgs.backward_mode(cfg, 4096, 132) == "split"
        fused_cfg = dict(cfg, bwd_mode="fused")
        assert cfgs.backward_mode(fused_cfg, 132, 132) == "fused" and cfgs.backward_mode(fused_cfg, 64, 132) == "split"
        other = cfgs.lookup((9, 0), torch.bfloat16, 197, 64)  # not in this table: the heuristic
        assert other["source"] == "heuristic" and other["bwd_mode"] is None
        assert cfgs.backward_mode(other, 4, 132) == "split" and cfgs.backward_mode(other, 1024, 132) == "fused"
        with cfgs.trying({"bwd_fused": {"BLOCK_N": 128}}):
            assert cfgs.lookup((9, 0), torch.bfloat16, 1370, 80)["bwd_fused"]["BLOCK_N"] == 128
        monkeypatch.setenv("MAWSTRON_ATTENTION_BWD", "sideways")
        with pytest.raises(ValueError, match="MAWSTRON_ATTENTION_BWD='sideways'"):
            cfgs.backward_mode(cfg, 4, 132)
        # every block that is a dot's M dimension in the shipped table is 64 or 128 (wgmma)
        monkeypatch.delenv("MAWSTRON_ATTENTION_CONFIGS")
        cfgs.load_table.cache_clear()
        for key, entry in cfgs.load_table().items():
            for part, m_keys in (("fwd", ("BLOCK_M",)), ("bwd_kv", ("BLOCK_N",)), ("bwd_q", ("BLOCK_M",)),
                                 ("bwd_fused", ("BLOCK_M", "BLOCK_N"))):
                assert all(entry[part][k] in (64, 128) for k in m_keys), (key, part)
    finally:
        cfgs.load_table.cache_clear()
