"""Compile the Triton kernels for an H100 (sm_90) ahead of time, without a GPU, and read their PTX.

The interpreter runs the kernels' semantics but not Triton's compiler: this catches what only compilation
rejects (types, constexprs, dot shapes, shared memory) and shows which matmul instructions a Hopper GPU would
run (``wgmma.mma_async``, Hopper's tensor-core path, or ``mma.sync``, the Ampere one).

    python tests/_compile_kernels.py              # bf16, a representative subset of shapes (what CI runs)
    python tests/_compile_kernels.py --full       # every preset (N, D) x bf16/fp16 (+ fp32 kernels), both schedules
    python tests/_compile_kernels.py --quick      # the attention kernels of one shape (gpu_check.sh --dry-run)
    python tests/_compile_kernels.py --json F     # also write every compiled kernel's PTX counts to F
    python tests/_compile_kernels.py --table      # every entry of kernels/fused/attention_configs.json, for its GPU,
                                                  # failing if its shared memory exceeds that GPU's limit

Attention kernels are compiled with exactly the configs the launchers pick on an sm_90 GPU
(``attention.launch_plan(..., capability=(9, 0))``), for the packed qkv layout the model uses, with the
specialisations Triton's JIT would apply to those arguments: pointers 16-byte aligned, integer arguments that
are multiples of 16 marked divisible by 16, integers equal to 1 (unit strides) folded in as constants.

Must run without TRITON_INTERPRET (kernels must be JIT functions, not interpreted ones).  Prints one line per
kernel and ``ALL OK`` at the end; exit status 1 if any failed.
"""

import argparse
import importlib
import json
import os
import sys

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

A = importlib.import_module("mawstron.kernels.fused.attention")
CFG = importlib.import_module("mawstron.kernels.fused.attention_configs")
LN = importlib.import_module("mawstron.kernels.fused.layer_norm")
MK = importlib.import_module("mawstron.kernels.fused.masking")
LO = importlib.import_module("mawstron.kernels.fused.mae_loss")

# (preset, heads, head dim, sequence lengths): MAE encoder (25 % of patches + cls), full 224 px, 518 px /14
PRESET_SHAPES = importlib.import_module("mawstron.core.flops").attention_shapes()
CI_SHAPES = ((16, 64, 197), (32, 80, 257), (32, 128, 1370))  # (heads, D, N): one per head dim
QUICK_SHAPE = (32, 80, 257)  # --quick (gpu_check.sh --dry-run): the attention kernels of one shape
BATCH = 32  # the training micro-batch order of magnitude: picks the fused backward (B*H >= 2 x 132 SMs)
TORCH_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
# usable shared memory per block (bytes), by compute capability: what a kernel's metadata.shared must fit
SHARED_LIMIT = {(8, 0): 166912, (8, 6): 101376, (8, 9): 101376, (9, 0): 232448, (10, 0): 232448, (12, 0): 101376}


_COMPILED = {}  # compile key -> kernel: shapes that the JIT would compile identically are compiled once


def compile_kernel(fn, args, consts, num_warps=4, num_stages=3, capability=(9, 0)):
    """Compile ``fn`` as the JIT would for runtime ``args`` (name -> "*dtype" pointer, int or float)."""
    sig, attrs, constexprs = {}, {}, dict(consts)
    for i, name in enumerate(fn.arg_names):
        if name in consts:
            sig[name] = "constexpr"
            continue
        value = args[name]
        if isinstance(value, str):
            sig[name] = value
            attrs[(i,)] = [["tt.divisibility", 16]]  # torch allocations are 16-byte aligned
        elif isinstance(value, bool) or not isinstance(value, int):
            sig[name] = "fp32"
        elif value == 1:
            sig[name] = "constexpr"
            constexprs[name] = 1
        else:
            sig[name] = "i64" if abs(value) >= 2**31 else "i32"
            if value % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
    key = (fn.__name__, tuple(sorted(sig.items())), tuple(sorted(attrs)), tuple(sorted(constexprs.items())),
           num_warps, num_stages, capability)
    if key not in _COMPILED:
        src = ASTSource(fn, sig, constexprs={(fn.arg_names.index(k),): v for k, v in constexprs.items()},
                        attrs=attrs)
        target = GPUTarget("cuda", capability[0] * 10 + capability[1], 32)
        _COMPILED[key] = triton.compile(src, target=target,
                                        options=dict(num_warps=num_warps, num_stages=num_stages))
    return _COMPILED[key]


def packed_attention_args(dt, batch, heads, n, d):
    """Runtime arguments of the attention kernels on the model's packed layout: qkv/dqkv [B, N, 3*H*D] and
    out/dout [B, N, H*D], viewed as [B, H, N, D]."""
    qkv = (n * 3 * heads * d, d, 3 * heads * d, 1)
    out = (n * heads * d, d, heads * d, 1)
    args = {name: f"*{dt}" for name in ("Q", "K", "V", "O", "DO", "DQ", "DK", "DV")}
    args |= {"LSE": "*fp32", "DELTA": "*fp32", "DQ_ACC": "*fp32"}
    for prefix, strides in (("sq", qkv), ("sk", qkv), ("sv", qkv), ("sdq", qkv), ("sdk", qkv), ("sdv", qkv),
                            ("so", out), ("sd", out)):
        args |= dict(zip((prefix + s for s in "bhnd"), strides))
    d0, d1 = CFG.head_dim_split(d)
    return args | dict(H=heads, N=n, D=d, qk_scale=0.1, sm_scale=0.1, dq_row=d0 + d1)


