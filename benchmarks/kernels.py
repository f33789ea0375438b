"""Memory-bound kernel benchmark: LayerNorm, add+LayerNorm, MAE gather / un-shuffle, MAE loss (Triton vs the
PyTorch reference), reported against the device's measured copy bandwidth.

    python benchmarks/kernels.py                 # GPU: preset shapes, bf16, JSON to runs/benchmarks/
    python benchmarks/kernels.py --out benchmarks/results/kernels-h100-bf16.json   # a result to commit
    python benchmarks/kernels.py --tiny          # CPU: quick correctness sweep only

Per op and shape: median milliseconds (``triton.testing.do_bench``: L2 flushed, no per-run sync) of the
forward alone and of the backward alone (``torch.autograd.grad`` of a retained graph with a precomputed output
gradient, so nothing but the op's own kernels is timed) for ``triton`` and ``reference`` (the plain-PyTorch op
in kernels/ops.py), GB/s of the minimum traffic (every input read once, every output written once), and that as
a fraction of ``copy_gbs``, the measured ``torch.empty_like(x).copy_(x)`` bandwidth.  Without CUDA: interpreter
correctness on tiny shapes, JSON written with ``timings: null``, exit 0.
"""

from __future__ import annotations

import argparse
import os
import sys

import _bench_common as bc  # noqa: I001  (sets TRITON_INTERPRET=1 without CUDA, before the kernels load)
import torch

from mawstron.kernels import ops

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
WIDTHS = {"vit_b16": 768, "vit_l16": 1024, "vit_h14": 1280, "vit_2b14": 2560, "vit_6.5b14": 4096}


def _impls(op):
    from mawstron.kernels.fused.layer_norm import fused_add_layer_norm, fused_layer_norm
    from mawstron.kernels.fused.mae_loss import fused_mae_loss
    from mawstron.kernels.fused.masking import fused_gather_visible_tokens, fused_unshuffle_with_mask_tokens

    return {
        "layer_norm": (fused_layer_norm, ops.layer_norm_reference),
        "add_layer_norm": (fused_add_layer_norm, ops.add_layer_norm_reference),
        "gather_visible_tokens": (fused_gather_visible_tokens, ops.gather_visible_tokens_reference),
        "unshuffle_with_mask_tokens": (fused_unshuffle_with_mask_tokens, ops.unshuffle_with_mask_tokens_reference),
        "mae_loss": (fused_mae_loss, ops.mae_loss_reference),
    }[op]


def make_case(op, b, length, d, dtype, device):
    """(differentiable inputs, all call args, traffic in bytes fwd, fwd+bwd)."""
    e = torch.empty((), dtype=dtype).element_size()

    def r(*shape):
        return torch.randn(*shape, device=device, dtype=dtype, requires_grad=True)

    if op == "layer_norm":
        x, w, bb = r(b, length, d), r(d), r(d)
        n = b * length * d
        return (x, w, bb), (x, w, bb, 1e-6), 2 * n * e, 5 * n * e
    if op == "add_layer_norm":
        x, res, w, bb = r(b, length, d), r(b, length, d), r(d), r(d)
        n = b * length * d
        return (x, res, w, bb), (x, res, w, bb, 1e-6), 4 * n * e, 9 * n * e
    if op == "gather_visible_tokens":
        keep = length // 4
        x, pos = r(b, length, d), r(1, length, d)
        ids = torch.stack([torch.randperm(length, device=device)[:keep] for _ in range(b)])
        n = b * keep * d
        return (x, pos), (x, pos, ids), 3 * n * e, 3 * n * e + (b * length * d + n) * e
    if op == "unshuffle_with_mask_tokens":
        keep = length // 4
        x, mt, pos = r(b, 1 + keep, d), r(1, 1, d), r(1, 1 + length, d)
        ids = torch.stack([torch.argsort(torch.randperm(length, device=device)) for _ in range(b)])
        n = b * (1 + length) * d
        return (x, mt, pos), (x, mt, ids, pos), (b * (1 + keep) * d + n) * e, 2 * (b * (1 + keep) * d + n) * e
    if op == "mae_loss":
        pred, target = r(b, length, d), torch.randn(b, length, d, device=device, dtype=dtype)
        mask = (torch.rand(b, length, device=device) < 0.75).float()
        n = b * length * d
        return (pred,), (pred, target, mask), 2 * n * e, 5 * n * e
    raise KeyError(op)


def gpu_cases():
    for preset, d in WIDTHS.items():
        tokens = 197 if preset.endswith("16") else 257
        yield "layer_norm", preset, 64, tokens, d
        yield "add_layer_norm", preset, 64, tokens, d
        yield "gather_visible_tokens", preset, 256, tokens - 1, d
    for length, p in ((196, 768), (256, 588)):  # /16 and /14 at 224 px; MAE decoder width 512
        yield "unshuffle_with_mask_tokens", "mae_decoder_512", 256, length, 512
        yield "mae_loss", f"patch_pixels_{p}", 256, length, p


def _loss(out):
    outs = out if isinstance(out, tuple) else (out,)
    return sum(o.float().sum() for o in outs)


