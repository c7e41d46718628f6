"""Triton kernels for the backward of the fused modulated 1x1 layer (imported only by the Triton
backend; see linear_backward.py for the math, the checks and the launchers).

Three GEMM-shaped kernels and one scatter kernel, all deterministic (fixed reduction orders, no
atomics; partial sums are written per block and reduced by the host in a fixed order):

    _fmm_bwd_dy_kernel      dY' = dY * gain * (out > 0 ? 1 : 0.2) * (|out| < clamp), and per row
                            block the column sums of dY' (the bias gradient)
    _fmm_bwd_da_kernel      dA = dY' @ W: the x part is stored as rows (scattered later when x was
                            gathered); the embedding part is turned into the phase gradient
                            dp = dE_sin * cos(p) - dE_cos * sin(p) in the epilogue (sin/cos p
                            regenerated from the tables, never stored) and reduced per row block into
                            [sum dp * x, sum dp * y, sum dp]; row blocks never straddle frames
    _fmm_bwd_dw_kernel      dW = dY'^T @ [x[x_index] | sin | cos] with the embedding regenerated in
                            the prologue (from the tables); rows split into SPLIT ranges whose
                            partials the host sums
    _segment_sum_kernel     out[p] = sum of src[r] over the rows r with index[r] = p, in increasing
                            r (CSR built by a stable sort on the host)

Trig-free embedding, as in the forward (kernels/linear.py): sin/cos p for p = X + Y + B come from
the launcher's tables tx (TW, 2E), ty (TH, 2E), tb (F, 2E) ([sin | cos] of X = A0*xs[j],
Y = A1*ys[i], B = b[f]) by two angle additions, (X, Y) then (X+Y, B); no sin/cos is evaluated
here. Launch with enable_fp_fusion=False, like the forward: the angle additions are specified as
separate multiplies and adds (the torch backward's bits).
"""
import triton
import triton.language as tl

from ._common import interpreter_enabled
from ._triton_common import _angle_add, _block, _divmod, _gather_rows, _mma, _trig_xy

INTERPRETED = interpreter_enabled()   # how the kernels below were decorated (see load_triton_module)


@triton.jit
def _x_col_blocks(KX, NEED_X: tl.constexpr, BLOCK_K: tl.constexpr):
    """Program columns 0 .. n - 1 of the dA / dW grids take x's channels (n = 0 without NEED_X);
    the embedding's frequencies take the columns after them."""
    if NEED_X:
        n = tl.cdiv(KX, BLOCK_K)
    else:
        n = 0
    return n


