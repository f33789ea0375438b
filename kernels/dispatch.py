"""The one place that decides which implementation of a fused op runs.

Models call the functions in this module (re-exported by ``mawstron.kernels``) and never a Triton kernel or a
reference directly.  The rule:

* ``MAWSTRON_KERNELS=auto`` (default): Triton when every tensor is on a CUDA device and Triton imports,
  the plain-PyTorch reference otherwise (CPU, MPS, no Triton).
* ``MAWSTRON_KERNELS=reference``: always the reference (debugging a numerical difference).
* ``MAWSTRON_KERNELS=triton``: always Triton; on CPU tensors this needs ``TRITON_INTERPRET=1`` (tests run the
  whole model through the interpreter this way).  Fails loudly instead of silently falling back.

The environment variable is read at every call so that tests and debugging sessions can flip it.
"""

from __future__ import annotations

import functools
import os

import torch

BACKENDS = ("auto", "reference", "triton")
ENV_VAR = "MAWSTRON_KERNELS"


@functools.lru_cache(maxsize=1)
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:  # ImportError, or a broken install raising something else at import
        return False
    return True


def interpreter_enabled() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def requested_backend() -> str:
    mode = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if mode not in BACKENDS:
        raise ValueError(f"{ENV_VAR}={mode!r} is not one of {BACKENDS}; unset it or pick one of those")
    return mode


def use_triton(*tensors: torch.Tensor | None) -> bool:
    """True when the Triton implementation should run for these tensors."""
    mode = requested_backend()
    if mode == "reference":
        return False
    on_cuda = all(t.is_cuda for t in tensors if t is not None)
    if mode == "auto":
        return on_cuda and triton_available()
    # mode == "triton": the caller insisted, so every reason it cannot run is an error
    if not triton_available():
        raise RuntimeError(f"{ENV_VAR}=triton but Triton does not import; pip install triton or unset {ENV_VAR}")
    if not on_cuda and not interpreter_enabled():
        raise RuntimeError(
            f"{ENV_VAR}=triton with CPU tensors needs TRITON_INTERPRET=1 (the Triton interpreter); "
            f"set it, or unset {ENV_VAR} to use the PyTorch reference on CPU"
        )
    return True
