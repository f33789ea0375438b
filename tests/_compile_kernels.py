"""Compile the Triton kernels for an H100 (sm_90) ahead of time, without a GPU.

The interpreter runs the kernels' semantics but not Triton's compiler: this catches what only compilation
rejects (types, constexprs, dot shapes, shared memory) and is the only bf16 check possible without a GPU.

    python tests/_compile_kernels.py            # the bf16 subset tests/test_kernels_compile.py runs
    python tests/_compile_kernels.py --full     # every kernel x fp16/bf16/fp32 x the launch configs (~3 min)

Must run without TRITON_INTERPRET (kernels must be JIT functions, not interpreted ones).  Prints one line per
kernel and ``ALL OK`` at the end; exit status 1 if any failed.
"""

import importlib
import os
import sys

if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    sys.exit("run without TRITON_INTERPRET")

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)
A = importlib.import_module("mawstron.kernels.attention")
LN = importlib.import_module("mawstron.kernels.layer_norm")
MK = importlib.import_module("mawstron.kernels.masking")
LO = importlib.import_module("mawstron.kernels.mae_loss")


def compile_kernel(fn, ptrs, consts, floats=(), num_warps=4, num_stages=3):
    sig = {}
    for name in fn.arg_names:
        sig[name] = "constexpr" if name in consts else ptrs.get(name, "fp32" if name in floats else "i32")
    src = ASTSource(fn, sig, constexprs={(fn.arg_names.index(k),): v for k, v in consts.items()})
    return triton.compile(src, target=TARGET, options=dict(num_warps=num_warps, num_stages=num_stages))


def jobs(full):
    """(label, thunk) for every kernel to compile; the launch configs are the wrappers' own GPU heuristics."""
    for dt in ("fp16", "bf16", "fp32") if full else ("bf16",):
        prec = "ieee" if dt == "fp32" else "tf32"
        attn_ptrs = {n: f"*{dt}" for n in ("Q", "K", "V", "O", "DO", "DQ", "DK", "DV")}
        attn_ptrs |= {"LSE": "*fp32", "DELTA": "*fp32"}
        for n, d in ((65, 80), (1370, 128), (197, 64)) if full else ((1370, 128),):
            bd = triton.next_power_of_2(d)
            f = A._fwd_config(n, bd)
            b = A._bwd_config(n, bd)
            fc = dict(BLOCK_M=f["BLOCK_M"], BLOCK_N=f["BLOCK_N"], BLOCK_D=bd, PRECISION=prec)
            bc = dict(BLOCK_M=b["BLOCK_M"], BLOCK_N=b["BLOCK_N"], BLOCK_D=bd, PRECISION=prec)
            fo = dict(num_warps=f["num_warps"], num_stages=f["num_stages"])
            bo = dict(num_warps=b["num_warps"], num_stages=b["num_stages"])
            yield f"attention fwd {dt} N{n} D{d}", lambda: compile_kernel(
                A._attn_fwd_kernel, attn_ptrs, fc, ("qk_scale",), **fo)
            yield f"attention bwd preprocess {dt} D{d}", lambda: compile_kernel(
                A._attn_bwd_preprocess_kernel, attn_ptrs, dict(BLOCK_M=64, BLOCK_D=bd))
            yield f"attention bwd dk/dv {dt} N{n} D{d}", lambda: compile_kernel(
                A._attn_bwd_dkdv_kernel, attn_ptrs, bc, ("sm_scale", "qk_scale"), **bo)
            yield f"attention bwd dq {dt} N{n} D{d}", lambda: compile_kernel(
                A._attn_bwd_dq_kernel, attn_ptrs, bc, ("sm_scale", "qk_scale"), **bo)
        ln = {n: f"*{dt}" for n in ("X", "R", "H", "Y", "W", "B", "DY", "DH", "DX")}
        ln |= {n: "*fp32" for n in ("MEAN", "RSTD", "DW_PART", "DB_PART")}
        for res in (True, False) if full else (True,):
            yield f"layer_norm fwd {dt} residual={res}", lambda: compile_kernel(
                LN._ln_fwd_kernel, ln, dict(HAS_RESIDUAL=res, BLOCK=4096), ("eps",), num_warps=16)
            yield f"layer_norm bwd {dt} dh={res}", lambda: compile_kernel(
                LN._ln_bwd_kernel, ln, dict(HAS_DH=res, BLOCK=4096), num_warps=16)
        mk = {n: f"*{dt}" for n in ("X", "POS", "OUT", "DOUT", "DX", "MASK_TOKEN")} | {"IDS": "*i64"}
        yield f"gather fwd {dt}", lambda: compile_kernel(MK._gather_fwd_kernel, mk, dict(BLOCK=1024))
        yield f"gather bwd {dt}", lambda: compile_kernel(MK._gather_bwd_kernel, mk, dict(BLOCK=1024))
        yield f"unshuffle fwd {dt}", lambda: compile_kernel(MK._unshuffle_fwd_kernel, mk, dict(BLOCK=512))
        yield f"unshuffle bwd {dt}", lambda: compile_kernel(MK._unshuffle_bwd_kernel, mk, dict(BLOCK=512))
        lo = {n: f"*{dt}" for n in ("PRED", "TARGET", "DPRED", "DTARGET")}
        lo |= {n: "*fp32" for n in ("MASK", "ROW_LOSS", "MEAN", "RSTD", "GRAD_SCALE")}
        for norm in (True, False) if full else (True,):
            yield f"mae_loss fwd {dt} norm={norm}", lambda: compile_kernel(
                LO._mae_loss_fwd_kernel, lo, dict(NORM=norm, BLOCK=1024), ("eps",))
            yield f"mae_loss bwd {dt} norm={norm}", lambda: compile_kernel(
                LO._mae_loss_bwd_kernel, lo, dict(NORM=norm, TARGET_GRAD=True, BLOCK=1024))


def main():
    ok = True
    for label, thunk in jobs("--full" in sys.argv):
        try:
            kernel = thunk()
            print(f"ok    {label}  (shared memory {kernel.metadata.shared} B)", flush=True)
        except Exception as e:  # report every failure, not just the first
            ok = False
            print(f"FAIL  {label}: {type(e).__name__}: {e}", flush=True)
    print("ALL OK" if ok else "SOME FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
