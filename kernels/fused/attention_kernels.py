"""The Triton programs of the fused attention (kernels/fused/attention.py launches them).

Every matmul is written so that Hopper's ``wgmma`` can run it: Triton emits ``wgmma.mma_async`` only when a dot's
M dimension (rows of its left operand) is a multiple of 64, so each dot's M is the block that the *program* owns
(queries in the forward and the dQ kernel, keys in the dK/dV kernel, which computes ``K @ Q^T`` rather than
``Q @ K^T`` as the Triton fused-attention tutorial does) and the launch configs keep those blocks at 64 or 128.
``tests/test_kernels_compile.py`` reads this from the compiled PTX.

Head dim: split into a power-of-two part ``D0`` and an optional power-of-two tail ``D1`` (``HAS_TAIL``), so head
dim 80 runs as 64 + 16 (two dots where the head dim is the reduction or output width) instead of being padded to
128 (1.6x the matmul work).  ``MASK_D0`` / ``MASK_D1`` are set only when the head dim does not fill its chunks
(e.g. 72 = 64 + 16 with 8 masked lanes); the preset head dims 64, 80 and 128 load unmasked.

Sequence: the loops over the *other* operand's blocks run over full blocks without masks and peel the last,
partial block into one masked step (ViT sequence lengths 50, 65, 197, 257, 1370 are never multiples of a block).

Backward, two schedules (``kernels/fused/attention_configs.py`` picks one):
  * ``split`` (sequence-parallel): a dK/dV program per key block looping over query blocks (4 matmuls: S^T, dV,
    dP^T, dK) plus a dQ program per query block looping over key blocks (3 matmuls: S, dP, dQ) -- 7 matmuls of
    N x N x D per (batch, head), S and dP computed twice, no atomics, parallel over N / block x B x H programs.
  * ``fused`` (FlashAttention's non-sequence-parallel backward): one program per (batch, head) runs every key
    block, and dQ += dS @ K is accumulated in a float32 buffer that only that program touches, so no atomics
    either -- 5 matmuls (S^T, dV, dP^T, dK, dQ), 29 % fewer, at the price of B x H-way parallelism and a
    read-modify-write of the float32 dQ tile per step.
"""

from __future__ import annotations

import triton
import triton.language as tl


# ----------------------------------------------------------------------------------------------- tile helpers
@triton.jit
def _load_2d(ptrs, mask_rows, mask_cols, MASK_ROWS: tl.constexpr, MASK_COLS: tl.constexpr):
    """Load a tile, masking only the dimensions that need it (full tiles compile to unmasked loads)."""
    if MASK_ROWS and MASK_COLS:
        x = tl.load(ptrs, mask=mask_rows[:, None] & mask_cols[None, :], other=0.0)
    elif MASK_ROWS:
        x = tl.load(ptrs, mask=mask_rows[:, None], other=0.0)
    elif MASK_COLS:
        x = tl.load(ptrs, mask=mask_cols[None, :], other=0.0)
    else:
        x = tl.load(ptrs)
    return x


@triton.jit
def _store_2d(ptrs, x, mask_rows, mask_cols, MASK_ROWS: tl.constexpr, MASK_COLS: tl.constexpr):
    if MASK_ROWS and MASK_COLS:
        tl.store(ptrs, x, mask=mask_rows[:, None] & mask_cols[None, :])
    elif MASK_ROWS:
        tl.store(ptrs, x, mask=mask_rows[:, None])
    elif MASK_COLS:
        tl.store(ptrs, x, mask=mask_cols[None, :])
    else:
        tl.store(ptrs, x)


@triton.jit
def _load_1d(ptrs, mask, MASK: tl.constexpr):
    if MASK:
        x = tl.load(ptrs, mask=mask, other=0.0)
    else:
        x = tl.load(ptrs)
    return x


@triton.jit
def _head_dim_chunks(D, D0: tl.constexpr, D1: tl.constexpr):
    """Head-dim offsets of the power-of-two part and of the tail, and which of their lanes are real."""
    d0 = tl.arange(0, D0)
    d1 = D0 + tl.arange(0, D1)
    return d0, d1, d0 < D, d1 < D


