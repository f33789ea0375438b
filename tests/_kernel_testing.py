"""Shared setup for the kernel tests (``tests/test_kernels_*.py``).

Importing this module before anything Triton-related makes the kernels testable on this machine: without CUDA,
``TRITON_INTERPRET=1`` is set (``@triton.jit`` reads it when a kernel module is imported, and the kernel
modules are imported lazily, so this is early enough; on CPU it changes nothing for the other tests, whose
CPU tensors dispatch to the references anyway).  With CUDA the real compiled kernels are tested on the GPU.
"""

import os

import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")
    from mawstron.kernels._common import single_threaded_numpy_blas

    single_threaded_numpy_blas()  # the interpreter's tl.dot is np.matmul: 10x faster on a shared CPU

import pytest  # noqa: E402

DEVICE = "cuda" if HAS_CUDA else "cpu"

# Error bars against a float64 reference computed from the same (rounded) inputs, for O(1) random data.
# fp32: products are true fp32 (no TF32); fp16: inputs/outputs rounded to fp16 (eps 1e-3), fp32 accumulation;
# bf16 (GPU only): eps 8e-3.
TOL = {
    torch.float32: dict(atol=2e-5, rtol=2e-5),
    torch.float16: dict(atol=5e-3, rtol=5e-3),
    torch.bfloat16: dict(atol=4e-2, rtol=4e-2),
}

requires_cuda = pytest.mark.skipif(not HAS_CUDA, reason="bf16 is tested only on a GPU (the Triton interpreter "
                                   "multiplies raw bf16 bits in tl.dot)")


@pytest.fixture
def poisoned_outputs(monkeypatch):
    """Every tensor a Triton wrapper allocates for its kernels starts as NaN (-1 for integers)."""
    from mawstron.kernels import _common

    monkeypatch.setattr(_common, "POISON_OUTPUTS", True)
    yield


def assert_close(actual, expected, dtype, name):
    tol = TOL[dtype]
    torch.testing.assert_close(actual.double(), expected.double(), **tol, msg=lambda m: f"{name} ({dtype}): {m}")
