"""Triton kernels for the colour epilogue (imported only by the Triton backend; see rgb.py).

Launch with enable_fp_fusion=False: the torch reference evaluates the same fp32 expressions with
separate multiplies and adds, and with the same order the two agree bit for bit (uint8 exact).
"""
import triton
import triton.language as tl

from ._common import interpreter_enabled
from ._triton_common import _block, _colour_uint8, _divmod, _rint

INTERPRETED = interpreter_enabled()   # how the kernels below were decorated (see load_triton_module)


@triton.jit
def _to_uint8_kernel(
    x_ptr,                 # (NUMEL,) fp32/bf16 image values, nominally in [-1, 1], contiguous
    out_ptr,               # (NUMEL,) uint8
    NUMEL,                 # int: number of values
    BLOCK: tl.constexpr,   # values per program
):
    # 1. Block of values; int64 before pointer arithmetic.
    offs, mask = _block(tl.program_id(0).to(tl.int64), BLOCK, NUMEL)
    # 2. rint((x + 1) * 127.5) clamped to [0, 255], fp32; masked store.
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + offs, _colour_uint8(x), mask=mask)


@triton.jit
def _luma(r, g, b, CR: tl.constexpr, CG: tl.constexpr, CB: tl.constexpr, OFFSET: tl.constexpr):
    """rint(((r*CR + g*CG) + b*CB) + OFFSET) clamped to [0, 255], fp32 (the reference's order)."""
    v = r * CR + g * CG + b * CB + OFFSET
    return _rint(tl.minimum(tl.maximum(v, 0.0), 255.0)).to(tl.uint8)


@triton.jit
def _rgb_to_yuv420_kernel(
    rgb_ptr,               # (F, H, W, 3) uint8 frames, contiguous
    out_ptr,               # (F, H * 3 // 2, W) uint8 I420: Y (H, W), U (H/2, W/2), V (H/2, W/2)
    H,                     # int: frame height (even)
    W,                     # int: frame width (even)
    Y_R: tl.constexpr,     # fp32 luma coefficients (219/255 Kr, Kg, Kb)
    Y_G: tl.constexpr,
    Y_B: tl.constexpr,
    U_R: tl.constexpr,     # fp32 Cb coefficients (224/255 (B - Y') / (2 (1 - Kb)) expanded)
    U_G: tl.constexpr,
    U_B: tl.constexpr,
    V_R: tl.constexpr,     # fp32 Cr coefficients (224/255 (R - Y') / (2 (1 - Kr)) expanded)
    V_G: tl.constexpr,
    V_B: tl.constexpr,
    BLOCK: tl.constexpr,   # 2x2 pixel blocks per program
):
    # 1. Map program ids to (frame, run of 2x2 blocks); int64 before pointer arithmetic.
    pid_f = tl.program_id(0).to(tl.int64)
    pid_b = tl.program_id(1).to(tl.int64)
    H2 = H // 2
    W2 = W // 2
    offs, mask = _block(pid_b, BLOCK, H2 * W2)                  # block index in the frame
    bi, bj = _divmod(offs, W2)
    src = rgb_ptr + pid_f * H * W * 3 + (2 * bi) * W * 3 + (2 * bj) * 3   # top-left pixel, R
    y_out = out_ptr + pid_f * (H * W + 2 * H2 * W2)

    # 2. Four pixels: luma each; chroma sums in fp32 (integers, exact).
    r_sum = tl.zeros((BLOCK,), tl.float32)
    g_sum = tl.zeros((BLOCK,), tl.float32)
    b_sum = tl.zeros((BLOCK,), tl.float32)
    for di in tl.static_range(2):
        for dj in tl.static_range(2):
            p = src + di * W * 3 + dj * 3
            r = tl.load(p, mask=mask, other=0).to(tl.float32)
            g = tl.load(p + 1, mask=mask, other=0).to(tl.float32)
            b = tl.load(p + 2, mask=mask, other=0).to(tl.float32)
            tl.store(y_out + (2 * bi + di) * W + 2 * bj + dj, _luma(r, g, b, Y_R, Y_G, Y_B, 16.0),
                     mask=mask)
            r_sum += r
            g_sum += g
            b_sum += b

    # 3. Chroma from the 2x2 average; planar U then V after the luma plane.
    r_avg = r_sum * 0.25
    g_avg = g_sum * 0.25
    b_avg = b_sum * 0.25
    u_out = y_out + H * W
    v_out = u_out + H2 * W2
    tl.store(u_out + offs, _luma(r_avg, g_avg, b_avg, U_R, U_G, U_B, 128.0), mask=mask)
    tl.store(v_out + offs, _luma(r_avg, g_avg, b_avg, V_R, V_G, V_B, 128.0), mask=mask)