@triton.jit
def _load_rows(base, rows, mask_rows, s_row, s_d, d0, d1, mask_d0, mask_d1, MASK_ROWS: tl.constexpr,
               HAS_TAIL: tl.constexpr, MASK_D0: tl.constexpr, MASK_D1: tl.constexpr):
    """A [rows, head dim] tile as its two head-dim chunks (the second is the first again when there is no tail)."""
    x0 = _load_2d(base + rows[:, None] * s_row + d0[None, :] * s_d, mask_rows, mask_d0, MASK_ROWS, MASK_D0)
    x1 = x0
    if HAS_TAIL:
        x1 = _load_2d(base + rows[:, None] * s_row + d1[None, :] * s_d, mask_rows, mask_d1, MASK_ROWS, MASK_D1)
    return x0, x1


@triton.jit
def _load_cols(base, cols, mask_cols, s_col, s_d, d0, d1, mask_d0, mask_d1, MASK_COLS: tl.constexpr,
               HAS_TAIL: tl.constexpr, MASK_D0: tl.constexpr, MASK_D1: tl.constexpr):
    """The transposed [head dim, cols] tile as its two head-dim chunks, the right operand of a dot with M = rows."""
    x0 = _load_2d(base + d0[:, None] * s_d + cols[None, :] * s_col, mask_d0, mask_cols, MASK_D0, MASK_COLS)
    x1 = x0
    if HAS_TAIL:
        x1 = _load_2d(base + d1[:, None] * s_d + cols[None, :] * s_col, mask_d1, mask_cols, MASK_D1, MASK_COLS)
    return x0, x1


@triton.jit
def _store_rows(base, x0, x1, rows, mask_rows, s_row, s_d, d0, d1, mask_d0, mask_d1, MASK_ROWS: tl.constexpr,
                HAS_TAIL: tl.constexpr, MASK_D0: tl.constexpr, MASK_D1: tl.constexpr):
    """Store the two head-dim chunks of a [rows, head dim] tile (``x1`` only when there is a tail)."""
    _store_2d(base + rows[:, None] * s_row + d0[None, :] * s_d, x0, mask_rows, mask_d0, MASK_ROWS, MASK_D0)
    if HAS_TAIL:
        _store_2d(base + rows[:, None] * s_row + d1[None, :] * s_d, x1, mask_rows, mask_d1, MASK_ROWS, MASK_D1)


