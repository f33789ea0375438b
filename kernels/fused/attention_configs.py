"""Launch configs of the fused attention: a table tuned on GPUs, with a heuristic for anything not in it.

``attention_configs.json`` (next to this file, written by ``benchmarks/tune_attention.py``) maps
``"sm<capability>/<dtype>/d<head dim>/n<sequence bucket>"`` to::

    {"fwd":       {"BLOCK_M": .., "BLOCK_N": .., "num_warps": .., "num_stages": ..},
     "bwd_kv":    {...},   # split schedule, dK/dV kernel: BLOCK_N is the program's key block (the dots' M)
     "bwd_q":     {...},   # split schedule, dQ kernel: BLOCK_M is the program's query block (the dots' M)
     "bwd_fused": {...},   # fused schedule: BLOCK_N key block (M of 4 dots), BLOCK_M query block (M of dQ's dot)
     "bwd_mode":  "fused" | "split" | null,   # null: choose by batch * heads (``backward_mode``)
     "source":    "..."}   # how the entry was obtained (tuner: device, date, commit; or "untuned")

The sequence bucket is the next power of two of the sequence length (``seq_bucket``).  Entries may give only some
of the keys; the rest come from ``heuristic``.  Every block that is a dot's M dimension is 64 or 128, so that
Triton lowers it to Hopper's wgmma (checked from PTX by tests/test_kernels_compile.py).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
from pathlib import Path

import triton

from ._common import interpreting

TABLE_PATH = Path(__file__).with_name("attention_configs.json")
DTYPE_NAMES = {"torch.float16": "fp16", "torch.bfloat16": "bf16", "torch.float32": "fp32"}
PARTS = ("fwd", "bwd_kv", "bwd_q", "bwd_fused")
MODES = ("fused", "split")


def head_dim_split(d: int) -> tuple[int, int]:
    """(D0, D1): a power-of-two chunk plus a power-of-two tail (0: none), each >= 16 (tl.dot's minimum).

    80 -> (64, 16), 96 -> (64, 32), 72 -> (64, 16) with 8 lanes masked; a split that saves nothing over the next
    power of two (112 -> 64 + 64 = 128) is not made.
    """
    full = max(16, triton.next_power_of_2(d))
    d0 = max(16, 1 << (d.bit_length() - 1))
    if d0 >= d:
        return full, 0
    d1 = max(16, triton.next_power_of_2(d - d0))
    return (d0, d1) if d0 + d1 < full else (full, 0)


def seq_bucket(n: int) -> int:
    return max(16, triton.next_power_of_2(n))


def table_key(capability, dtype, d: int, n: int) -> str:
    major, minor = capability
    return f"sm{major}{minor}/{DTYPE_NAMES.get(str(dtype), str(dtype))}/d{d}/n{seq_bucket(n)}"


def heuristic(n: int, d: int) -> dict:
    """Untuned block sizes (no GPU was available when these were written).

    Interpreter: 64 x 64 everywhere (measured faster than 128 x 128 there).  GPU: 128-row query blocks in the
    forward once the sequence fills them; 64-row program blocks in the backward, whose programs hold two float32
    accumulators of the block x head dim (dK and dV).  Wide heads get 8 warps.
    """
    if interpreting():
        blocks = dict(BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=1)
        return {part: dict(blocks) for part in PARTS} | {"bwd_mode": None, "source": "interpreter"}
    d0, d1 = head_dim_split(d)
    width = d0 + d1
    wide = width > 64
    block_m = 64 if n <= 128 else 128
    fwd = dict(BLOCK_M=block_m, BLOCK_N=32 if wide else 64, num_warps=4 if block_m == 64 else 8,
               num_stages=2 if wide else 3)
    bwd = dict(BLOCK_M=64, BLOCK_N=64, num_warps=8 if wide else 4, num_stages=1 if wide else 2)
    return {"fwd": fwd, "bwd_kv": dict(bwd), "bwd_q": dict(bwd), "bwd_fused": dict(bwd),
            "bwd_mode": None, "source": "heuristic"}


@functools.lru_cache(maxsize=1)
def load_table(path: str | None = None) -> dict:
    path = Path(path or os.environ.get("MAWSTRON_ATTENTION_CONFIGS", TABLE_PATH))
    if not path.exists():
        return {}
    with open(path) as f:
        table = json.load(f)
    return table.get("entries", table)


_OVERRIDE: list[dict] = []  # set by ``trying`` (the tuner): an entry used for every shape while it is active


@contextlib.contextmanager
def trying(entry: dict):
    """Launch every attention call with ``entry`` (over the heuristic) instead of the table, e.g. to time it."""
    _OVERRIDE.append(entry)
    try:
        yield
    finally:
        _OVERRIDE.pop()


def lookup(capability, dtype, n: int, d: int) -> dict:
    """The launch configs for one shape: the table's entry over the heuristic (the interpreter never reads it)."""
    cfg = heuristic(n, d)
    if _OVERRIDE:
        entry = _OVERRIDE[-1]
    elif interpreting() or capability is None:
        return cfg
    else:
        entry = load_table().get(table_key(capability, dtype, d, n))
    if entry:
        for part in PARTS:
            if part in entry:
                cfg[part] = dict(cfg[part], **entry[part])
        cfg["bwd_mode"] = entry.get("bwd_mode", cfg["bwd_mode"])
        cfg["source"] = entry.get("source", "table")
    return cfg


def backward_mode(cfg: dict, batch_heads: int, sm_count: int) -> str:
    """fused (5 matmuls) unless batch * heads is too small to fill the GPU with one program per (batch, head).

    A table entry's schedule is kept, except a tuned ``fused`` when batch * heads is below the SM count.

    ``MAWSTRON_ATTENTION_BWD=fused|split`` overrides (tests run both schedules; the tuner times both).
    """
    forced = os.environ.get("MAWSTRON_ATTENTION_BWD")
    if forced:
        if forced not in MODES:
            raise ValueError(f"MAWSTRON_ATTENTION_BWD={forced!r}: expected one of {MODES}")
        return forced
    if interpreting():
        return cfg.get("bwd_mode") or "fused"
    if cfg.get("bwd_mode") == "split" or (cfg.get("bwd_mode") == "fused" and batch_heads >= sm_count):
        return cfg["bwd_mode"]  # tuned at a training batch; fused below one (batch, head) per SM would idle SMs
    return "fused" if batch_heads >= 2 * sm_count else "split"
