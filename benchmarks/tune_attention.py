"""Tune the fused attention's launch configs on a GPU and write them into the config table.

    python benchmarks/tune_attention.py                          # bf16, every preset shape, no time limit
    python benchmarks/tune_attention.py --budget-s 150           # stop starting new shapes after 150 s
    python benchmarks/tune_attention.py --dry-run                # any machine: print the plan, time nothing

For every table key (capability, dtype, head dim, sequence bucket) reached by N 50, 65, 197, 257, 1370 x the
heads of every preset (12, 16, 32) x head dims 64, 80, 128 (keys a preset model uses first), on the packed qkv
layout the model uses: time each forward candidate, then each backward candidate of both schedules (``fused``:
one program per (batch, head); ``split``: dK/dV then dQ kernels, dK/dV candidates first with the heuristic dQ,
then dQ candidates with the best dK/dV), pick the fastest forward and the fastest backward (which fixes the
schedule), check the winners' output and dq/dk/dv against a float32 reference at every (heads, N) of that key
(falling back to the next-fastest when a check fails), and write the entry with its device, date, commit and
timings.  Candidates that fail to compile or run (e.g. out of shared memory) are skipped and recorded.

Timing: ``triton.testing.do_bench`` median (L2 flushed).  Output: the table (``--table``, default
kernels/fused/attention_configs.json: entries merged in, others kept) and a JSON log under runs/benchmarks/ (``--out``).
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import sys
import time

import _bench_common as bc  # noqa: I001  (sets TRITON_INTERPRET=1 without CUDA, before the kernels load)
import torch

from attention import CHECK_TOL, PRESET_SHAPES, check

CFG = importlib.import_module("mawstron.kernels.fused.attention_configs")
ATTN = importlib.import_module("mawstron.kernels.fused.attention")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _c(m, n, w, s):
    return dict(BLOCK_M=m, BLOCK_N=n, num_warps=w, num_stages=s)


# every M-dimension block is 64 or 128 (wgmma); bounded so that a key costs ~20 compiles
FWD_CANDIDATES = [_c(64, 64, 4, 3), _c(128, 64, 8, 3), _c(128, 128, 8, 3), _c(128, 32, 8, 2), _c(64, 128, 4, 3),
                  _c(128, 64, 8, 2)]
BWD_KV_CANDIDATES = [_c(64, 64, 4, 2), _c(64, 64, 8, 1), _c(32, 128, 8, 2), _c(64, 128, 8, 1), _c(16, 64, 4, 3)]
BWD_Q_CANDIDATES = [_c(64, 64, 4, 2), _c(64, 64, 8, 1), _c(128, 64, 8, 2), _c(64, 32, 4, 3)]
BWD_FUSED_CANDIDATES = [_c(64, 64, 4, 2), _c(64, 64, 8, 1), _c(64, 128, 8, 1), _c(128, 64, 8, 1)]


SEQS = (50, 65, 197, 257, 1370)
HEAD_DIMS = (64, 80, 128)


def plan(dtypes):
    """[(table key, dtype name, head dim, [(label, heads, N), ...])] over N x preset heads x head dim; the keys
    that a preset model uses come first (a time budget then cuts the others)."""
    capability = torch.cuda.get_device_capability() if bc.HAS_CUDA else (9, 0)
    all_heads = sorted({h for _, h, _, _ in PRESET_SHAPES})
    model = {(d, n) for _, _, d, seqs in PRESET_SHAPES for n in seqs}
    keys = {}
    for dt in dtypes:
        for d in HEAD_DIMS:
            for n in SEQS:
                key = CFG.table_key(capability, DTYPES[dt], d, n)
                shapes = keys.setdefault((key, dt, d), [])
                shapes += [(f"H{h} N{n}", h, n) for h in all_heads]
    work = [(key, dt, d, shapes) for (key, dt, d), shapes in keys.items()]
    return sorted(work, key=lambda w: (w[1] != dtypes[0], not any((w[2], n) in model for _, _, n in w[3])))


def _time_candidates(label, candidates, make_entry, run, log):
    """[(ms, candidate)] fastest first; failures logged and skipped."""
    timed = []
    for cand in candidates:
        try:
            with CFG.trying(make_entry(cand)):
                ms = bc.do_bench_ms(run, warmup_ms=10, rep_ms=40)
            timed.append((ms, cand))
            log.append(dict(part=label, config=cand, ms=ms))
        except Exception as exc:  # out of resources, a config the compiler rejects
            log.append(dict(part=label, config=cand, error=f"{type(exc).__name__}: {str(exc)[:200]}"))
        torch.cuda.empty_cache()
    return sorted(timed, key=lambda t: t[0])


def tune_key(key, dt, d, shapes, tokens, log):
    dtype = DTYPES[dt]
    label, heads, n = max(shapes, key=lambda s: (s[2], s[1]))  # the longest sequence, then the most heads
    b = max(1, round(tokens / (heads * n)))
    qkv = torch.randn(b, n, 3 * heads * d, device="cuda", dtype=dtype, requires_grad=True)
    dout = torch.randn(b, n, heads * d, device="cuda", dtype=dtype)
    scale = 1 / math.sqrt(d)
    base = CFG.heuristic(n, d)

    def fwd():
        return ATTN.flash_attention_packed(qkv, heads, softmax_scale=scale)

    fwd_ranked = _time_candidates("fwd", FWD_CANDIDATES, lambda c: {"fwd": c}, fwd, log)
    if not fwd_ranked:
        return None
    best_fwd = fwd_ranked[0][1]
    with CFG.trying({"fwd": best_fwd}):
        out = fwd()

    def bwd():
        torch.autograd.grad(out, qkv, dout, retain_graph=True)

    bwd_ranked = [(ms, {"bwd_mode": "fused", "bwd_fused": c}) for ms, c in _time_candidates(
        "bwd fused", BWD_FUSED_CANDIDATES, lambda c: {"bwd_mode": "fused", "bwd_fused": c}, bwd, log)]
    kv_ranked = _time_candidates("bwd dk/dv", BWD_KV_CANDIDATES,
                                 lambda c: {"bwd_mode": "split", "bwd_kv": c, "bwd_q": base["bwd_q"]}, bwd, log)
    if kv_ranked:
        best_kv = kv_ranked[0][1]
        bwd_ranked += [(ms, {"bwd_mode": "split", "bwd_kv": best_kv, "bwd_q": c}) for ms, c in _time_candidates(
            "bwd dq", BWD_Q_CANDIDATES, lambda c: {"bwd_mode": "split", "bwd_kv": best_kv, "bwd_q": c}, bwd, log)]
    bwd_ranked.sort(key=lambda t: t[0])
    del out
    for fwd_ms, fwd_cfg in fwd_ranked:
        for bwd_ms, bwd_cfg in bwd_ranked:
            entry = {"fwd": fwd_cfg, **bwd_cfg}
            checks = {}
            with CFG.trying(entry):
                for shape_label, h, n_check in shapes:
                    fn = lambda qkv_, h_, s_: ATTN.flash_attention_packed(qkv_, h_, softmax_scale=s_)  # noqa: E731
                    checks[shape_label] = check(fn, 2, h, n_check, d, dtype, "cuda")
            if all(c["ok"] for c in checks.values()):
                return dict(entry, fwd_ms=fwd_ms, bwd_ms=bwd_ms, tuned_on=dict(batch=b, heads=heads,
                                                                                seq=n), checks=checks)
            log.append(dict(part="check", config=entry, error="failed the gradient check", checks=checks))
    return None


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dtype", action="append", choices=sorted(DTYPES), help="default: bf16 (repeatable)")
    p.add_argument("--budget-s", type=float, default=None, help="start no new key after this many seconds")
    p.add_argument("--tokens", type=int, default=1 << 19, help="batch * heads * seq of the tuned shape")
    p.add_argument("--table", default=str(CFG.TABLE_PATH), help="config table to update")
    p.add_argument("--out", help="JSON log (default runs/benchmarks/tune-attention-<device>.json)")
    p.add_argument("--dry-run", action="store_true", help="print the plan and exit (no GPU needed)")
    args = p.parse_args(argv)
    work = plan(args.dtype or ["bf16"])
    print(f"{len(work)} table keys; candidates per key: fwd {len(FWD_CANDIDATES)}, bwd fused "
          f"{len(BWD_FUSED_CANDIDATES)}, split dK/dV {len(BWD_KV_CANDIDATES)} + dQ {len(BWD_Q_CANDIDATES)}")
    for key, _, _, shapes in work:
        print(f"  {key}: " + ", ".join(label for label, _, _ in shapes))
    if args.dry_run or not bc.HAS_CUDA:
        if not bc.HAS_CUDA and not args.dry_run:
            print("no CUDA device: nothing tuned (the plan above is what a GPU run would do)")
        return 0
    meta = bc.metadata()
    source = f"tuned on {meta['device']}, {meta['date']}, commit {meta['git_commit']}, Triton {meta['triton']}"
    with open(args.table) as f:
        table = json.load(f)
    entries = table.setdefault("entries", {})
    start, results = time.time(), {}
    for key, dt, d, shapes in work:
        if args.budget_s is not None and time.time() - start > args.budget_s:
            results[key] = dict(skipped="time budget spent")
            print(f"{key}: skipped (time budget)", flush=True)
            continue
        log = []
        t0 = time.time()
        found = tune_key(key, dt, d, shapes, args.tokens, log)
        results[key] = dict(result=found, log=log, seconds=time.time() - t0)
        if found is None:
            print(f"{key}: no candidate passed; table entry left as it was", flush=True)
            continue
        entries[key] = {k: found[k] for k in ("fwd", "bwd_kv", "bwd_q", "bwd_fused", "bwd_mode") if k in found}
        entries[key]["source"] = f"{source}; fwd {found['fwd_ms']:.3f} ms, bwd {found['bwd_ms']:.3f} ms at " \
                                 f"{found['tuned_on']}"
        print(f"{key}: fwd {found['fwd']} {found['fwd_ms']:.3f} ms; bwd {found['bwd_mode']} "
              f"{found['bwd_ms']:.3f} ms ({time.time() - t0:.0f} s)", flush=True)
        with open(args.table, "w") as f:  # after every key: a killed run keeps what it finished
            json.dump(table, f, indent=1, sort_keys=True)
            f.write("\n")
    path = bc.write_json({"benchmark": "tune_attention", **meta, "check_tolerance": {str(k)[6:]: v for k, v in
                                                                                      CHECK_TOL.items()},
                          "keys": results, "table": os.path.abspath(args.table)}, args.out, "tune-attention")
    print(f"wrote {args.table} and {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
