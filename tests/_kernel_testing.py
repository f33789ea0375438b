"""Shared setup for the kernel tests (``tests/test_kernels_*.py``).

Importing this module before anything Triton-related makes the kernels testable on this machine: without
CUDA, ``TRITON_INTERPRET=1`` is set and Triton imported (``@triton.jit`` reads the variable when a kernel
module is imported; the kernel modules are imported lazily, so collection time is early enough; on CPU it
changes nothing for the other tests, whose CPU tensors dispatch to the references anyway).  With CUDA the real
compiled kernels are tested on the GPU.
"""

import os

import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")
    from mawstron.kernels.fused._common import single_threaded_numpy_blas

    single_threaded_numpy_blas()  # the interpreter's tl.dot is np.matmul: 10x faster on a shared CPU
    # triton.language builds its own @jit helpers (tl.sum, tl.max, ...) when first imported, as interpreted or
    # compiled functions depending on TRITON_INTERPRET at that moment.  Import it now, while the variable is set
    # (this runs at collection, before any test): otherwise a test that unsets it and then imports triton (e.g.
    # test_dispatch's loud-failure test) would leave compiled helpers that interpreted kernels cannot call.
    import triton.language  # noqa: F401

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
    from mawstron.kernels.fused import _common

    monkeypatch.setattr(_common, "POISON_OUTPUTS", True)
    yield


def assert_close(actual, expected, dtype, name):
    tol = TOL[dtype]
    torch.testing.assert_close(actual.double(), expected.double(), **tol, msg=lambda m: f"{name} ({dtype}): {m}")
