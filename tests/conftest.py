import os

import pytest
import torch

if not torch.cuda.is_available():
    # Triton's @jit reads TRITON_INTERPRET when a function is decorated, and triton.language decorates its own
    # helpers (tl.sum, tl.max, ...) when first imported.  DeepSpeed imports triton as a side effect, so the
    # first import can come from any test module: set the variable and import triton here, before collection,
    # so that the kernel tests run under the interpreter whatever the test order.  (CPU tensors dispatch to the
    # references anyway; multi-rank subprocesses get a clean environment, see distributed_runs.env.)
    os.environ.setdefault("TRITON_INTERPRET", "1")
    try:
        import triton.language  # noqa: F401
    except ImportError:
        pass

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")


@pytest.fixture(autouse=True)
def _seed_and_clean_env(monkeypatch):
    """Every test starts from a fixed seed and the default kernel dispatch."""
    torch.manual_seed(0)
    monkeypatch.delenv("MAWSTRON_KERNELS", raising=False)


def load_fixture(name):
    return torch.load(os.path.join(FIXTURES, name), weights_only=False)
