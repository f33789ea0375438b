"""Helpers shared by the Triton kernels: output allocation (poisonable in tests), input validation, launch hints.

Every Triton wrapper allocates the tensors its kernels write through :func:`new_empty`.  Tests set
``POISON_OUTPUTS = True`` so that those tensors start as NaN (floats) or -1 (integers): an element a kernel
forgets to write then fails the comparison instead of silently holding whatever ``torch.empty`` returned.
"""

from __future__ import annotations

import os

import torch

POISON_OUTPUTS = False

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def new_empty(shape, dtype, device) -> torch.Tensor:
    t = torch.empty(shape, dtype=dtype, device=device)
    if POISON_OUTPUTS:
        t.fill_(float("nan") if t.is_floating_point() else -1)
    return t


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def check_tensor(name: str, t, *, ndim=None, dtypes=None, device=None, shape=None) -> None:
    """Raise a ValueError/TypeError that names the offending argument."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(t.shape)}")
    if shape is not None and tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {tuple(shape)}")
    if dtypes is not None and t.dtype not in dtypes:
        raise TypeError(f"{name} has dtype {t.dtype}, expected one of {list(dtypes)}")
    if device is not None and t.device != device:
        raise ValueError(f"{name} is on {t.device}, expected {device} (all inputs must be on one device)")


def single_threaded_numpy_blas() -> bool:
    """Pin numpy's OpenBLAS to one thread (for the Triton interpreter, whose ``tl.dot`` is ``np.matmul``).

    On a small shared CPU, OpenBLAS's threads spin against each other: a 64x128 @ 128x64 fp32 matmul measured
    ~20 ms with the default threading and ~0.03 ms single-threaded, which made the interpreted attention tests
    ~10x slower.  OpenBLAS reads ``OPENBLAS_NUM_THREADS`` only when it loads, so this calls its setter through
    ctypes.  Returns True when a setter was found (Linux; best effort elsewhere).
    """
    import ctypes

    import numpy  # noqa: F401  (loads OpenBLAS)

    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "openblas" in line.lower() and ".so" in line}
    except OSError:
        return False
    done = False
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for symbol in ("scipy_openblas_set_num_threads64_", "openblas_set_num_threads64_", "openblas_set_num_threads"):
            if hasattr(lib, symbol):
                getattr(lib, symbol)(1)
                done = True
                break
    return done
