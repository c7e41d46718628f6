"""Triton kernel for the fused modulated 1x1 layer (imported only by the Triton backend; see
linear.py for the math, the checks and the launcher).

Launch with enable_fp_fusion=False: the trig-free embedding operand sin(X+Y) = sx*cy + cx*sy,
cos(X+Y) = cx*cy - sx*sy is specified as separate fp32 multiplies and adds (the bits the torch
path produces from the same tables); contracting them into FMAs would change them. tl.dot is
unaffected; the epilogue costs a few more instructions. No sin/cos is evaluated here: the tables
come from the launcher.
"""
import triton
import triton.language as tl

from ._common import interpreter_enabled
from ._triton_common import _block, _colour_uint8, _divmod, _emb_mma, _gather_rows, _load_addend, _mma, _round_bf16

INTERPRETED = interpreter_enabled()   # how the kernels below were decorated (see load_triton_module)


# Sizes and the frame-buffer destination change with the view (a crop's tiles are any size, a
# tile's place in the chunk buffer any offset): left unspecialised, every tile of every view runs
# the same compiled variant (a 56x72 crop compiled 8 more, 0.6-6 s each). M, TH and TW only enter
# masks and divisions; the activations' pointers and row strides (channel counts) keep their
# 16-divisibility hints, which the vectorised loads and stores use.
@triton.jit(do_not_specialize=["M", "TH", "TW", "frame_ptr", "stride_of", "stride_oi", "stride_oj"])
def _fmm_linear_kernel(
    x_ptr,             # (MX, KX) activations fp32/bf16, row stride stride_xm
    x_index_ptr,       # (M,) int64: row of x read by output row m (HAS_X_INDEX)
    w_ptr,             # (N, KX + 2E) weight [W_x | W_sin | W_cos] fp32/bf16, row stride stride_wn
    wf_ptr,            # (F, N, 2E) per-frame folded weights [W'_sin(f) | W'_cos(f)] (fp32; bf16 for
                       # BF16_OPERANDS), contiguous
    tx_ptr,            # (TW, 2E) fp32 [sin X | cos X] per tile column, X = A0*xs[j], contiguous
    ty_ptr,            # (TH, 2E) fp32 [sin Y | cos Y] per tile row, Y = A1*ys[i], contiguous
    pre_ptr,           # (MP, N) addend before bias/activation, row stride stride_pre
    pre_index_ptr,     # (M,) int64: row of pre read by output row m (HAS_PRE_INDEX)
    bias_ptr,          # (N,) bias
    post_ptr,          # (MQ, N) addend after activation/clamp (RGB skip), row stride stride_post
    post_index_ptr,    # (M,) int64: row of post read by output row m (HAS_POST_INDEX)
    rgb_w_ptr,         # (R, N) folded ToRGB weight, contiguous (RGB_FOLD)
    rgb_b_ptr,         # (R,) its bias
    rgb_post_ptr,      # (MQ, R) the parent image (skip), row stride stride_rgb_post (RGB_HAS_POST)
    rgb_post_index_ptr,  # (M,) int64: row of the parent image read by row m (RGB_HAS_POST_INDEX)
    rgb_out_ptr,       # (M, R) image fp32/uint8, row stride R (RGB_FOLD, not OUT_FRAMES)
    out_ptr,           # (M, N) output fp32/bf16/uint8, row stride stride_om (not OUT_FRAMES)
    frame_ptr,         # (F, TH, TW, N) output view, strides (stride_of, stride_oi, stride_oj, 1) (OUT_FRAMES)
    M,                 # int: output rows (F * TH * TW when the embedding is on)
    R,                 # int: image channels of the folded ToRGB (<= BLOCK_R)
    N,                 # int: output channels
    KX,                # int: x channels (0 without x)
    E,                 # int: embedding frequencies (0 without embedding)
    TH,                # int: tile rows (the embedding's, or OUT_FRAMES's view)
    TW,                # int: tile columns
    stride_xm,         # int
    stride_wn,         # int
    stride_pre,        # int
    stride_post,       # int
    stride_om,         # int
    stride_of,         # int: OUT_FRAMES strides of a frame, a row, a column
    stride_oi,         # int
    stride_oj,         # int
    gain,              # fp32: lrelu gain
    clamp,             # fp32: clamp bound (HAS_CLAMP)
    rgb_clamp,         # fp32: the folded ToRGB's clamp (RGB_HAS_CLAMP)
    stride_rgb_post,   # int
    HAS_X: tl.constexpr,
    HAS_X_INDEX: tl.constexpr,
    HAS_EMB: tl.constexpr,
    HAS_PRE: tl.constexpr,
    HAS_PRE_INDEX: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    ACT: tl.constexpr,
    HAS_CLAMP: tl.constexpr,
    HAS_POST: tl.constexpr,
    HAS_POST_INDEX: tl.constexpr,
    OUT_UINT8: tl.constexpr,       # store rint((y + 1) * 127.5) clamped to [0, 255] as uint8
    OUT_FRAMES: tl.constexpr,      # store row m = (f, i, j) at frame_ptr + f*stride_of + i*stride_oi + j*stride_oj
    RGB_FOLD: tl.constexpr,        # also the ToRGB of this layer's output (OUT_UINT8 / OUT_FRAMES: the image's)
    RGB_HAS_CLAMP: tl.constexpr,
    RGB_HAS_POST: tl.constexpr,
    RGB_HAS_POST_INDEX: tl.constexpr,
    DOT_PRECISION: tl.constexpr,   # "ieee" (fp32) or "tf32"
    BF16_OPERANDS: tl.constexpr,   # precision 'bf16'
    INTERPRETER: tl.constexpr,     # running in TRITON_INTERPRET (numpy) mode
    ROUND_BF16_STORE: tl.constexpr,  # bf16 output under the interpreter: round explicitly
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,         # K step, for x channels and for embedding frequencies
    BLOCK_R: tl.constexpr,         # image channels padded to a dot tile (RGB_FOLD)
):
    # 1. Map program ids to a (BLOCK_M, BLOCK_N) output tile; int64 before pointer arithmetic.
    #    With the embedding a row tile lies in one frame f (its folded weights are per frame):
    #    program pid_m is row block pid_m % tiles_per_frame of frame pid_m // tiles_per_frame.
    pid_m = tl.program_id(0).to(tl.int64)
    pid_n = tl.program_id(1).to(tl.int64)       # 0 with RGB_FOLD (one CTA per row block)
    if HAS_EMB:
        hw = TH * TW
        tiles_per_frame = tl.cdiv(hw, BLOCK_M)
        f, tile = _divmod(pid_m, tiles_per_frame)
        r, mask_m = _block(tile, BLOCK_M, hw)                     # pixel in the frame
        offs_m = f * hw + r                                       # (BLOCK_M,) int64
    else:
        offs_m, mask_m = _block(pid_m, BLOCK_M, M)                # (BLOCK_M,) int64
    if HAS_EMB:
        i, j = _divmod(r, TW)
        i = tl.where(mask_m, i, 0)
        j = tl.where(mask_m, j, 0)
    else:
        f = 0
        i = offs_m
        j = offs_m
    if RGB_FOLD:
        # The ToRGB folded into this layer's epilogue: the CTA owns whole rows and walks the
        # column tiles in order; column tile t (BLOCK_N = the ToRGB's K step) of the activation
        # is K chunk t of the image's GEMM, reduced in the per-layer ToRGB's chunks and order.
        offs_r = tl.arange(0, BLOCK_R)
        mask_r = offs_r < R
        rgb = tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32)
        for n0 in range(0, N, BLOCK_N):
            offs_n = n0 + tl.arange(0, BLOCK_N)
            mask_n = offs_n < N
            h = _column(x_ptr, x_index_ptr, w_ptr, wf_ptr, tx_ptr, ty_ptr, pre_ptr, pre_index_ptr, bias_ptr,
                        post_ptr, post_index_ptr, out_ptr, offs_m, mask_m, f, i, j, offs_n, mask_n, N, KX, E,
                        stride_xm, stride_wn, stride_pre, stride_post, stride_om, gain, clamp, HAS_X, HAS_X_INDEX,
                        HAS_EMB, HAS_PRE, HAS_PRE_INDEX, HAS_BIAS, ACT, HAS_CLAMP, HAS_POST, HAS_POST_INDEX,
                        DOT_PRECISION, BF16_OPERANDS, INTERPRETER, ROUND_BF16_STORE, BLOCK_M, BLOCK_N, BLOCK_K)
            w = tl.load(rgb_w_ptr + offs_r[None, :] * N + offs_n[:, None],
                        mask=mask_n[:, None] & mask_r[None, :], other=0.0)           # (BLOCK_N, BLOCK_R)
            rgb = _mma(h, w, rgb, DOT_PRECISION, BF16_OPERANDS, INTERPRETER)
        # the per-layer ToRGB's epilogue: + bias, clamp, + the parent image by index
        mask = mask_m[:, None] & mask_r[None, :]
        y = rgb + tl.load(rgb_b_ptr + offs_r, mask=mask_r, other=0.0).to(tl.float32)[None, :]
        if RGB_HAS_CLAMP:
            y = tl.minimum(tl.maximum(y, -rgb_clamp), rgb_clamp)
        if RGB_HAS_POST:
            y = y + _load_addend(rgb_post_ptr, rgb_post_index_ptr, offs_m, mask_m, offs_r, mask,
                                 stride_rgb_post, RGB_HAS_POST_INDEX)
        _store_rows(rgb_out_ptr, frame_ptr, y, offs_m, offs_r, mask, R, TH, TW, stride_of, stride_oi,
                    stride_oj, OUT_UINT8, OUT_FRAMES, False)
    else:
        offs_n, mask_n = _block(pid_n, BLOCK_N, N)                # (BLOCK_N,) int64
        y = _column(x_ptr, x_index_ptr, w_ptr, wf_ptr, tx_ptr, ty_ptr, pre_ptr, pre_index_ptr, bias_ptr,
                    post_ptr, post_index_ptr, out_ptr, offs_m, mask_m, f, i, j, offs_n, mask_n, N, KX, E,
                    stride_xm, stride_wn, stride_pre, stride_post, stride_om, gain, clamp, HAS_X, HAS_X_INDEX,
                    HAS_EMB, HAS_PRE, HAS_PRE_INDEX, HAS_BIAS, ACT, HAS_CLAMP, HAS_POST, HAS_POST_INDEX,
                    DOT_PRECISION, BF16_OPERANDS, INTERPRETER, ROUND_BF16_STORE, BLOCK_M, BLOCK_N, BLOCK_K,
                    STORE=False)
        # 5. Masked store, cast once: rows of the (M, N) output, or straight into the view of the
        #    chunk's frame buffer (the last ToRGB: no copy of the tile afterwards).
        _store_rows(out_ptr, frame_ptr, y, offs_m, offs_n, mask_m[:, None] & mask_n[None, :], stride_om, TH, TW,
                    stride_of, stride_oi, stride_oj, OUT_UINT8, OUT_FRAMES, ROUND_BF16_STORE)


