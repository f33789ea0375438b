"""Attention benchmark: the Triton FlashAttention kernel against SDPA's backends and the unfused PyTorch version.

    python benchmarks/attention.py                       # GPU: every preset shape, bf16, JSON to runs/benchmarks/
    python benchmarks/attention.py --dtype fp16 --out benchmarks/results/attention-h100-fp16.json
    python benchmarks/attention.py --tiny                # CPU: quick correctness sweep only

Shapes are the ViT attention shapes of every preset: MAE encoder (25 % of the patches + class token: 50 for /16
and 65 for /14 at 224 px), full sequence (197, 257) and fine-tuning at 518 px with /14 (1370); head dims 64
(B/16, L/16), 80 (H/14, 2B/14) and 128 (6.5B/14).  The batch is chosen so that batch * heads * seq is about
``--tokens`` (fills an H100).  Backends: ``triton`` (kernels/attention.py), SDPA with each of flash,
efficient, cudnn and math (``torch.nn.attention.sdpa_kernel``), and ``unfused`` (``softmax(q k^T * s) v``).
Reported per backend, forward and forward+backward: median milliseconds over CUDA-event-timed runs, TFLOP/s
(4 * B * H * N^2 * D forward, 2.5 x that for backward) and GB/s of the minimum HBM traffic (q, k, v, o; plus dO,
dq, dk, dv in backward).  A backend that refuses a shape is recorded with its error.

Without CUDA the script runs the correctness sweep through the Triton interpreter on tiny shapes, records that
timings need a GPU, writes the JSON and exits 0.
"""

from __future__ import annotations

import argparse
import math
import sys

import _bench_common as bc  # noqa: I001  (sets TRITON_INTERPRET=1 without CUDA, before the kernels load)
import torch
import torch.nn.functional as F

# (preset, heads, head_dim, sequence lengths: MAE encoder, full, 518 px fine-tune)
PRESET_SHAPES = (
    ("vit_b16", 12, 64, (50, 197)),
    ("vit_l16", 16, 64, (50, 197)),
    ("vit_h14", 16, 80, (65, 257, 1370)),
    ("vit_2b14", 32, 80, (65, 257, 1370)),
    ("vit_6.5b14", 32, 128, (65, 257, 1370)),
)
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def unfused(q, k, v, scale):
    return torch.softmax((q @ k.transpose(-1, -2)) * scale, -1) @ v


def backends():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from mawstron.kernels.attention import flash_attention

    def sdpa(backend):
        def run(q, k, v, scale):
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(q, k, v, scale=scale)

        return run

    return {
        "triton": lambda q, k, v, s: flash_attention(q, k, v, softmax_scale=s),
        "sdpa_flash": sdpa(SDPBackend.FLASH_ATTENTION),
        "sdpa_efficient": sdpa(SDPBackend.EFFICIENT_ATTENTION),
        "sdpa_cudnn": sdpa(SDPBackend.CUDNN_ATTENTION),
        "sdpa_math": sdpa(SDPBackend.MATH),
        "unfused": unfused,
    }