def gpu_sweep(args, copy_gbs):
    dtype = DTYPES[args.dtype]
    rows = []
    # the kernels alone: the masking ops' id check (a sort and a host sync per call) is off while timing
    os.environ["MAWSTRON_CHECK_IDS"] = "0"
    for op, preset, b, length, d in gpu_cases():
        diff, call, fwd_bytes, fb_bytes = make_case(op, b, length, d, dtype, "cuda")
        bwd_bytes = fb_bytes - fwd_bytes
        row = dict(op=op, preset=preset, batch=b, seq=length, width=d, dtype=args.dtype, impls={})
        for name, fn in zip(("triton", "reference"), _impls(op)):
            out = fn(*call)
            outs = out if isinstance(out, tuple) else (out,)
            grads = [torch.randn_like(o) for o in outs]
            fwd_ms = bc.do_bench_ms(lambda: fn(*call))
            bwd_ms = bc.do_bench_ms(lambda: torch.autograd.grad(outs, diff, grads, retain_graph=True))
            fwd_gbs, bwd_gbs = fwd_bytes / fwd_ms / 1e6, bwd_bytes / bwd_ms / 1e6
            row["impls"][name] = dict(fwd_ms=fwd_ms, fwd_gbs=fwd_gbs, fwd_frac_of_copy=fwd_gbs / copy_gbs,
                                      bwd_ms=bwd_ms, bwd_gbs=bwd_gbs, bwd_frac_of_copy=bwd_gbs / copy_gbs)
            del out, outs
        rows.append(row)
        t, r = row["impls"]["triton"], row["impls"]["reference"]
        print(f"{op:27s} {preset:16s} {b}x{length}x{d}: "
              f"triton {t['fwd_gbs']:.0f}/{t['bwd_gbs']:.0f} GB/s fwd/bwd "
              f"({t['fwd_frac_of_copy']:.0%}/{t['bwd_frac_of_copy']:.0%} of copy), "
              f"reference {r['fwd_gbs']:.0f}/{r['bwd_gbs']:.0f} GB/s", flush=True)
    return rows


def cpu_sweep(tiny):
    """Interpreter correctness: forward and gradients vs the reference evaluated in float64."""
    ops_list = ("layer_norm", "add_layer_norm", "gather_visible_tokens", "unshuffle_with_mask_tokens", "mae_loss")
    shapes = [(2, 16, 48)] if tiny else [(2, 16, 48), (2, 64, 80)]
    rows = []
    for dtype in (torch.float32,) if tiny else (torch.float32, torch.float16):
        tol = 2e-5 if dtype == torch.float32 else 5e-3
        for b, length, d in shapes:
            for op in ops_list:
                torch.manual_seed(0)
                diff, call, _, _ = make_case(op, b, length, d, dtype, "cpu")
                fused, reference = _impls(op)
                out = fused(*call)
                _loss(out).backward()
                grads = [t.grad.clone() for t in diff]
                ref_diff = [t.detach().double().requires_grad_() for t in diff]
                index = {id(t): i for i, t in enumerate(diff)}
                ref_call = [ref_diff[index[id(a)]] if id(a) in index else
                            (a.double() if torch.is_tensor(a) and a.is_floating_point() else a) for a in call]
                ref_out = reference(*ref_call)
                if op == "mae_loss":  # the reference casts to float32 itself: recompute its formula in float64
                    ref_out = _mae_loss_f64(*ref_call)
                _loss(ref_out).backward()
                outs = out if isinstance(out, tuple) else (out,)
                refs = ref_out if isinstance(ref_out, tuple) else (ref_out,)
                errs = {f"out{i}": bc.max_err(o, r) / max(1.0, float(r.detach().abs().max()))
                        for i, (o, r) in enumerate(zip(outs, refs))}
                errs.update({f"grad{i}": bc.max_err(g, r.grad) / max(1e-12, float(r.grad.abs().max()))
                             for i, (g, r) in enumerate(zip(grads, ref_diff))})
                ok = all(e <= tol for e in errs.values())
                rows.append(dict(op=op, shape=[b, length, d], dtype=str(dtype)[6:], max_rel_err_vs_fp64=errs, ok=ok))
                print(f"interpreter {op:27s} {b}x{length}x{d} {str(dtype)[6:]:8s} worst rel err "
                      f"{max(errs.values()):.1e}" + ("  ok" if ok else "  FAIL"), flush=True)
    return rows


def _mae_loss_f64(pred, target, mask, norm_pix_loss=True, eps=1e-6):
    mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
    target = (target - mean) / (var + eps) ** 0.5
    per_patch = ((pred - target) ** 2).mean(-1)
    return (per_patch * mask).sum() / mask.sum()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", help="JSON path (default runs/benchmarks/kernels-<device>.json; "
                                 "commit results with --out benchmarks/results/...)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    p.add_argument("--tiny", action="store_true", help="CPU mode: a single tiny fp32 shape per op")
    args = p.parse_args(argv)
    result = {"benchmark": "kernels", **bc.metadata()}
    if bc.HAS_CUDA:
        copy_gbs = bc.copy_bandwidth_gbs(dtype=DTYPES[args.dtype])
        print(f"copy bandwidth (empty_like(x).copy_(x)): {copy_gbs:.0f} GB/s")
        result.update(dtype=args.dtype, timer="triton.testing.do_bench (median, L2 flushed)", ids_check="off",
                      copy_gbs=copy_gbs, rows=gpu_sweep(args, copy_gbs))
        ok = True
    else:
        print(bc.CPU_NOTE)
        rows = cpu_sweep(args.tiny)
        ok = all(r["ok"] for r in rows)
        result.update(note=bc.CPU_NOTE, timings=None, copy_gbs=None, correctness=rows)
    path = bc.write_json(result, args.out, "kernels")
    print(f"wrote {path}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
