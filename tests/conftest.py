import os

import pytest
import torch

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")


@pytest.fixture(autouse=True)
def _seed_and_clean_env(monkeypatch):
    """Every test starts from a fixed seed and the default kernel dispatch."""
    torch.manual_seed(0)
    monkeypatch.delenv("MAWSTRON_KERNELS", raising=False)


def load_fixture(name):
    return torch.load(os.path.join(FIXTURES, name), weights_only=False)
