"""Attention benchmark: the Triton FlashAttention kernel against every SDPA backend, on the layout the model uses.

    python benchmarks/attention.py                       # GPU: every preset shape, bf16, JSON to runs/benchmarks/
    python benchmarks/attention.py --out benchmarks/results/attention-h100-bf16.json   # a result to commit
    python benchmarks/attention.py --tiny                # CPU: quick interpreter correctness sweep only

Shapes are the ViT attention shapes of every preset: MAE encoder (25 % of the patches + class token: 50 for /16
and 65 for /14 at 224 px), full sequence (197, 257) and fine-tuning at 518 px with /14 (1370); head dims 64
(B/16, L/16), 80 (H/14, 2B/14) and 128 (6.5B/14).  The batch is chosen so that batch * heads * seq is about
``--tokens``.  Every backend starts from the model's packed ``qkv [B, N, 3*H*D]`` and returns ``[B, N, H*D]``:
``triton_packed`` (flash_attention_packed, what the ViT calls), ``triton_bhnd`` (flash_attention on the strided
[B, H, N, D] views), and SDPA through timm's path (strided views in, output transposed back) with default
dispatch and each of flash, efficient, cuDNN and math forced.

Before a shape is timed, every backend's output and dq/dk/dv are checked against a float32 reference at that
shape (sequence, heads and head dim as timed, batch capped by ``--check-batch`` to bound the reference's N x N
memory); a backend that fails the check is recorded as failed and not timed.  Timing: ``triton.testing.do_bench``
(L2 flushed before every repetition, CUDA events, no synchronisation per repetition; median), forward, backward
(autograd.grad of a retained graph) and forward+backward separately.  Reported: ms, TFLOP/s (forward
4*B*H*N^2*D, backward 2.5x that) and, for N <= 257 where attention is bandwidth bound, GB/s of the minimum HBM
traffic (qkv read and out written forward; qkv, out and dout read and dqkv written backward).

Without CUDA the script runs the correctness sweep through the Triton interpreter (both backward schedules, the
packed and [B, H, N, D] entries) on small shapes, records ``timings: null``, writes the JSON and exits 0.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

import _bench_common as bc  # noqa: I001  (sets TRITON_INTERPRET=1 without CUDA, before the kernels load)
import torch
import torch.nn.functional as F

from mawstron.core.flops import attention_shapes

# (preset, heads, head_dim, sequence lengths: MAE encoder, full, 518 px fine-tune)
PRESET_SHAPES = attention_shapes()
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# max |error| / max |reference| allowed against the float32 reference, per input dtype
CHECK_TOL = {torch.bfloat16: 2e-2, torch.float16: 4e-3, torch.float32: 1e-4}


def split_heads(qkv, heads):
    b, n, three_hd = qkv.shape
    return qkv.view(b, n, 3, heads, three_hd // (3 * heads)).permute(2, 0, 3, 1, 4).unbind(0)


def backends():
    """name -> fn(qkv [B, N, 3HD], heads, scale) -> [B, N, HD]."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from mawstron.kernels.fused.attention import flash_attention, flash_attention_packed

    def merge(o):
        return o.transpose(1, 2).flatten(2)

    def sdpa(backend=None):
        def run(qkv, heads, scale):
            q, k, v = split_heads(qkv, heads)
            if backend is None:
                return merge(F.scaled_dot_product_attention(q, k, v, scale=scale))
            with sdpa_kernel(backend):
                return merge(F.scaled_dot_product_attention(q, k, v, scale=scale))

        return run

    return {
        "triton_packed": lambda qkv, h, s: flash_attention_packed(qkv, h, softmax_scale=s),
        "triton_bhnd": lambda qkv, h, s: merge(flash_attention(*split_heads(qkv, h), softmax_scale=s)),
        "sdpa_default": sdpa(),
        "sdpa_flash": sdpa(SDPBackend.FLASH_ATTENTION),
        "sdpa_efficient": sdpa(SDPBackend.EFFICIENT_ATTENTION),
        "sdpa_cudnn": sdpa(SDPBackend.CUDNN_ATTENTION),
        "sdpa_math": sdpa(SDPBackend.MATH),
    }


def reference(qkv, heads, scale):
    """float32 attention from the same (rounded) inputs: output and the softmax in full precision."""
    q, k, v = (t.float() for t in split_heads(qkv, heads))
    p = torch.softmax((q @ k.transpose(-1, -2)) * scale, -1)
    return (p @ v).transpose(1, 2).flatten(2)


