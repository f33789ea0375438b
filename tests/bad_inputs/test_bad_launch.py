"""Launch mistakes that reach the ranks (a recipe started with `deepspeed` directly, not through `mawstron train`):
each rank refuses before distributed initialisation and the message is printed once (issue #23)."""

from __future__ import annotations

import os
import subprocess

import pytest

from distributed_runs import env, launcher_cmd

pytestmark = pytest.mark.multirank

TIMEOUT_S = 300


def test_a_rank_started_by_deepspeed_with_a_missing_hostfile_refuses_to_train_on_one_node(tmp_path):
    """`deepspeed --hostfile F recipes/x.py` with F missing: the launcher falls back to this node; the rank refuses."""
    cmd = launcher_cmd("vit_tiny_mae.py", [f"output_dir={tmp_path / 'run'}"], ranks=1)
    cmd[1:1] = ["--hostfile", "hosts.txt"]  # relative to the launcher's folder, as a user types it
    out = subprocess.run(cmd, cwd=str(tmp_path), env=env(), timeout=TIMEOUT_S, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    assert out.returncode != 0, out.stdout[-2000:]
    line = f"hostfile {tmp_path / 'hosts.txt'} does not exist (the DeepSpeed launcher would train on this node alone)"
    assert line in out.stdout, out.stdout[-2000:]
    assert not os.path.exists(tmp_path / "run" / "checkpoints")


def test_a_global_batch_that_does_not_divide_is_said_once_not_once_per_rank(tmp_path):
    """Two ranks, a global batch they cannot divide: every rank exits 2, one line says why and how to fix it."""
    deepspeed_cmd = launcher_cmd("vit_tiny_mae.py", [f"output_dir={tmp_path / 'run'}", "train.global_batch=96"],
                                 ranks=2)
    out = subprocess.run(deepspeed_cmd, cwd=str(tmp_path), env=env(), timeout=TIMEOUT_S, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    assert out.returncode != 0
    said = [line for line in out.stdout.splitlines() if "train.global_batch=96 is not a multiple" in line]
    assert len(said) == 1, out.stdout[-3000:]
    assert "set train.micro_batch=24 (accumulation 2), 16 (accumulation 3) or 12 (accumulation 4)" in said[0]
