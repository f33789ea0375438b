"""Shared pieces of the kernel benchmarks (benchmarks/attention.py, benchmarks/kernels.py).

Imported before any Triton kernel module: without CUDA it sets ``TRITON_INTERPRET=1`` so that the CPU mode can
run the correctness sweep through the interpreter.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
import subprocess

import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")
    from mawstron.kernels.fused._common import single_threaded_numpy_blas

    single_threaded_numpy_blas()

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CPU_NOTE = "no CUDA device: timings need a GPU; this run is the interpreter correctness sweep on tiny shapes"


def device_name() -> str:
    return torch.cuda.get_device_name() if HAS_CUDA else f"cpu ({platform.processor() or platform.machine()})"


def device_slug() -> str:
    if not HAS_CUDA:
        return "cpu"
    return re.sub(r"[^a-z0-9]+", "-", device_name().lower()).strip("-")


def metadata() -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                                    capture_output=True, text=True, check=True).stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        commit, dirty = None, None
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {
        "device": device_name(),
        "cuda": HAS_CUDA,
        "torch": torch.__version__,
        "triton": triton_version,
        "git_commit": commit,
        "git_dirty": dirty,  # uncommitted changes to tracked files when the benchmark ran
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "interpreter": not HAS_CUDA,
    }


def copy_bandwidth_gbs(numel: int = 1 << 28, dtype=torch.bfloat16) -> float:
    """Measured device copy bandwidth: ``torch.empty_like(x).copy_(x)``, read + write bytes per second."""
    x = torch.randn(numel, device="cuda").to(dtype)
    ms = do_bench_ms(lambda: torch.empty_like(x).copy_(x))
    return 2 * x.numel() * x.element_size() / ms / 1e6


def max_err(a, b) -> float:
    return float((a.detach().double() - b.detach().double()).abs().max())


def do_bench_ms(fn, warmup_ms: int = 25, rep_ms: int = 100) -> float:
    """Median ms of ``fn`` by ``triton.testing.do_bench``: L2 flushed before each run, no per-run sync."""
    import triton.testing

    return triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median")


def write_json(result: dict, out: str | None, prefix: str) -> str:
    """Default: runs/benchmarks/ (ignored by git); committed results go to benchmarks/results/ via ``--out``."""
    path = out or os.path.join(REPO, "runs", "benchmarks", f"{prefix}-{device_slug()}.json")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    return path