def relative_error(a, r) -> float:
    a, r = a.detach(), r.detach()
    return float((a.float() - r.float()).abs().max() / r.float().abs().max().clamp_min(1e-30))


def check(fn, b, h, n, d, dtype, device, seed=0) -> dict:
    """Output and dqkv of ``fn`` vs the float32 reference at (b, h, n, d): relative errors and ``ok``."""
    gen = torch.Generator(device=device).manual_seed(seed)
    qkv = torch.randn(b, n, 3 * h * d, device=device, dtype=dtype, generator=gen).requires_grad_()
    dout = torch.randn(b, n, h * d, device=device, dtype=dtype, generator=gen)
    scale = 1 / math.sqrt(d)
    out = fn(qkv, h, scale)
    (dqkv,) = torch.autograd.grad(out, qkv, dout)
    ref_in = qkv.detach().float().requires_grad_()
    ref = reference(ref_in, h, scale)
    (ref_dqkv,) = torch.autograd.grad(ref, ref_in, dout.float())
    errs = {"out": relative_error(out, ref)}
    grads = zip(dqkv.view(b, n, 3, -1).unbind(2), ref_dqkv.view(b, n, 3, -1).unbind(2))
    for name, (got, want) in zip(("dq", "dk", "dv"), grads):
        errs[name] = relative_error(got, want)
    return dict(check_batch=b, rel_err_vs_fp32=errs, ok=all(e <= CHECK_TOL[dtype] for e in errs.values()))