def attention_jobs(dt, batch, heads, n, d, capability=(9, 0), modes=("fused", "split"), plan_cfg=None):
    """(label, kernel fn, constexprs, options) of every attention kernel the launchers would run for a shape."""
    torch_dtype = TORCH_DTYPES[dt]
    prec = A._precision(torch_dtype)
    for mode in modes:
        os.environ["MAWSTRON_ATTENTION_BWD"] = mode
        try:
            plan = A.launch_plan((batch, heads, n, d), torch_dtype, capability)
        finally:
            del os.environ["MAWSTRON_ATTENTION_BWD"]
        cfg = plan_cfg or plan["cfg"]
        head = plan["head"]

        def split(part):
            c = cfg[part]
            return dict(BLOCK_M=c["BLOCK_M"], BLOCK_N=c["BLOCK_N"]), dict(
                num_warps=c["num_warps"], num_stages=c["num_stages"])

        blocks, opts = split("fwd")
        yield "fwd", A._attn_fwd_kernel, dict(PRECISION=prec, **head, **blocks), opts
        yield "bwd preprocess", A._attn_bwd_preprocess_kernel, dict(
            BLOCK_M=64, BLOCK_D=max(16, triton.next_power_of_2(d))), {}
        if mode == "fused":
            blocks, opts = split("bwd_fused")
            yield "bwd fused", A._attn_bwd_dkdv_kernel, dict(PRECISION=prec, FUSE_DQ=True, **head, **blocks), opts
        else:
            blocks, opts = split("bwd_kv")
            yield "bwd dk/dv", A._attn_bwd_dkdv_kernel, dict(PRECISION=prec, FUSE_DQ=False, **head, **blocks), opts
            blocks, opts = split("bwd_q")
            yield "bwd dq", A._attn_bwd_dq_kernel, dict(PRECISION=prec, **head, **blocks), opts


def ptx_counts(kernel):
    ptx = kernel.asm["ptx"]
    return {"wgmma": ptx.count("wgmma.mma_async"), "mma_sync": ptx.count("mma.sync"),
            "shared_bytes": kernel.metadata.shared}


def jobs(full, quick=False):
    """(label, group, thunk): attention first (deduplicated by what is compiled), then the other kernels."""
    seen = set()
    dtypes = ("bf16", "fp16") if full else ("bf16",)
    shapes = [(h, d, n) for _, h, d, ns in PRESET_SHAPES for n in ns] if full else list(CI_SHAPES)
    if quick:
        shapes = [QUICK_SHAPE]
    for dt in dtypes:
        for heads, d, n in shapes:
            args = packed_attention_args(dt, BATCH, heads, n, d)
            for name, fn, consts, opts in attention_jobs(dt, BATCH, heads, n, d):
                key = (fn.__name__, dt, tuple(sorted(consts.items())), tuple(sorted(opts.items())),
                       tuple((k, v % 16 == 0 if isinstance(v, int) else v) for k, v in sorted(args.items())))
                if key in seen:
                    continue
                seen.add(key)
                label = f"attention {name} {dt} N{n} D{d} H{heads} " + " ".join(f"{k}={v}" for k, v in
                                                                               {**consts, **opts}.items()
                                                                               if k.startswith(("BLOCK", "num")))
                yield label, "attention", (lambda fn=fn, a=args, c=consts, o=opts: compile_kernel(fn, a, c, **o))
    if quick:
        return
    for dt in ("fp16", "bf16", "fp32") if full else ("bf16",):
        if full and dt == "fp32":  # fp32 attention: correctness path only (no tensor cores), compiled once
            args = packed_attention_args(dt, 2, 16, 257, 80)
            for name, fn, consts, opts in attention_jobs(dt, 2, 16, 257, 80):
                yield f"attention {name} fp32 N257 D80", "attention-fp32", (
                    lambda fn=fn, a=args, c=consts, o=opts: compile_kernel(fn, a, c, **o))
        ln = {n: f"*{dt}" for n in ("X", "R", "H", "Y", "W", "B", "DY", "DH", "DX")}
        ln |= {n: "*fp32" for n in ("MEAN", "RSTD", "DW_PART", "DB_PART")}
        ln |= {"M": 4096, "N": 1024, "stride": 1024, "rows_per_program": 16, "eps": 1e-6}
        for res in (True, False) if full else (True,):
            yield f"layer_norm fwd {dt} residual={res}", "other", lambda res=res, ln=ln: compile_kernel(
                LN._ln_fwd_kernel, _fill(LN._ln_fwd_kernel, ln), dict(HAS_RESIDUAL=res, BLOCK=4096), num_warps=16)
            yield f"layer_norm bwd {dt} dh={res}", "other", lambda res=res, ln=ln: compile_kernel(
                LN._ln_bwd_kernel, _fill(LN._ln_bwd_kernel, ln), dict(HAS_DH=res, BLOCK=4096), num_warps=16)
        mk = {n: f"*{dt}" for n in ("X", "POS", "OUT", "DOUT", "DX", "MASK_TOKEN")} | {"IDS": "*i64"}
        for kname, block in (("_gather_fwd_kernel", 1024), ("_gather_bwd_kernel", 1024),
                             ("_unshuffle_fwd_kernel", 512), ("_unshuffle_bwd_kernel", 512)):
            fn = getattr(MK, kname)
            yield f"{kname.strip('_')} {dt}", "other", lambda fn=fn, mk=mk, block=block: compile_kernel(
                fn, _fill(fn, mk), dict(BLOCK=block))
        lo = {n: f"*{dt}" for n in ("PRED", "TARGET", "DPRED", "DTARGET")}
        lo |= {n: "*fp32" for n in ("MASK", "ROW_LOSS", "MEAN", "RSTD", "GRAD_SCALE")} | {"eps": 1e-6}
        for norm in (True, False) if full else (True,):
            yield f"mae_loss fwd {dt} norm={norm}", "other", lambda norm=norm, lo=lo: compile_kernel(
                LO._mae_loss_fwd_kernel, _fill(LO._mae_loss_fwd_kernel, lo), dict(NORM=norm, BLOCK=1024))
            yield f"mae_loss bwd {dt} norm={norm}", "other", lambda norm=norm, lo=lo: compile_kernel(
                LO._mae_loss_bwd_kernel, _fill(LO._mae_loss_bwd_kernel, lo),
                dict(NORM=norm, TARGET_GRAD=True, BLOCK=1024))