# ----------------------------------------------------------------------------------------------- forward
@triton.jit
def _fwd_step(m_i, l_i, acc0, acc1, q0, q1, k_base, v_base, start_n, offs_n, d0, d1, mask_d0, mask_d1,
              skn, skd, svn, svd, N, qk_scale,
              MASK_N: tl.constexpr, HAS_TAIL: tl.constexpr, MASK_D0: tl.constexpr, MASK_D1: tl.constexpr,
              PRECISION: tl.constexpr):
    """One key block of the online softmax: S = Q K^T (M = query block), P V into the accumulators."""
    cols = start_n + offs_n
    mask_n = cols < N
    kt0, kt1 = _load_cols(k_base, cols, mask_n, skn, skd, d0, d1, mask_d0, mask_d1, MASK_N, HAS_TAIL, MASK_D0, MASK_D1)
    s = tl.dot(q0, kt0, input_precision=PRECISION)
    if HAS_TAIL:
        s = tl.dot(q1, kt1, acc=s, input_precision=PRECISION)
    s = s * qk_scale
    if MASK_N:
        s = tl.where(mask_n[None, :], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    p = tl.exp2(s - m_new[:, None])
    alpha = tl.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    v0, v1 = _load_rows(v_base, cols, mask_n, svn, svd, d0, d1, mask_d0, mask_d1, MASK_N, HAS_TAIL, MASK_D0, MASK_D1)
    p = p.to(v0.dtype)
    acc0 = tl.dot(p, v0, acc=acc0 * alpha[:, None], input_precision=PRECISION)
    if HAS_TAIL:
        acc1 = tl.dot(p, v1, acc=acc1 * alpha[:, None], input_precision=PRECISION)
    return m_new, l_i, acc0, acc1


@triton.jit
def _attn_fwd_kernel(
    Q, K, V, O, LSE,
    sqb, sqh, sqn, sqd,
    skb, skh, skn, skd,
    svb, svh, svn, svd,
    sob, soh, son, sod,
    H, N, D,
    qk_scale,  # softmax_scale * log2(e)
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, D0: tl.constexpr, D1: tl.constexpr,
    HAS_TAIL: tl.constexpr, MASK_D0: tl.constexpr, MASK_D1: tl.constexpr, PRECISION: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1).to(tl.int64)  # 64-bit offsets: batch * batch_stride can pass 2^31
    b = pid_bh // H
    h = pid_bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    d0, d1, mask_d0, mask_d1 = _head_dim_chunks(D, D0, D1)
    mask_m = offs_m < N

    q0, q1 = _load_rows(Q + b * sqb + h * sqh, offs_m, mask_m, sqn, sqd, d0, d1, mask_d0, mask_d1,
                        True, HAS_TAIL, MASK_D0, MASK_D1)
    k_base = K + b * skb + h * skh
    v_base = V + b * svb + h * svh

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc0 = tl.zeros([BLOCK_M, D0], dtype=tl.float32)
    acc1 = tl.zeros([BLOCK_M, D1], dtype=tl.float32)
    n_full = (N // BLOCK_N) * BLOCK_N
    for start_n in range(0, n_full, BLOCK_N):
        m_i, l_i, acc0, acc1 = _fwd_step(
            m_i, l_i, acc0, acc1, q0, q1, k_base, v_base, start_n, offs_n, d0, d1, mask_d0, mask_d1,
            skn, skd, svn, svd, N, qk_scale, False, HAS_TAIL, MASK_D0, MASK_D1, PRECISION)
    if n_full < N:  # the last, partial key block: the only masked step
        m_i, l_i, acc0, acc1 = _fwd_step(
            m_i, l_i, acc0, acc1, q0, q1, k_base, v_base, n_full, offs_n, d0, d1, mask_d0, mask_d1,
            skn, skd, svn, svd, N, qk_scale, True, HAS_TAIL, MASK_D0, MASK_D1, PRECISION)
    _store_rows(O + b * sob + h * soh, (acc0 / l_i[:, None]).to(O.dtype.element_ty),
                (acc1 / l_i[:, None]).to(O.dtype.element_ty), offs_m, mask_m, son, sod, d0, d1, mask_d0, mask_d1,
                True, HAS_TAIL, MASK_D0, MASK_D1)
    tl.store(LSE + pid_bh * N + offs_m, m_i + tl.log2(l_i), mask=mask_m)


# ----------------------------------------------------------------------------------------------- backward
@triton.jit
def _attn_bwd_preprocess_kernel(
    O, DO, DELTA,
    sob, soh, son, sod,
    sdb, sdh, sdn, sdd,
    H, N, D,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """delta = rowsum(dO * O): bandwidth-bound, no matmul, so one padded head-dim tile is fine."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1).to(tl.int64)
    b = pid_bh // H
    h = pid_bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (offs_m[:, None] < N) & (offs_d[None, :] < D)
    o = tl.load(O + b * sob + h * soh + offs_m[:, None] * son + offs_d[None, :] * sod, mask=mask, other=0.0)
    do = tl.load(DO + b * sdb + h * sdh + offs_m[:, None] * sdn + offs_d[None, :] * sdd, mask=mask, other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(DELTA + pid_bh * N + offs_m, delta, mask=offs_m < N)


@triton.jit
def _bwd_query_step(dk0, dk1, dv0, dv1, k0, k1, v0, v1, mask_n,
                    q_base, do_base, lse_base, delta_base, dq_base, start_m, offs_m, d0, d1, mask_d0, mask_d1,
                    sqn, sqd, sdn, sdd, N, sm_scale, qk_scale, dq_row,
                    MASK_M: tl.constexpr, MASK_N: tl.constexpr, FUSE_DQ: tl.constexpr, D0: tl.constexpr,
                    D1: tl.constexpr, HAS_TAIL: tl.constexpr, MASK_D0: tl.constexpr, MASK_D1: tl.constexpr,
                    PRECISION: tl.constexpr):
    """One query block against the program's key block, transposed so every dot has M = the key block."""
    rows = start_m + offs_m
    mask_m = rows < N
    qt0, qt1 = _load_cols(q_base, rows, mask_m, sqn, sqd, d0, d1, mask_d0, mask_d1, MASK_M, HAS_TAIL, MASK_D0, MASK_D1)
    do0, do1 = _load_rows(do_base, rows, mask_m, sdn, sdd, d0, d1, mask_d0, mask_d1, MASK_M, HAS_TAIL, MASK_D0, MASK_D1)
    lse = _load_1d(lse_base + rows, mask_m, MASK_M)
    delta = _load_1d(delta_base + rows, mask_m, MASK_M)
    st = tl.dot(k0, qt0, input_precision=PRECISION)  # S^T: [keys, queries]
    if HAS_TAIL:
        st = tl.dot(k1, qt1, acc=st, input_precision=PRECISION)
    pt = tl.exp2(st * qk_scale - lse[None, :])
    # padded queries (q = 0, lse = 0) and padded keys (k = 0) give finite but meaningless p; zero them so that an
    # extreme lse cannot turn them into inf * 0 = NaN in dK or the fused dQ
    if MASK_M:
        pt = tl.where(mask_m[None, :], pt, 0.0)
    if MASK_N:
        pt = tl.where(mask_n[:, None], pt, 0.0)
    ptc = pt.to(do0.dtype)
    dv0 = tl.dot(ptc, do0, acc=dv0, input_precision=PRECISION)
    dpt = tl.dot(v0, tl.trans(do0), input_precision=PRECISION)  # dP^T
    if HAS_TAIL:
        dv1 = tl.dot(ptc, do1, acc=dv1, input_precision=PRECISION)
        dpt = tl.dot(v1, tl.trans(do1), acc=dpt, input_precision=PRECISION)
    dst = (pt * (dpt - delta[None, :]) * sm_scale).to(qt0.dtype)  # dS^T, softmax scale folded in
    dk0 = tl.dot(dst, tl.trans(qt0), acc=dk0, input_precision=PRECISION)
    if HAS_TAIL:
        dk1 = tl.dot(dst, tl.trans(qt1), acc=dk1, input_precision=PRECISION)
    if FUSE_DQ:
        # this program owns every key block of its (batch, head): read-modify-write of the float32 dQ rows,
        # ordered across key blocks by the barrier in the caller; M = the query block here
        ds = tl.trans(dst)
        dq_ptrs0 = dq_base + rows[:, None] * dq_row + d0[None, :]
        dq0 = tl.dot(ds, k0, acc=_load_2d(dq_ptrs0, mask_m, mask_d0, MASK_M, False), input_precision=PRECISION)
        _store_2d(dq_ptrs0, dq0, mask_m, mask_d0, MASK_M, False)
        if HAS_TAIL:
            dq_ptrs1 = dq_base + rows[:, None] * dq_row + d1[None, :]
            dq1 = tl.dot(ds, k1, acc=_load_2d(dq_ptrs1, mask_m, mask_d1, MASK_M, False), input_precision=PRECISION)
            _store_2d(dq_ptrs1, dq1, mask_m, mask_d1, MASK_M, False)
    return dk0, dk1, dv0, dv1


@triton.jit
def _bwd_key_block(Q, K, V, DO, LSE, DELTA, DK, DV, DQ_ACC,
                   sqb, sqh, sqn, sqd, skb, skh, skn, skd, svb, svh, svn, svd, sdb, sdh, sdn, sdd,
                   sdkb, sdkh, sdkn, sdkd, sdvb, sdvh, sdvn, sdvd,
                   pid_bh, H, N, D, sm_scale, qk_scale, dq_row, start_n,
                   MASK_N: tl.constexpr, FUSE_DQ: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   D0: tl.constexpr, D1: tl.constexpr, HAS_TAIL: tl.constexpr, MASK_D0: tl.constexpr,
                   MASK_D1: tl.constexpr, PRECISION: tl.constexpr):
    """dK and dV of one key block (and its dQ contributions when FUSE_DQ), looping over every query block."""
    b = pid_bh // H
    h = pid_bh % H
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    d0, d1, mask_d0, mask_d1 = _head_dim_chunks(D, D0, D1)
    mask_n = offs_n < N

    k0, k1 = _load_rows(K + b * skb + h * skh, offs_n, mask_n, skn, skd, d0, d1, mask_d0, mask_d1,
                        MASK_N, HAS_TAIL, MASK_D0, MASK_D1)
    v0, v1 = _load_rows(V + b * svb + h * svh, offs_n, mask_n, svn, svd, d0, d1, mask_d0, mask_d1,
                        MASK_N, HAS_TAIL, MASK_D0, MASK_D1)
    q_base = Q + b * sqb + h * sqh
    do_base = DO + b * sdb + h * sdh
    lse_base = LSE + pid_bh * N
    delta_base = DELTA + pid_bh * N
    dq_base = DQ_ACC + pid_bh * N * dq_row
    dk0 = tl.zeros([BLOCK_N, D0], dtype=tl.float32)
    dv0 = tl.zeros([BLOCK_N, D0], dtype=tl.float32)
    dk1 = tl.zeros([BLOCK_N, D1], dtype=tl.float32)
    dv1 = tl.zeros([BLOCK_N, D1], dtype=tl.float32)
    m_full = (N // BLOCK_M) * BLOCK_M
    for start_m in range(0, m_full, BLOCK_M):
        dk0, dk1, dv0, dv1 = _bwd_query_step(
            dk0, dk1, dv0, dv1, k0, k1, v0, v1, mask_n, q_base, do_base, lse_base, delta_base, dq_base,
            start_m, offs_m, d0, d1, mask_d0, mask_d1, sqn, sqd, sdn, sdd, N, sm_scale, qk_scale, dq_row,
            False, MASK_N, FUSE_DQ, D0, D1, HAS_TAIL, MASK_D0, MASK_D1, PRECISION)
    if m_full < N:  # the last, partial query block
        dk0, dk1, dv0, dv1 = _bwd_query_step(
            dk0, dk1, dv0, dv1, k0, k1, v0, v1, mask_n, q_base, do_base, lse_base, delta_base, dq_base,
            m_full, offs_m, d0, d1, mask_d0, mask_d1, sqn, sqd, sdn, sdd, N, sm_scale, qk_scale, dq_row,
            True, MASK_N, FUSE_DQ, D0, D1, HAS_TAIL, MASK_D0, MASK_D1, PRECISION)
    _store_rows(DK + b * sdkb + h * sdkh, dk0.to(DK.dtype.element_ty), dk1.to(DK.dtype.element_ty), offs_n, mask_n,
                sdkn, sdkd, d0, d1, mask_d0, mask_d1, MASK_N, HAS_TAIL, MASK_D0, MASK_D1)
    _store_rows(DV + b * sdvb + h * sdvh, dv0.to(DV.dtype.element_ty), dv1.to(DV.dtype.element_ty), offs_n, mask_n,
                sdvn, sdvd, d0, d1, mask_d0, mask_d1, MASK_N, HAS_TAIL, MASK_D0, MASK_D1)


@triton.jit
def _attn_bwd_dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, DK, DV, DQ_ACC,
    sqb, sqh, sqn, sqd,
    skb, skh, skn, skd,
    svb, svh, svn, svd,
    sdb, sdh, sdn, sdd,
    sdkb, sdkh, sdkn, sdkd,
    sdvb, sdvh, sdvn, sdvd,
    H, N, D,
    sm_scale, qk_scale, dq_row,  # dq_row: row stride of DQ_ACC (fused only)
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, D0: tl.constexpr, D1: tl.constexpr,
    HAS_TAIL: tl.constexpr, MASK_D0: tl.constexpr, MASK_D1: tl.constexpr, FUSE_DQ: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """split (FUSE_DQ=False): grid (key blocks, B*H), one key block each.
    fused (FUSE_DQ=True): grid (1, B*H), each program runs every key block and accumulates dQ into DQ_ACC."""
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1).to(tl.int64)
    if FUSE_DQ:
        n_full = (N // BLOCK_N) * BLOCK_N
        for start_n in range(0, n_full, BLOCK_N):
            _bwd_key_block(Q, K, V, DO, LSE, DELTA, DK, DV, DQ_ACC,
                           sqb, sqh, sqn, sqd, skb, skh, skn, skd, svb, svh, svn, svd, sdb, sdh, sdn, sdd,
                           sdkb, sdkh, sdkn, sdkd, sdvb, sdvh, sdvn, sdvd,
                           pid_bh, H, N, D, sm_scale, qk_scale, dq_row, start_n,
                           False, True, BLOCK_M, BLOCK_N, D0, D1, HAS_TAIL, MASK_D0, MASK_D1, PRECISION)
            tl.debug_barrier()  # this key block's dQ stores are visible to every thread before the next reads
        if n_full < N:
            _bwd_key_block(Q, K, V, DO, LSE, DELTA, DK, DV, DQ_ACC,
                           sqb, sqh, sqn, sqd, skb, skh, skn, skd, svb, svh, svn, svd, sdb, sdh, sdn, sdd,
                           sdkb, sdkh, sdkn, sdkd, sdvb, sdvh, sdvn, sdvd,
                           pid_bh, H, N, D, sm_scale, qk_scale, dq_row, n_full,
                           True, True, BLOCK_M, BLOCK_N, D0, D1, HAS_TAIL, MASK_D0, MASK_D1, PRECISION)
    else:
        start_n = pid_n * BLOCK_N
        if start_n + BLOCK_N <= N:
            _bwd_key_block(Q, K, V, DO, LSE, DELTA, DK, DV, DQ_ACC,
                           sqb, sqh, sqn, sqd, skb, skh, skn, skd, svb, svh, svn, svd, sdb, sdh, sdn, sdd,
                           sdkb, sdkh, sdkn, sdkd, sdvb, sdvh, sdvn, sdvd,
                           pid_bh, H, N, D, sm_scale, qk_scale, dq_row, start_n,
                           False, False, BLOCK_M, BLOCK_N, D0, D1, HAS_TAIL, MASK_D0, MASK_D1, PRECISION)
        else:
            _bwd_key_block(Q, K, V, DO, LSE, DELTA, DK, DV, DQ_ACC,
                           sqb, sqh, sqn, sqd, skb, skh, skn, skd, svb, svh, svn, svd, sdb, sdh, sdn, sdd,
                           sdkb, sdkh, sdkn, sdkd, sdvb, sdvh, sdvn, sdvd,
                           pid_bh, H, N, D, sm_scale, qk_scale, dq_row, start_n,
                           True, False, BLOCK_M, BLOCK_N, D0, D1, HAS_TAIL, MASK_D0, MASK_D1, PRECISION)


@triton.jit
def _dq_step(dq0, dq1, q0, q1, do0, do1, lse, delta, k_base, v_base, start_n, offs_n, d0, d1, mask_d0, mask_d1,
             skn, skd, svn, svd, N, sm_scale, qk_scale,
             MASK_N: tl.constexpr, HAS_TAIL: tl.constexpr, MASK_D0: tl.constexpr, MASK_D1: tl.constexpr,
             PRECISION: tl.constexpr):
    """One key block of the split dQ kernel: S, dP and dQ += dS K, every dot with M = the query block.
    K and V load chunk by chunk, not through _load_rows: loading both tails before the first dots raised the
    sm_90 shared memory of the head-dim-80 kernel from 36 to 40 KiB (tests/_compile_kernels.py)."""
    cols = start_n + offs_n
    mask_n = cols < N
    k0 = _load_2d(k_base + cols[:, None] * skn + d0[None, :] * skd, mask_n, mask_d0, MASK_N, MASK_D0)
    v0 = _load_2d(v_base + cols[:, None] * svn + d0[None, :] * svd, mask_n, mask_d0, MASK_N, MASK_D0)
    s = tl.dot(q0, tl.trans(k0), input_precision=PRECISION)
    dp = tl.dot(do0, tl.trans(v0), input_precision=PRECISION)
    k1 = k0
    if HAS_TAIL:
        k1 = _load_2d(k_base + cols[:, None] * skn + d1[None, :] * skd, mask_n, mask_d1, MASK_N, MASK_D1)
        v1 = _load_2d(v_base + cols[:, None] * svn + d1[None, :] * svd, mask_n, mask_d1, MASK_N, MASK_D1)
        s = tl.dot(q1, tl.trans(k1), acc=s, input_precision=PRECISION)
        dp = tl.dot(do1, tl.trans(v1), acc=dp, input_precision=PRECISION)
    p = tl.exp2(s * qk_scale - lse[:, None])
    if MASK_N:
        p = tl.where(mask_n[None, :], p, 0.0)
    ds = (p * (dp - delta[:, None]) * sm_scale).to(k0.dtype)
    dq0 = tl.dot(ds, k0, acc=dq0, input_precision=PRECISION)
    if HAS_TAIL:
        dq1 = tl.dot(ds, k1, acc=dq1, input_precision=PRECISION)
    return dq0, dq1


@triton.jit
def _attn_bwd_dq_kernel(
    Q, K, V, DO, LSE, DELTA, DQ,
    sqb, sqh, sqn, sqd,
    skb, skh, skn, skd,
    svb, svh, svn, svd,
    sdb, sdh, sdn, sdd,
    sdqb, sdqh, sdqn, sdqd,
    H, N, D,
    sm_scale, qk_scale,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, D0: tl.constexpr, D1: tl.constexpr,
    HAS_TAIL: tl.constexpr, MASK_D0: tl.constexpr, MASK_D1: tl.constexpr, PRECISION: tl.constexpr,
):
    """split schedule only: dQ of one query block, looping over every key block."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1).to(tl.int64)
    b = pid_bh // H
    h = pid_bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    d0, d1, mask_d0, mask_d1 = _head_dim_chunks(D, D0, D1)
    mask_m = offs_m < N

    q0, q1 = _load_rows(Q + b * sqb + h * sqh, offs_m, mask_m, sqn, sqd, d0, d1, mask_d0, mask_d1,
                        True, HAS_TAIL, MASK_D0, MASK_D1)
    do0, do1 = _load_rows(DO + b * sdb + h * sdh, offs_m, mask_m, sdn, sdd, d0, d1, mask_d0, mask_d1,
                          True, HAS_TAIL, MASK_D0, MASK_D1)
    lse = tl.load(LSE + pid_bh * N + offs_m, mask=mask_m, other=0.0)
    delta = tl.load(DELTA + pid_bh * N + offs_m, mask=mask_m, other=0.0)
    k_base = K + b * skb + h * skh
    v_base = V + b * svb + h * svh
    dq0 = tl.zeros([BLOCK_M, D0], dtype=tl.float32)
    dq1 = tl.zeros([BLOCK_M, D1], dtype=tl.float32)
    n_full = (N // BLOCK_N) * BLOCK_N
    for start_n in range(0, n_full, BLOCK_N):
        dq0, dq1 = _dq_step(dq0, dq1, q0, q1, do0, do1, lse, delta, k_base, v_base, start_n, offs_n, d0, d1,
                            mask_d0, mask_d1, skn, skd, svn, svd, N, sm_scale, qk_scale,
                            False, HAS_TAIL, MASK_D0, MASK_D1, PRECISION)
    if n_full < N:
        dq0, dq1 = _dq_step(dq0, dq1, q0, q1, do0, do1, lse, delta, k_base, v_base, n_full, offs_n, d0, d1,
                            mask_d0, mask_d1, skn, skd, svn, svd, N, sm_scale, qk_scale,
                            True, HAS_TAIL, MASK_D0, MASK_D1, PRECISION)
    _store_rows(DQ + b * sdqb + h * sdqh, dq0.to(DQ.dtype.element_ty), dq1.to(DQ.dtype.element_ty), offs_m, mask_m,
                sdqn, sdqd, d0, d1, mask_d0, mask_d1, True, HAS_TAIL, MASK_D0, MASK_D1)