@triton.jit
def _fmm_bwd_dy_kernel(
    g_ptr,             # (M, N) incoming gradient dY (fp32/bf16), row stride stride_g
    out_ptr,           # (M, N) forward output before post_add (ACT or HAS_CLAMP), row stride stride_o
    dyp_ptr,           # (M, N) fp32 dY' (output), contiguous
    bias_part_ptr,     # (cdiv(M, BLOCK_M), N) fp32 column sums of dY' per row block (HAS_BIAS)
    M,                 # int: rows
    N,                 # int: columns
    stride_g,          # int
    stride_o,          # int
    gain,              # fp32: lrelu gain
    clamp,             # fp32: clamp bound (HAS_CLAMP)
    ACT: tl.constexpr,
    HAS_CLAMP: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    # 1. Tile of rows x columns; int64 before pointer arithmetic.
    pid_m = tl.program_id(0).to(tl.int64)
    offs_m, mask_m = _block(pid_m, BLOCK_M, M)
    offs_n, mask_n = _block(tl.program_id(1).to(tl.int64), BLOCK_N, N)
    mask = mask_m[:, None] & mask_n[None, :]
    # 2. Epilogue backward, in the order autograd takes it: clamp mask, gain, lrelu slope.
    t = tl.load(g_ptr + offs_m[:, None] * stride_g + offs_n[None, :], mask=mask, other=0.0).to(tl.float32)
    if ACT or HAS_CLAMP:
        o = tl.load(out_ptr + offs_m[:, None] * stride_o + offs_n[None, :], mask=mask,
                    other=0.0).to(tl.float32)
    if HAS_CLAMP:
        t = tl.where((o > -clamp) & (o < clamp), t, 0.0)
    if ACT:
        t = t * gain
        t = tl.where(o > 0, t, t * 0.2)       # sign(out) = sign(pre-activation): gain > 0
    tl.store(dyp_ptr + offs_m[:, None] * N + offs_n[None, :], t, mask=mask)
    # 3. Bias gradient: this block's column sums (the host adds the blocks in order).
    if HAS_BIAS:
        t = tl.where(mask, t, 0.0)
        tl.store(bias_part_ptr + pid_m * N + offs_n, tl.sum(t, axis=0), mask=mask_n)


@triton.jit
def _fmm_bwd_da_kernel(
    dyp_ptr,           # (M, N) fp32 dY', contiguous
    w_ptr,             # (N, KX + 2E) weight [W_x | W_sin | W_cos], row stride stride_wn
    tx_ptr,            # (TW, 2E) fp32 [sin X | cos X] per tile column, contiguous
    ty_ptr,            # (TH, 2E) fp32 [sin Y | cos Y] per tile row, contiguous
    tb_ptr,            # (F, 2E) fp32 [sin B | cos B] per frame, contiguous
    xs_ptr,            # (TW,) fp32
    ys_ptr,            # (TH,) fp32
    dx_ptr,            # (M, KX) fp32 dX rows (output; before any scatter by x_index), contiguous
    demb_part_ptr,     # (F * MB, 3, E) fp32: [sum dp*x, sum dp*y, sum dp] per row block (output)
    M,                 # int: rows (F * HW)
    N,                 # int: output channels of the forward (reduction length here)
    KX,                # int: x channels
    E,                 # int: embedding frequencies
    HW,                # int: rows per frame (M without the embedding)
    TW,                # int: tile columns
    MB,                # int: row blocks per frame, cdiv(HW, BLOCK_M)
    stride_wn,         # int
    NEED_X: tl.constexpr,          # compute dX (program columns 0 .. cdiv(KX, BLOCK_K) - 1)
    NEED_EMB: tl.constexpr,        # compute the embedding partials (the remaining columns)
    DOT_PRECISION: tl.constexpr,
    BF16_OPERANDS: tl.constexpr,
    INTERPRETER: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,         # reduction step over N
    BLOCK_K: tl.constexpr,         # x channels / frequencies per program
):
    # 1. Row block inside one frame (f, mb); column block of x channels or of frequencies.
    pid_m = tl.program_id(0).to(tl.int64)
    pid_k = tl.program_id(1)
    f, mb = _divmod(pid_m, MB)
    local, mask_m = _block(mb, BLOCK_M, HW)                        # row inside the frame
    offs_m = f * HW + local
    offs_r = tl.arange(0, BLOCK_N)
    offs_c = tl.arange(0, BLOCK_K)
    n_kx = _x_col_blocks(KX, NEED_X, BLOCK_K)
    if pid_k < n_kx:
        # 2a. dX rows = dY' @ W_x, N in steps of BLOCK_N from 0.
        k = pid_k * BLOCK_K + offs_c
        mask_k = k < KX
        acc = tl.zeros((BLOCK_M, BLOCK_K), dtype=tl.float32)
        for n0 in range(0, N, BLOCK_N):
            n = n0 + offs_r
            mask_n = n < N
            dy = tl.load(dyp_ptr + offs_m[:, None] * N + n[None, :],
                         mask=mask_m[:, None] & mask_n[None, :], other=0.0)
            w = tl.load(w_ptr + n[:, None] * stride_wn + k[None, :],
                        mask=mask_n[:, None] & mask_k[None, :], other=0.0)
            acc = _mma(dy, w, acc, DOT_PRECISION, BF16_OPERANDS, INTERPRETER)
        tl.store(dx_ptr + offs_m[:, None] * KX + k[None, :], acc,
                 mask=mask_m[:, None] & mask_k[None, :])
    elif NEED_EMB:
        # 2b. dE = dY' @ [W_sin | W_cos] for frequencies e, two accumulators.
        e = (pid_k - n_kx) * BLOCK_K + offs_c
        mask_e = e < E
        acc_s = tl.zeros((BLOCK_M, BLOCK_K), dtype=tl.float32)
        acc_c = tl.zeros((BLOCK_M, BLOCK_K), dtype=tl.float32)
        for n0 in range(0, N, BLOCK_N):
            n = n0 + offs_r
            mask_n = n < N
            dy = tl.load(dyp_ptr + offs_m[:, None] * N + n[None, :],
                         mask=mask_m[:, None] & mask_n[None, :], other=0.0)
            w_mask = mask_n[:, None] & mask_e[None, :]
            w_rows = w_ptr + n[:, None] * stride_wn
            w_sin = tl.load(w_rows + (KX + e)[None, :], mask=w_mask, other=0.0)
            w_cos = tl.load(w_rows + (KX + E + e)[None, :], mask=w_mask, other=0.0)
            acc_s = _mma(dy, w_sin, acc_s, DOT_PRECISION, BF16_OPERANDS, INTERPRETER)
            acc_c = _mma(dy, w_cos, acc_c, DOT_PRECISION, BF16_OPERANDS, INTERPRETER)
        # 3. sin/cos p from the tables by angle addition; dp = dE_sin cos p - dE_cos sin p.
        i, j = _divmod(local, TW)
        xv = tl.load(xs_ptr + j, mask=mask_m, other=0.0)                  # (BLOCK_M,)
        yv = tl.load(ys_ptr + i, mask=mask_m, other=0.0)
        t_mask = mask_m[:, None] & mask_e[None, :]
        sp, cp = _trig_xy(tx_ptr + j[:, None] * (2 * E), ty_ptr + i[:, None] * (2 * E), e, E,
                          t_mask)                                          # (BLOCK_M, BLOCK_K)
        sb = tl.load(tb_ptr + f * (2 * E) + e, mask=mask_e, other=0.0)     # (BLOCK_K,) one frame
        cb = tl.load(tb_ptr + f * (2 * E) + E + e, mask=mask_e, other=0.0)
        s, c = _angle_add(sp, cp, sb[None, :], cb[None, :])
        dp = acc_s * c - acc_c * s
        dp = tl.where(mask_m[:, None] & mask_e[None, :], dp, 0.0)
        # 4. This block's sums over its rows (all in frame f): dA0, dA1 and db[f] partials.
        part = demb_part_ptr + pid_m * 3 * E + e
        tl.store(part, tl.sum(dp * xv[:, None], axis=0), mask=mask_e)
        tl.store(part + E, tl.sum(dp * yv[:, None], axis=0), mask=mask_e)
        tl.store(part + 2 * E, tl.sum(dp, axis=0), mask=mask_e)


@triton.jit
def _fmm_bwd_dw_kernel(
    dyp_ptr,           # (M, N) fp32 dY', contiguous
    x_ptr,             # (MX, KX) activations, row stride stride_xm
    x_index_ptr,       # (M,) int64 row of x read by row m (HAS_X_INDEX)
    tx_ptr,            # (TW, 2E) fp32 [sin X | cos X] per tile column, contiguous
    ty_ptr,            # (TH, 2E) fp32 [sin Y | cos Y] per tile row, contiguous
    tb_ptr,            # (F, 2E) fp32 [sin B | cos B] per frame, contiguous
    dw_ptr,            # (SPLIT, N, KX + 2E) fp32 partial dW per row range (output), contiguous
    M,                 # int: rows (reduction length)
    N,                 # int
    KX,                # int
    E,                 # int
    HW,                # int: rows per frame (embedding)
    TW,                # int: tile columns (embedding)
    ROWS_PER_SPLIT,    # int: rows per range, a multiple of BLOCK_M
    stride_xm,         # int
    NEED_X: tl.constexpr,          # dW_x (program columns 0 .. cdiv(KX, BLOCK_K) - 1)
    HAS_X_INDEX: tl.constexpr,
    NEED_EMB: tl.constexpr,        # dW_sin, dW_cos (the remaining columns)
    DOT_PRECISION: tl.constexpr,
    BF16_OPERANDS: tl.constexpr,
    INTERPRETER: tl.constexpr,
    BLOCK_M: tl.constexpr,         # reduction step over rows
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    # 1. (output channels, input columns) tile and the row range of this split.
    pid_n = tl.program_id(0).to(tl.int64)
    pid_k = tl.program_id(1)
    pid_s = tl.program_id(2).to(tl.int64)
    offs_n, mask_n = _block(pid_n, BLOCK_N, N)
    offs_c = tl.arange(0, BLOCK_K)
    m_start = pid_s * ROWS_PER_SPLIT
    m_end = tl.minimum(m_start + ROWS_PER_SPLIT, M)
    K = KX + 2 * E
    out_rows = dw_ptr + pid_s * N * K + offs_n[:, None] * K            # (BLOCK_N, 1)
    n_kx = _x_col_blocks(KX, NEED_X, BLOCK_K)
    if pid_k < n_kx:
        # 2a. dW_x += dY'^T @ x[x_index], rows in steps of BLOCK_M from m_start.
        k = pid_k * BLOCK_K + offs_c
        mask_k = k < KX
        acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
        for m0 in range(m_start, m_end, BLOCK_M):
            offs_m = m0 + tl.arange(0, BLOCK_M)
            mask_m = offs_m < m_end
            dyt = tl.load(dyp_ptr + offs_m[None, :] * N + offs_n[:, None],
                          mask=mask_n[:, None] & mask_m[None, :], other=0.0)       # (BLOCK_N, BLOCK_M)
            rows = _gather_rows(x_index_ptr, offs_m, mask_m, HAS_X_INDEX)
            a = tl.load(x_ptr + rows[:, None] * stride_xm + k[None, :],
                        mask=mask_m[:, None] & mask_k[None, :], other=0.0)          # (BLOCK_M, BLOCK_K)
            acc = _mma(dyt, a, acc, DOT_PRECISION, BF16_OPERANDS, INTERPRETER)
        tl.store(out_rows + k[None, :], acc, mask=mask_n[:, None] & mask_k[None, :])
    elif NEED_EMB:
        # 2b. dW_sin += dY'^T @ sin(p), dW_cos += dY'^T @ cos(p), sin/cos p regenerated per row
        #     block from the tables by angle addition.
        e = (pid_k - n_kx) * BLOCK_K + offs_c
        mask_e = e < E
        acc_s = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
        acc_c = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
        for m0 in range(m_start, m_end, BLOCK_M):
            offs_m = m0 + tl.arange(0, BLOCK_M)
            mask_m = offs_m < m_end
            dyt = tl.load(dyp_ptr + offs_m[None, :] * N + offs_n[:, None],
                          mask=mask_n[:, None] & mask_m[None, :], other=0.0)
            f, rem = _divmod(offs_m, HW)
            i, j = _divmod(rem, TW)
            f = tl.where(mask_m, f, 0)
            t_mask = mask_m[:, None] & mask_e[None, :]
            tb_row = tb_ptr + f[:, None] * (2 * E)                        # (BLOCK_M, 1)
            sp, cp = _trig_xy(tx_ptr + j[:, None] * (2 * E), ty_ptr + i[:, None] * (2 * E), e, E,
                              t_mask)                                      # (BLOCK_M, BLOCK_K)
            sb = tl.load(tb_row + e[None, :], mask=t_mask, other=0.0)
            cb = tl.load(tb_row + (E + e)[None, :], mask=t_mask, other=0.0)
            s, c = _angle_add(sp, cp, sb, cb)
            acc_s = _mma(dyt, s, acc_s, DOT_PRECISION, BF16_OPERANDS, INTERPRETER)
            acc_c = _mma(dyt, c, acc_c, DOT_PRECISION, BF16_OPERANDS, INTERPRETER)
        w_mask = mask_n[:, None] & mask_e[None, :]
        tl.store(out_rows + (KX + e)[None, :], acc_s, mask=w_mask)
        tl.store(out_rows + (KX + E + e)[None, :], acc_c, mask=w_mask)


@triton.jit
def _segment_sum_kernel(
    src_ptr,           # (M, N) rows to scatter, row stride stride_src
    order_ptr,         # (M,) int64: source rows sorted by destination (stable)
    start_ptr,         # (P + 1,) int64: destination p takes order[start[p] : start[p + 1]]
    out_ptr,           # (P, N) fp32 output, contiguous
    N,                 # int
    stride_src,        # int
    BLOCK_N: tl.constexpr,
):
    # 1. One destination row, one column block.
    p = tl.program_id(0).to(tl.int64)
    offs_n = tl.program_id(1).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    lo = tl.load(start_ptr + p)
    hi = tl.load(start_ptr + p + 1)
    # 2. Sum its source rows in increasing row order (deterministic), store (zeros if none).
    acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for k in range(lo, hi):
        r = tl.load(order_ptr + k)
        acc += tl.load(src_ptr + r * stride_src + offs_n, mask=mask_n, other=0.0).to(tl.float32)
    tl.store(out_ptr + p * N + offs_n, acc, mask=mask_n)