def bench_shape(preset, b, h, n, d, dtype, reps):
    scale = 1 / math.sqrt(d)
    q, k, v = (torch.randn(b, h, n, d, device="cuda", dtype=dtype, requires_grad=True) for _ in range(3))
    do = torch.randn_like(q)
    fwd_flops = 4 * b * h * n * n * d
    elem = q.element_size()
    fwd_bytes = 4 * b * h * n * d * elem
    bwd_bytes = 8 * b * h * n * d * elem + fwd_bytes
    row = dict(preset=preset, batch=b, heads=h, seq=n, head_dim=d, dtype=str(dtype)[6:], backends={})
    reference = None
    if n * b * h <= 1 << 16:  # small enough for a float64 check of every backend's output
        reference = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), scale=scale)
    for name, fn in backends().items():
        entry = {}
        try:
            out = fn(q, k, v, scale)
            if reference is not None:
                entry["max_abs_err_vs_fp64"] = bc.max_err(out, reference)
            ms = bc.cuda_time_ms(lambda: fn(q, k, v, scale), reps=reps)

            def fwd_bwd():
                q.grad = k.grad = v.grad = None
                fn(q, k, v, scale).backward(do)

            ms_fb = bc.cuda_time_ms(fwd_bwd, reps=reps)
            entry.update(
                fwd_ms=ms, fwd_tflops=fwd_flops / ms / 1e9, fwd_gbs=fwd_bytes / ms / 1e6,
                fwd_bwd_ms=ms_fb, fwd_bwd_tflops=3.5 * fwd_flops / ms_fb / 1e9, fwd_bwd_gbs=bwd_bytes / ms_fb / 1e6,
            )
        except Exception as e:  # a backend that does not support this shape/dtype/GPU
            entry["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
        row["backends"][name] = entry
        torch.cuda.empty_cache()
    return row


def gpu_sweep(args):
    dtype = DTYPES[args.dtype]
    rows = []
    for preset, h, d, seqs in PRESET_SHAPES:
        for n in seqs:
            b = max(1, round(args.tokens / (h * n)))
            row = bench_shape(preset, b, h, n, d, dtype, args.reps)
            rows.append(row)
            t = row["backends"]
            print(f"{preset:11s} B={b:4d} H={h:2d} N={n:5d} D={d:3d}  " + "  ".join(
                f"{k}: {v['fwd_tflops']:.0f}/{v['fwd_bwd_tflops']:.0f}" if "fwd_tflops" in v else f"{k}: n/a"
                for k, v in t.items()) + "  (TFLOP/s fwd/fwd+bwd)", flush=True)
    return rows


def cpu_sweep(tiny: bool):
    """Interpreter correctness on tiny shapes: forward and gradients vs float64, fp32 and fp16."""
    from mawstron.kernels.attention import flash_attention

    cases = [(50, 64, torch.float32)] if tiny else [
        (50, 64, torch.float32), (65, 80, torch.float32), (197, 128, torch.float32),
        (50, 64, torch.float16), (65, 80, torch.float16), (197, 128, torch.float16),
    ]
    tol = {torch.float32: 2e-5, torch.float16: 5e-3}
    rows = []
    for n, d, dtype in cases:
        torch.manual_seed(n * d)
        q, k, v = (torch.randn(1, 2, n, d, dtype=dtype, requires_grad=True) for _ in range(3))
        out = flash_attention(q, k, v)
        do = torch.randn_like(out)
        out.backward(do)
        refs = [t.detach().double().requires_grad_() for t in (q, k, v)]
        ref = F.scaled_dot_product_attention(*refs)
        ref.backward(do.double())
        errs = {"out": bc.max_err(out, ref)}
        errs.update({f"d{name}": bc.max_err(a.grad, r.grad) for name, a, r in zip("qkv", (q, k, v), refs)})
        ok = all(e <= tol[dtype] * 4 for e in errs.values())  # tolerance x max |value| ~ 4 for N(0, 1) data
        rows.append(dict(seq=n, head_dim=d, dtype=str(dtype)[6:], max_abs_err_vs_fp64=errs, ok=ok))
        print(f"interpreter N={n:4d} D={d:3d} {str(dtype)[6:]:8s} " + " ".join(f"{k}={e:.1e}" for k, e in errs.items())
              + ("  ok" if ok else "  FAIL"), flush=True)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", help="JSON path (default runs/benchmarks/attention-<device>.json)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    p.add_argument("--tokens", type=int, default=1 << 20, help="target batch * heads * seq per shape")
    p.add_argument("--reps", type=int, default=30, help="timed runs per measurement (median reported)")
    p.add_argument("--tiny", action="store_true", help="CPU mode: one tiny correctness case only")
    args = p.parse_args(argv)
    result = {"benchmark": "attention", **bc.metadata()}
    if bc.HAS_CUDA:
        result.update(dtype=args.dtype, tokens=args.tokens, reps=args.reps,
                      flops="fwd 4*B*H*N^2*D, bwd 2.5x fwd", rows=gpu_sweep(args))
        ok = True
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