@triton.jit
def _column(x_ptr, x_index_ptr, w_ptr, wf_ptr, tx_ptr, ty_ptr, pre_ptr, pre_index_ptr, bias_ptr, post_ptr,
            post_index_ptr, out_ptr, offs_m, mask_m, f, i, j, offs_n, mask_n, N, KX, E, stride_xm, stride_wn,
            stride_pre, stride_post, stride_om, gain, clamp, HAS_X: tl.constexpr, HAS_X_INDEX: tl.constexpr,
            HAS_EMB: tl.constexpr, HAS_PRE: tl.constexpr, HAS_PRE_INDEX: tl.constexpr, HAS_BIAS: tl.constexpr,
            ACT: tl.constexpr, HAS_CLAMP: tl.constexpr, HAS_POST: tl.constexpr, HAS_POST_INDEX: tl.constexpr,
            DOT_PRECISION: tl.constexpr, BF16_OPERANDS: tl.constexpr, INTERPRETER: tl.constexpr,
            ROUND_BF16_STORE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
            STORE: tl.constexpr = True):
    """One (BLOCK_M, BLOCK_N) output tile: GEMM over x and the embedding, the fp32 epilogue.
    STORE: also store it as the (M, N) output and return the stored values (in the output dtype:
    the next GEMM's operand); else return the fp32 epilogue result (the caller stores it)."""
    offs_k = tl.arange(0, BLOCK_K)
    w_cols = w_ptr + offs_n[None, :] * stride_wn                  # (1, BLOCK_N) row starts of W
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)

    # 2. x @ W_x^T, K in steps of BLOCK_K from 0: the order of the reduction never depends on M.
    if HAS_X:
        x_rows = _gather_rows(x_index_ptr, offs_m, mask_m, HAS_X_INDEX)
        x_row_ptr = x_ptr + x_rows[:, None] * stride_xm           # (BLOCK_M, 1)
        for k0 in range(0, KX, BLOCK_K):
            k = k0 + offs_k
            mask_k = k < KX
            a = tl.load(x_row_ptr + k[None, :], mask=mask_m[:, None] & mask_k[None, :], other=0.0)
            b = tl.load(w_cols + k[:, None], mask=mask_k[:, None] & mask_n[None, :], other=0.0)
            acc = _mma(a, b, acc, DOT_PRECISION, BF16_OPERANDS, INTERPRETER)

    # 3. Trig-free embedding generated in registers: row m = (f, i, j) of the tile has the
    #    frame-independent operand [sin(X_j + Y_i), cos(X_j + Y_i)] by angle addition from the
    #    column and row tables (no sin/cos here), times frame f's folded weights.
    if HAS_EMB:
        tx_row = tx_ptr + j[:, None] * (2 * E)                    # (BLOCK_M, 1)
        ty_row = ty_ptr + i[:, None] * (2 * E)
        wf_cols = wf_ptr + f * N * (2 * E) + offs_n[None, :] * (2 * E)   # (1, BLOCK_N)
        acc = _emb_mma(acc, tx_row, ty_row, wf_cols, E, mask_m, mask_n, BLOCK_K, DOT_PRECISION, BF16_OPERANDS,
                       INTERPRETER)

    # 4. Epilogue in fp32: + pre[pre_index] + bias, lrelu * gain, clamp, + post[post_index].
    mask = mask_m[:, None] & mask_n[None, :]
    y = acc
    if HAS_PRE:
        y = y + _load_addend(pre_ptr, pre_index_ptr, offs_m, mask_m, offs_n, mask, stride_pre,
                             HAS_PRE_INDEX)
    if HAS_BIAS:
        y = y + tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    if ACT:
        y = tl.where(y > 0, y, y * 0.2) * gain
    if HAS_CLAMP:
        y = tl.minimum(tl.maximum(y, -clamp), clamp)
    if HAS_POST:
        y = y + _load_addend(post_ptr, post_index_ptr, offs_m, mask_m, offs_n, mask, stride_post,
                             HAS_POST_INDEX)
    if STORE:
        out = out_ptr + offs_m[:, None] * stride_om + offs_n[None, :]
        if ROUND_BF16_STORE:
            h = _round_bf16(y).to(tl.bfloat16)                    # interpreter casts truncate
        else:
            h = y.to(out.dtype.element_ty)                        # bf16: round to nearest even
        tl.store(out, h, mask=mask)
        y = tl.where(mask, h, 0.0)
    return y


@triton.jit
def _store_rows(out_ptr, frame_ptr, y, offs_m, offs_n, mask, stride_om, TH, TW, stride_of, stride_oi, stride_oj,
                OUT_UINT8: tl.constexpr, OUT_FRAMES: tl.constexpr, ROUND_BF16_STORE: tl.constexpr):
    """Masked store of fp32 `y` (rows offs_m, columns offs_n), cast once: as rows of out_ptr, or
    into the (F, TH, TW, .) view at frame_ptr (row m = (f, i, j))."""
    if OUT_FRAMES:
        fo, ro = _divmod(offs_m, TH * TW)
        io, jo = _divmod(ro, TW)
        out = frame_ptr + (fo * stride_of + io * stride_oi + jo * stride_oj)[:, None] + offs_n[None, :]
    else:
        out = out_ptr + offs_m[:, None] * stride_om + offs_n[None, :]
    if OUT_UINT8:
        tl.store(out, _colour_uint8(y), mask=mask)
    elif ROUND_BF16_STORE:
        tl.store(out, _round_bf16(y).to(tl.bfloat16), mask=mask)   # interpreter casts truncate
    else:
        tl.store(out, y.to(out.dtype.element_ty), mask=mask)   # bf16: round to nearest even
