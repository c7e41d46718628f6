"""Triton kernel for the backward of FMM weight modulation (imported only by the Triton backend;
see modulate_backward.py for the math and the launcher)."""
import triton
import triton.language as tl

from ._common import interpreter_enabled, load_triton_module
from ._triton_common import _block

INTERPRETED = interpreter_enabled()   # how the kernels below were decorated (see load_triton_module)

_fwd = load_triton_module("_modulate_triton")
_modulated_tile = _fwd._modulated_tile
_factors = _fwd._factors


@triton.jit
def _fmm_modulate_bwd_kernel(
    grad_ptr,             # (B, COUT, CIN) dL/dW' fp32/bf16, contiguous
    weight_ptr,           # (COUT, CIN) fp32 base weight, row stride stride_wo
    styles_ptr,           # (B, (CIN + COUT) * RANK) fp32 styles, row stride stride_sb
    dw_part_ptr,          # (B, COUT, CIN) fp32 output: video b's share of dL/dweight
    dstyles_ptr,          # (B, (CIN + COUT) * RANK) fp32 output, contiguous: the L part is written here
    dr_part_ptr,          # (B, NOB, RANK, CIN) fp32 output: dR partials per block of rows
    COUT,                 # int
    CIN,                  # int
    NOB,                  # int: cdiv(COUT, BLOCK_O)
    stride_wo,            # int
    stride_sb,            # int
    sqrt_rank,            # fp32
    RANK: tl.constexpr,
    RANK_PAD: tl.constexpr,    # r padded to a power of two >= 16 (tl.dot minimum)
    DEMODULATE: tl.constexpr,
    BLOCK_O: tl.constexpr,
    BLOCK_I: tl.constexpr,
):
    # 1. (video, block of output channels); int64 before pointer arithmetic.
    pid_b = tl.program_id(0).to(tl.int64)
    pid_o = tl.program_id(1).to(tl.int64)
    offs_o, mask_o = _block(pid_o, BLOCK_O, COUT)
    offs_r, mask_r = _block(0, RANK_PAD, RANK)
    left, right_row = _factors(styles_ptr, pid_b, stride_sb, offs_o, offs_r, mask_o, mask_r, COUT,
                               RANK)                                           # (BLOCK_O, RANK_PAD)
    g_rows = grad_ptr + pid_b * COUT * CIN + offs_o[:, None] * CIN

    # 2. Pass 1 (demodulation): |U_o|^2 and sum_i dW'_oi U_oi per row, U = W * (1 + L R / sqrt r).
    sumsq = tl.zeros((BLOCK_O,), dtype=tl.float32)
    gdot = tl.zeros((BLOCK_O,), dtype=tl.float32)
    if DEMODULATE:
        for i0 in range(0, CIN, BLOCK_I):
            offs_i = i0 + tl.arange(0, BLOCK_I)
            u = _modulated_tile(weight_ptr, right_row, left, offs_o, offs_r, mask_o, mask_r,
                                i0, CIN, stride_wo, sqrt_rank, BLOCK_I)
            g = tl.load(g_rows + offs_i[None, :], mask=mask_o[:, None] & (offs_i[None, :] < CIN),
                        other=0.0).to(tl.float32)
            sumsq += tl.sum(u * u, axis=1)
            gdot += tl.sum(g * u, axis=1)
    norm = tl.sqrt_rn(sumsq)
    denom = norm + 1e-8
    # d(U / (|U| + eps))/dU applied to g: g / denom - U * (g.U) / (denom^2 |U|)  (0 when U = 0)
    coef = tl.where(norm > 0, gdot / (denom * denom * tl.where(norm > 0, norm, 1.0)), 0.0)

    # 3. Pass 2: dU, then dweight share dU * (1 + M), dM = dU * W / sqrt r -> dL, dR.
    dl = tl.zeros((BLOCK_O, RANK_PAD), dtype=tl.float32)
    for i0 in range(0, CIN, BLOCK_I):
        offs_i = i0 + tl.arange(0, BLOCK_I)
        mask_i = offs_i < CIN
        mask = mask_o[:, None] & mask_i[None, :]
        right = tl.load(right_row + offs_r[:, None] * CIN + offs_i[None, :],
                        mask=mask_r[:, None] & mask_i[None, :], other=0.0)    # (RANK_PAD, BLOCK_I)
        m = tl.dot(left, right, input_precision="ieee")
        w = tl.load(weight_ptr + offs_o[:, None] * stride_wo + offs_i[None, :], mask=mask, other=0.0)
        f1 = tl.div_rn(m, tl.zeros_like(m) + sqrt_rank) + 1.0
        g = tl.load(g_rows + offs_i[None, :], mask=mask, other=0.0).to(tl.float32)
        if DEMODULATE:
            u = w * f1
            du = tl.div_rn(g, tl.broadcast_to(denom[:, None], (BLOCK_O, BLOCK_I))) - u * coef[:, None]
        else:
            du = g
        tl.store(dw_part_ptr + pid_b * COUT * CIN + offs_o[:, None] * CIN + offs_i[None, :],
                 du * f1, mask=mask)
        dm = tl.div_rn(du * w, tl.zeros_like(du) + sqrt_rank)                  # (BLOCK_O, BLOCK_I)
        dm = tl.where(mask, dm, 0.0)
        dl = tl.dot(dm, tl.trans(right), dl, input_precision="ieee")          # (BLOCK_O, RANK_PAD)
        dr = tl.dot(tl.trans(left), dm, input_precision="ieee")               # (RANK_PAD, BLOCK_I)
        tl.store(dr_part_ptr + ((pid_b * NOB + pid_o) * RANK + offs_r[:, None]) * CIN
                 + offs_i[None, :], dr, mask=mask_r[:, None] & mask_i[None, :])
    # 4. dL rows of this block, straight into dstyles[:, :COUT * RANK].
    tl.store(dstyles_ptr + pid_b * (CIN + COUT) * RANK + offs_o[:, None] * RANK + offs_r[None, :], dl,
             mask=mask_o[:, None] & mask_r[None, :])