def bench_shape(preset, b, h, n, d, dtype, args):
    import triton.testing

    scale = 1 / math.sqrt(d)
    qkv = torch.randn(b, n, 3 * h * d, device="cuda", dtype=dtype, requires_grad=True)
    dout = torch.randn(b, n, h * d, device="cuda", dtype=dtype)
    fwd_flops = 4 * b * h * n * n * d
    e = qkv.element_size()
    fwd_bytes = 4 * b * h * n * d * e  # q, k, v read; out written
    bwd_bytes = 8 * b * h * n * d * e  # q, k, v, out, dout read; dq, dk, dv written
    row = dict(preset=preset, batch=b, heads=h, seq=n, head_dim=d, dtype=str(dtype)[6:], backends={})

    def bench(fn):
        return triton.testing.do_bench(fn, warmup=args.warmup_ms, rep=args.rep_ms, return_mode="median")

    for name, fn in backends().items():
        entry = {}
        try:
            entry.update(check(fn, min(b, args.check_batch), h, n, d, dtype, "cuda"))
            if not entry["ok"]:
                entry["error"] = "failed the correctness check: not timed"
            else:
                out = fn(qkv, h, scale)
                fwd = bench(lambda: fn(qkv, h, scale))
                bwd = bench(lambda: torch.autograd.grad(out, qkv, dout, retain_graph=True))
                both = bench(lambda: torch.autograd.grad(fn(qkv, h, scale), qkv, dout))
                del out
                entry.update(fwd_ms=fwd, bwd_ms=bwd, fwd_bwd_ms=both,
                             fwd_tflops=fwd_flops / fwd / 1e9, bwd_tflops=2.5 * fwd_flops / bwd / 1e9,
                             fwd_bwd_tflops=3.5 * fwd_flops / both / 1e9)
                if n <= 257:
                    entry.update(fwd_gbs=fwd_bytes / fwd / 1e6, bwd_gbs=bwd_bytes / bwd / 1e6,
                                 fwd_bwd_gbs=(fwd_bytes + bwd_bytes) / both / 1e6)
        except Exception as exc:  # a backend that does not support this shape/dtype/GPU
            entry["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        row["backends"][name] = entry
        torch.cuda.empty_cache()
    timed = {k: v for k, v in row["backends"].items() if "fwd_bwd_ms" in v and k.startswith("sdpa")}
    if timed and "fwd_bwd_ms" in row["backends"]["triton_packed"]:
        best = min(timed, key=lambda k: timed[k]["fwd_bwd_ms"])
        row["best_sdpa"] = best
        row["triton_packed_speedup_vs_best_sdpa"] = timed[best]["fwd_bwd_ms"] / row["backends"]["triton_packed"][
            "fwd_bwd_ms"]
    return row


def gpu_sweep(args, save=lambda rows: None):
    """Every preset shape; ``save(rows)`` after each, so a run stopped at a time budget keeps what finished."""
    dtype = DTYPES[args.dtype]
    rows = []
    for preset, h, d, seqs in PRESET_SHAPES:
        for n in seqs:
            if args.seqs and n not in args.seqs:
                continue
            b = max(1, round(args.tokens / (h * n)))
            row = bench_shape(preset, b, h, n, d, dtype, args)
            rows.append(row)
            save(rows)
            t = row["backends"]
            print(f"{preset:11s} B={b:4d} H={h:2d} N={n:5d} D={d:3d}  " + "  ".join(
                f"{k}: {v['fwd_tflops']:.0f}/{v['bwd_tflops']:.0f}/{v['fwd_bwd_tflops']:.0f}"
                if "fwd_tflops" in v else f"{k}: n/a" for k, v in t.items())
                + "  (TFLOP/s fwd/bwd/fwd+bwd)", flush=True)
    return rows


def cpu_sweep(tiny: bool):
    """Interpreter correctness: forward and every gradient vs float32, both backward schedules, both entries."""
    from mawstron.kernels.fused.attention import flash_attention, flash_attention_packed

    fns = {"triton_packed": lambda qkv, h, s: flash_attention_packed(qkv, h, softmax_scale=s),
           "triton_bhnd": lambda qkv, h, s: flash_attention(*split_heads(qkv, h), softmax_scale=s
                                                            ).transpose(1, 2).flatten(2)}
    cases = [(50, 2, 64, torch.float32)] if tiny else [
        (50, 2, 64, torch.float32), (65, 2, 80, torch.float32), (197, 1, 128, torch.float32),
        (50, 2, 64, torch.float16), (65, 2, 80, torch.float16),
    ]
    rows = []
    for mode in ("fused", "split"):
        os.environ["MAWSTRON_ATTENTION_BWD"] = mode
        try:
            for n, h, d, dtype in cases:
                for name, fn in fns.items():
                    if tiny and name == "triton_bhnd":
                        continue
                    result = check(fn, 1, h, n, d, dtype, "cpu", seed=n * d)
                    rows.append(dict(entry=name, backward=mode, seq=n, heads=h, head_dim=d, dtype=str(dtype)[6:],
                                     **result))
                    print(f"interpreter {name:13s} bwd={mode:5s} N={n:4d} D={d:3d} {str(dtype)[6:]:8s} "
                          + " ".join(f"{k}={v:.1e}" for k, v in result["rel_err_vs_fp32"].items())
                          + ("  ok" if result["ok"] else "  FAIL"), flush=True)
        finally:
            del os.environ["MAWSTRON_ATTENTION_BWD"]
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", help="JSON path (default runs/benchmarks/attention-<device>.json; "
                                 "commit results with --out benchmarks/results/...)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    p.add_argument("--tokens", type=int, default=1 << 20, help="target batch * heads * seq per shape")
    p.add_argument("--seqs", type=int, nargs="*", help="only these sequence lengths")
    p.add_argument("--check-batch", type=int, default=4, help="batch of the correctness check at each shape")
    p.add_argument("--warmup-ms", type=int, default=25)
    p.add_argument("--rep-ms", type=int, default=100, help="do_bench's time budget per measurement")
    p.add_argument("--tiny", action="store_true", help="CPU mode: one tiny correctness case only")
    args = p.parse_args(argv)
    result = {"benchmark": "attention", **bc.metadata()}
    if bc.HAS_CUDA:
        result.update(dtype=args.dtype, tokens=args.tokens, timer="triton.testing.do_bench (median, L2 flushed)",
                      flops="fwd 4*B*H*N^2*D, bwd 2.5x fwd", layout="packed qkv [B, N, 3HD] -> [B, N, HD]")
        rows = gpu_sweep(args, save=lambda rows: bc.write_json(dict(result, rows=rows, complete=False), args.out,
                                                               "attention"))
        result.update(rows=rows, complete=True)
        ok = all(r["backends"]["triton_packed"].get("ok") for r in rows)
    else:
        print(bc.CPU_NOTE)
        rows = cpu_sweep(args.tiny)
        ok = all(r["ok"] for r in rows)
        result.update(note=bc.CPU_NOTE, timings=None, correctness=rows)
    path = bc.write_json(result, args.out, "attention")
    print(f"wrote {path}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
