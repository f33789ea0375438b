"""Starting real two-rank DeepSpeed runs from tests: the launcher in a subprocess, a free port, a timeout."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = os.path.join(REPO, "recipes")
LAUNCH_TIMEOUT_S = 420  # the first launch on a fresh machine JIT-builds DeepSpeed's C++ ops


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launcher_cmd(recipe: str, overrides: list[str], ranks: int = 2, extra: list[str] = ()) -> list[str]:
    deepspeed = os.path.join(os.path.dirname(sys.executable), "deepspeed")
    cmd = [deepspeed, "--num_gpus", str(ranks), "--master_port", str(free_port()), os.path.join(RECIPES, recipe)]
    for o in overrides:
        cmd += ["--set", o]
    return cmd + list(extra)


def env() -> dict:
    e = dict(os.environ)
    e.update(DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    e.pop("MAWSTRON_KERNELS", None)
    e.pop("TRITON_INTERPRET", None)  # set by conftest for the in-process kernel tests only
    return e


def run(recipe: str, overrides: list[str], cwd: str, extra: list[str] = (), timeout: float = LAUNCH_TIMEOUT_S):
    """Run to completion; returns CompletedProcess (stdout and stderr merged)."""
    return subprocess.run(launcher_cmd(recipe, overrides, extra=extra), cwd=cwd, env=env(), timeout=timeout,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def run_and_kill_after(recipe: str, overrides: list[str], cwd: str, marker: str, timeout: float = LAUNCH_TIMEOUT_S):
    """Start a run and SIGKILL its whole process group as soon as ``marker`` (a path) exists: a crash mid-run.
    Returns the output so far."""
    proc = subprocess.Popen(launcher_cmd(recipe, overrides), cwd=cwd, env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.time() + timeout
    try:
        while not os.path.exists(marker):
            if proc.poll() is not None:
                raise AssertionError(f"run ended before {marker} appeared:\n{proc.stdout.read()[-3000:]}")
            if time.time() > deadline:
                raise AssertionError(f"{marker} did not appear within {timeout} s")
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        out = proc.communicate(timeout=60)[0]
    return out


def read_metrics(run_dir: str) -> list[dict]:
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def wait_for_steps(proc, run_dir, steps, timeout=LAUNCH_TIMEOUT_S):
    """Until ``run_dir/metrics.jsonl`` holds ``steps`` lines; fails if the run ends first or the time is up."""
    path, deadline = os.path.join(run_dir, "metrics.jsonl"), time.time() + timeout
    while not (os.path.exists(path) and sum(1 for _ in open(path)) >= steps):
        if proc.poll() is not None:
            raise AssertionError(f"run ended before step {steps}:\n{proc.stdout.read()[-3000:]}")
        assert time.time() < deadline, f"step {steps} not reached within {timeout} s"
        time.sleep(0.02)
