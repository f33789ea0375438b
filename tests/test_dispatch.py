"""The kernel dispatch point: references on CPU, the environment override, loud failures."""

import pytest
import torch

from mawstron import kernels
from mawstron.kernels import ops


def test_cpu_tensors_use_the_reference_by_default():
    assert not kernels.use_triton(torch.zeros(1))


def test_reference_override_and_bad_value(monkeypatch):
    monkeypatch.setenv("MAWSTRON_KERNELS", "reference")
    assert kernels.requested_backend() == "reference"
    monkeypatch.setenv("MAWSTRON_KERNELS", "fastest")
    with pytest.raises(ValueError, match="MAWSTRON_KERNELS='fastest'"):
        kernels.use_triton(torch.zeros(1))


def test_forcing_triton_on_cpu_without_the_interpreter_fails_loudly(monkeypatch):
    monkeypatch.setenv("MAWSTRON_KERNELS", "triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        kernels.use_triton(torch.zeros(1))


def test_packed_attention_reference_equals_unpacked():
    b, n, h, d = 2, 7, 3, 16
    qkv = torch.randn(b, n, 3 * h * d)
    q, k, v = qkv.view(b, n, 3, h, d).permute(2, 0, 3, 1, 4)
    expected = torch.softmax(q @ k.transpose(-1, -2) / d**0.5, -1) @ v
    out = kernels.packed_attention(qkv, h)
    torch.testing.assert_close(out, expected.transpose(1, 2).reshape(b, n, h * d))


def test_masking_references_agree_with_index_arithmetic():
    b, L, d, keep = 2, 9, 4, 3
    x, pos = torch.randn(b, L, d), torch.randn(1, L, d)
    ids_keep = torch.stack([torch.randperm(L)[:keep] for _ in range(b)])
    out = ops.gather_visible_tokens_reference(x, pos, ids_keep)
    for i in range(b):
        for j in range(keep):
            torch.testing.assert_close(out[i, j], x[i, ids_keep[i, j]] + pos[0, ids_keep[i, j]])
    # unshuffle: the restored sequence puts visible token j back at position ids_keep[j], mask tokens elsewhere
    ids_shuffle = torch.stack([torch.randperm(L) for _ in range(b)])
    ids_restore = torch.argsort(ids_shuffle, 1)
    vis = torch.randn(b, 1 + keep, d)
    mask_token, dpos = torch.randn(1, 1, d), torch.randn(1, 1 + L, d)
    out = ops.unshuffle_with_mask_tokens_reference(vis, mask_token, ids_restore, dpos)
    for i in range(b):
        torch.testing.assert_close(out[i, 0], vis[i, 0] + dpos[0, 0])
        for rank, patch in enumerate(ids_shuffle[i].tolist()):
            expected = vis[i, 1 + rank] if rank < keep else mask_token[0, 0]
            torch.testing.assert_close(out[i, 1 + patch], expected + dpos[0, 1 + patch])
