"""Triton kernel for FMM weight modulation (imported only by the Triton backend; see modulate.py)."""
import triton
import triton.language as tl

from ._common import interpreter_enabled
from ._triton_common import _block, _round_bf16

INTERPRETED = interpreter_enabled()   # how the kernels below were decorated (see load_triton_module)


@triton.jit
def _fmm_modulate_kernel(
    weight_ptr,           # (COUT, CIN) fp32 base weight, row stride stride_wo
    styles_ptr,           # (B, (CIN + COUT) * RANK) fp32 styles, row stride stride_sb
    out_ptr,              # (B, COUT, CIN) W', contiguous, fp32 or bf16
    COUT,                 # int: output channels
    CIN,                  # int: input channels
    stride_wo,            # int: weight row stride
    stride_sb,            # int: styles row stride
    sqrt_rank,            # fp32: sqrt(RANK)
    RANK: tl.constexpr,        # FMM rank r
    RANK_PAD: tl.constexpr,    # r padded to a power of two >= 16 (tl.dot minimum)
    DEMODULATE: tl.constexpr,  # divide rows by their L2 norm + 1e-8
    ROUND_BF16_STORE: tl.constexpr,  # bf16 output in TRITON_INTERPRET mode (its casts truncate)
    BLOCK_O: tl.constexpr,     # rows of W' per program
    BLOCK_I: tl.constexpr,     # columns per step of the CIN loop
):
    # 1. Map program ids to (video, block of output channels); int64 before pointer arithmetic.
    pid_b = tl.program_id(0).to(tl.int64)
    offs_o, mask_o = _block(tl.program_id(1).to(tl.int64), BLOCK_O, COUT)   # (BLOCK_O,)
    offs_r, mask_r = _block(0, RANK_PAD, RANK)                    # (RANK_PAD,)

    # 2. Left factor L[b, o, :] (BLOCK_O, RANK_PAD), zero-padded past RANK.
    left, right_row = _factors(styles_ptr, pid_b, stride_sb, offs_o, offs_r, mask_o, mask_r, COUT, RANK)

    # 3. Pass 1 (demodulation only): fp32 sum of squares of each row of W'.
    sumsq = tl.zeros((BLOCK_O,), dtype=tl.float32)
    if DEMODULATE:
        for i0 in range(0, CIN, BLOCK_I):
            w_mod = _modulated_tile(weight_ptr, right_row, left, offs_o, offs_r, mask_o, mask_r,
                                    i0, CIN, stride_wo, sqrt_rank, BLOCK_I)
            sumsq += tl.sum(w_mod * w_mod, axis=1)
    denom = tl.sqrt_rn(sumsq) + 1e-8                              # (BLOCK_O,)

    # 4. Pass 2: recompute each tile, scale, cast once on store.
    out_rows = out_ptr + pid_b * COUT * CIN + offs_o[:, None] * CIN
    for i0 in range(0, CIN, BLOCK_I):
        w_mod = _modulated_tile(weight_ptr, right_row, left, offs_o, offs_r, mask_o, mask_r,
                                i0, CIN, stride_wo, sqrt_rank, BLOCK_I)
        if DEMODULATE:
            w_mod = tl.div_rn(w_mod, tl.broadcast_to(denom[:, None], (BLOCK_O, BLOCK_I)))
        if ROUND_BF16_STORE:
            w_mod = _round_bf16(w_mod)
        offs_i = i0 + tl.arange(0, BLOCK_I)
        tl.store(out_rows + offs_i[None, :], w_mod.to(out_ptr.dtype.element_ty),
                 mask=mask_o[:, None] & (offs_i[None, :] < CIN))


@triton.jit
def _factors(styles_ptr, pid_b, stride_sb, offs_o, offs_r, mask_o, mask_r, COUT, RANK: tl.constexpr):
    """Video pid_b's left factor rows L[b, offs_o, :] (BLOCK_O, RANK_PAD), zero-padded past RANK,
    and the start of its right factor R[b] ((RANK, CIN) row-major) in the styles."""
    s_row = styles_ptr + pid_b * stride_sb
    left = tl.load(s_row + offs_o[:, None] * RANK + offs_r[None, :],
                   mask=mask_o[:, None] & mask_r[None, :], other=0.0)
    return left, s_row + COUT * RANK


@triton.jit
def _modulated_tile(weight_ptr, right_row, left, offs_o, offs_r, mask_o, mask_r,
                    i0, CIN, stride_wo, sqrt_rank, BLOCK_I: tl.constexpr):
    """weight[o, i] * (L[o] . R[:, i] / sqrt(r) + 1) for one (BLOCK_O, BLOCK_I) tile, fp32."""
    offs_i = i0 + tl.arange(0, BLOCK_I)
    mask_i = offs_i < CIN
    right = tl.load(right_row + offs_r[:, None] * CIN + offs_i[None, :],
                    mask=mask_r[:, None] & mask_i[None, :], other=0.0)          # (RANK_PAD, BLOCK_I)
    m = tl.dot(left, right, input_precision="ieee")                              # (BLOCK_O, BLOCK_I)
    w = tl.load(weight_ptr + offs_o[:, None] * stride_wo + offs_i[None, :],
                mask=mask_o[:, None] & mask_i[None, :], other=0.0)
    return w * (tl.div_rn(m, tl.zeros_like(m) + sqrt_rank) + 1.0)