def _fill(fn, known):
    """Runtime args for a non-attention kernel: the named pointers/floats, and 768 (16-divisible) for ints."""
    return {name: known.get(name, 768) for name in fn.arg_names}


def table_jobs(dtypes=None):
    """Every entry of the config table, compiled for its own capability, each backward schedule it can pick."""
    for key, entry in sorted(CFG.load_table().items()):
        arch, dt, dpart, npart = key.split("/")
        if dtypes and dt not in dtypes:
            continue
        cap = (int(arch[2:-1]), int(arch[-1]))
        d, bucket = int(dpart[1:]), int(npart[1:])
        n = bucket // 2 + 1  # a length in the bucket that, like every ViT length, is not a multiple of 16
        heads = 16
        args = packed_attention_args(dt, BATCH, heads, n, d)
        cfg = CFG.heuristic(n, d)
        for part in CFG.PARTS:
            cfg[part] = dict(cfg[part], **entry.get(part, {}))
        seen = set()
        for name, fn, consts, opts in attention_jobs(dt, BATCH, heads, n, d, capability=cap, plan_cfg=cfg):
            if name in seen or name == "bwd preprocess":  # fwd is yielded once per backward schedule
                continue
            seen.add(name)
            yield f"table {key} {name}", cap, (lambda fn=fn, a=args, c=consts, o=opts, cap=cap: compile_kernel(
                fn, a, c, capability=cap, **o))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--full", action="store_true", help="every preset shape, bf16 and fp16, plus fp32")
    parser.add_argument("--quick", action="store_true", help="attention kernels of one shape only (bf16, D80)")
    parser.add_argument("--table", action="store_true", help="compile every entry of the config table")
    parser.add_argument("--dtype", action="append", choices=("bf16", "fp16", "fp32"),
                        help="with --table: only the entries of this dtype (repeatable)")
    parser.add_argument("--json", help="write each kernel's PTX counts and shared memory here")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        sys.exit("run without TRITON_INTERPRET")
    ok, results = True, {}
    if args.table:
        work = list(table_jobs(args.dtype))
    else:
        work = list(jobs(args.full, args.quick))
    for label, group, thunk in work:
        try:
            kernel = thunk()
        except Exception as e:  # report every failure, not just the first
            ok = False
            print(f"FAIL  {label}: {type(e).__name__}: {e}", flush=True)
            continue
        counts = ptx_counts(kernel)
        if args.table:
            limit = SHARED_LIMIT.get(group)
            counts["shared_limit"] = limit
            if limit is None or counts["shared_bytes"] > limit:
                ok = False
                print(f"FAIL  {label}: shared memory {counts['shared_bytes']} B > limit {limit}", flush=True)
                continue
        results[label] = dict(counts, group=str(group))
        print(f"ok    {label}  (wgmma {counts['wgmma']}, mma.sync {counts['mma_sync']}, "
              f"shared memory {counts['shared_bytes']} B)", flush=True)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(dict(triton=triton.__version__, kernels=results), f, indent=1)
    print("ALL OK" if ok else "SOME FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
