"""Triton kernel of the fused level (imported only by the Triton backend; see level.py for the math,
the checks and the launcher).

One CTA owns BLOCK_M rows of one frame and every channel of the level. A layer's output is
computed in tiles of BLOCK_C channels, one fp32 accumulator at a time, and kept as a tuple of
those tiles: tile t of one layer is K chunk t of the next. BLOCK_C is the per-layer kernel's K
step (kernels/linear._triton_config), so every output element is reduced over K in the same
chunks and order as in the per-layer chain. conv0 runs in the per-layer orientation (the shared
trig-free step), the convs and the ToRGB transposed, the activation chunk as the B operand:
    acc^T += W[tile, k-chunk] @ h^T[k]   for k = 0, 1, ...    (BLOCK_C, BLOCK_C) x (BLOCK_C, BLOCK_M)

Launch with enable_fp_fusion=False, as the per-layer kernel (the trig-free operand and the
epilogue are specified as separate fp32 multiplies and adds).
"""
import triton
import triton.language as tl

from ._common import interpreter_enabled
from ._linear_triton import _column, _store_rows
from ._triton_common import (
    _block,
    _colour_uint8,
    _divmod,
    _emb_mma,
    _mma,
    _round_bf16,
)

INTERPRETED = interpreter_enabled()   # how the kernels below were decorated (see load_triton_module)


@triton.jit
def _act(y, b, gain, clamp, HAS_CLAMP: tl.constexpr):
    """y + bias (b broadcast to y), lrelu * gain, clamp: the per-layer epilogue's op order (fp32)."""
    y = y + b
    y = tl.where(y > 0, y, y * 0.2) * gain
    if HAS_CLAMP:
        y = tl.minimum(tl.maximum(y, -clamp), clamp)
    return y


@triton.jit
def _as_activation(y, ROUND_BF16: tl.constexpr, INTERPRETER: tl.constexpr):
    """The fp32 epilogue result rounded as the per-layer store rounds it (bf16 activations:
    nearest even; the interpreter's casts truncate, so it rounds explicitly first)."""
    if ROUND_BF16:
        if INTERPRETER:
            y = _round_bf16(y).to(tl.bfloat16)
        else:
            y = y.to(tl.bfloat16)
    return y


@triton.jit
def _mma_t(a, b, acc, DOT_PRECISION: tl.constexpr, BF16_OPERANDS: tl.constexpr,
           INTERPRETER: tl.constexpr):
    """acc^T += a @ b, the transposed form of the per-layer product acc += b^T @ a^T, with the
    per-layer bits: the same products summed in the same order. Only 3xTF32 is not symmetric in
    its operands (_triton_common._mma adds x_lo @ y_hi, then x_hi @ y_lo, then x_hi @ y_hi for
    x @ y): with x = b^T, y = a^T its terms are a_hi @ b_lo, a_lo @ b_hi, a_hi @ b_hi here,
    _mma's TRANSPOSED order (one 3xTF32, written once)."""
    return _mma(a, b, acc, DOT_PRECISION, BF16_OPERANDS, INTERPRETER, TRANSPOSED=True)


@triton.jit
def _rgb_step(rgb, yT, wr_ptr, offs_r, mask_r, offs_k, C: tl.constexpr, DOT_PRECISION: tl.constexpr,
              BF16_OPERANDS: tl.constexpr, INTERPRETER: tl.constexpr):
    """rgb^T (BLOCK_R, BLOCK_M) += W_rgb[:, chunk] (BLOCK_R, BLOCK_C) @ y^T (BLOCK_C, BLOCK_M): the
    ToRGB's K step on one chunk of the last activation, as soon as the chunk exists."""
    w = tl.load(wr_ptr + offs_r[:, None] * C + offs_k[None, :],
                mask=mask_r[:, None] & (offs_k < C)[None, :], other=0.0)          # (BLOCK_R, BLOCK_C)
    return _mma_t(w, yT, rgb, DOT_PRECISION, BF16_OPERANDS, INTERPRETER)


@triton.jit
def _store_act(act_ptr, yT, offs_m, mask_m, offs_n, mask_n, C: tl.constexpr):
    """Chunk yT (BLOCK_C channels, BLOCK_M rows) of the last activation into its (M, C) rows: the
    values the per-layer conv stores (already rounded to the compute dtype)."""
    tl.store(act_ptr + offs_m[None, :] * C + offs_n[:, None], yT, mask=mask_n[:, None] & mask_m[None, :])


@triton.jit
def _last_chunk(rgb, yT, act_ptr, wr_ptr, offs_m, mask_m, offs_n, mask_n, offs_r, mask_r, C: tl.constexpr,
                HAS_ACT_OUT: tl.constexpr, DOT_PRECISION: tl.constexpr, BF16_OPERANDS: tl.constexpr,
                INTERPRETER: tl.constexpr):
    """A chunk of the level's last activation (conv0's with no conv after it, else the last
    conv's): stored for the next level (HAS_ACT_OUT), and the ToRGB's K step on it."""
    if HAS_ACT_OUT:
        _store_act(act_ptr, yT, offs_m, mask_m, offs_n, mask_n, C)
    return _rgb_step(rgb, yT, wr_ptr, offs_r, mask_r, offs_n, C, DOT_PRECISION, BF16_OPERANDS, INTERPRETER)


@triton.jit(do_not_specialize=["TH", "TW", "stride_of", "stride_oi", "stride_oj"],
            do_not_specialize_on_alignment=["out_ptr"])
def _fmm_level_kernel(
    wf_ptr,            # (F, C, 2E) conv0's folded embedding weights [W'_sin(f) | W'_cos(f)], contiguous
    tx_ptr,            # (TW, 2E) fp32 [sin X | cos X] per tile column, contiguous
    ty_ptr,            # (TH, 2E) fp32 [sin Y | cos Y] per tile row, contiguous
    pre_ptr,           # (MP, C) conv0's parent part (W'_h h_parent) fp32, row stride stride_pre
    pre_index_ptr,     # (M,) int64: row of pre read by row m (HAS_PRE_INDEX)
    b0_ptr,            # (C,) conv0 bias
    wc_ptr,            # (L, C, C) the following convs' weights, contiguous
    bc_ptr,            # (L, C) their biases, contiguous
    wr_ptr,            # (R, C) ToRGB weight, contiguous
    br_ptr,            # (R,) ToRGB bias
    post_ptr,          # (MQ, R) parent image (skip), row stride stride_post
    post_index_ptr,    # (M,) int64: row of post read by row m (HAS_POST_INDEX)
    out_ptr,           # (F, TH, TW, R) image fp32 or uint8, strides (stride_of, stride_oi, stride_oj, 1)
    act_ptr,           # (M, C) the last conv's activation in the compute dtype, contiguous (HAS_ACT_OUT)
    TH,                # int: tile rows (not specialised: every crop size shares one variant)
    TW,                # int: tile columns (idem)
    stride_pre,        # int
    stride_post,       # int
    stride_of,         # int: output frame stride (not specialised: a view into any frame buffer)
    stride_oi,         # int: output row stride
    stride_oj,         # int: output column stride
    gain,              # fp32: lrelu gain of the convs
    clamp,             # fp32: clamp of the convs (HAS_CLAMP)
    rgb_clamp,         # fp32: clamp of the ToRGB (HAS_RGB_CLAMP)
    C: tl.constexpr,               # channels of the level
    CP: tl.constexpr,              # C padded to a power of 2, >= BLOCK_C
    E: tl.constexpr,               # embedding frequencies
    L: tl.constexpr,               # convs after conv0 (conv1 and the extra convs)
    R: tl.constexpr,               # image channels (<= BLOCK_R)
    HAS_PRE: tl.constexpr,         # conv0's parent part (pre_ptr), by index with HAS_PRE_INDEX
    HAS_PRE_INDEX: tl.constexpr,
    HAS_POST: tl.constexpr,        # the parent image (post_ptr), by index with HAS_POST_INDEX
    HAS_POST_INDEX: tl.constexpr,
    HAS_CLAMP: tl.constexpr,       # clamp the convs' activations
    HAS_RGB_CLAMP: tl.constexpr,   # clamp the ToRGB output (before the skip)
    OUT_UINT8: tl.constexpr,       # store rint((y + 1) * 127.5) clamped to [0, 255] as uint8
    HAS_ACT_OUT: tl.constexpr,     # also store the last conv's activation (a level below the top:
                                   # the next level's split conv0 reads it)
    DOT_PRECISION: tl.constexpr,   # tl.dot input_precision of fp32 operands (kernels._common)
    BF16_OPERANDS: tl.constexpr,   # precision 'bf16': operands and activations bf16
    INTERPRETER: tl.constexpr,     # running in TRITON_INTERPRET (numpy) mode
    BLOCK_M: tl.constexpr,         # rows per CTA
    BLOCK_N: tl.constexpr,         # output column tile of conv0 and the convs (= BLOCK_C)
    BLOCK_C: tl.constexpr,         # channel chunk = the per-layer K step of the convs and ToRGB
    BLOCK_E: tl.constexpr,         # frequency step = the per-layer K step of the embedding GEMM
    BLOCK_R: tl.constexpr,         # padded image channels (a dot tile needs >= 16)
):
    # Channels padded to CP (a power of 2, >= BLOCK_C); padded channels have zero weights and
    # bias, so their activations are 0 and add nothing. A layer's output is computed in NT tiles of
    # BLOCK_C channels (= BLOCK_N): tile t is chunk t of the activation, the next layer's K step.
    # The convs run transposed, out^T (channels, rows) = W h^T, so that each activation chunk
    # h^T[k] (BLOCK_C, BLOCK_M) is the dot's B operand: on sm_90 wgmma reads it from shared
    # memory, so the activation is not held in registers between layers (it was: 152 B spilled
    # at 255 registers, C = 256). out^T[n, m] = sum_k W[n, k] h[m, k] is the same sum of the same
    # products in the same K order as out = h W^T: the same bits.
    tl.static_assert(BLOCK_N == BLOCK_C, "one column tile is one activation chunk")
    NT: tl.constexpr = CP // BLOCK_N
    # 1. Rows: program p is row block p % tiles_per_frame of frame p // tiles_per_frame (a block
    #    lies in one frame: conv0's folded weights are per frame). int64 before pointer arithmetic.
    pid = tl.program_id(0).to(tl.int64)
    hw = TH * TW
    tiles_per_frame = tl.cdiv(hw, BLOCK_M)
    f, tile = _divmod(pid, tiles_per_frame)
    r, mask_m = _block(tile, BLOCK_M, hw)                                   # pixel in the frame
    offs_m = f * hw + r                                                     # (BLOCK_M,) int64
    offs_t = tl.arange(0, BLOCK_N)
    offs_b = tl.arange(0, BLOCK_C)
    offs_r = tl.arange(0, BLOCK_R)
    mask_r = offs_r < R
    i, j = _divmod(r, TW)
    i = tl.where(mask_m, i, 0)
    j = tl.where(mask_m, j, 0)
    rgb = tl.zeros((BLOCK_R, BLOCK_M), dtype=tl.float32)                    # the image, transposed

    # 2. conv0 per column tile, in the per-layer orientation (the shared trig-free step):
    #    acc (BLOCK_M, BLOCK_N) += [sin(X+Y), cos(X+Y)] chunk @ the frame's folded weights (the
    #    per-layer kernel's frequency steps); + pre[pre_index] (the parent part of split conv0),
    #    + bias, lrelu, clamp; the chunk is kept transposed (BLOCK_N, BLOCK_M) for the convs.
    tx_row = tx_ptr + j[:, None] * (2 * E)                                  # (BLOCK_M, 1)
    ty_row = ty_ptr + i[:, None] * (2 * E)
    if HAS_PRE:
        if HAS_PRE_INDEX:
            p_rows = tl.load(pre_index_ptr + offs_m, mask=mask_m, other=0)
        else:
            p_rows = offs_m
        p_row = pre_ptr + p_rows[:, None] * stride_pre                      # (BLOCK_M, 1)
    h = ()
    for t in tl.static_range(NT):
        offs_n = t * BLOCK_N + offs_t
        mask_n = offs_n < C
        wf_cols = wf_ptr + f * C * (2 * E) + offs_n[None, :] * (2 * E)  # (1, BLOCK_N)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        acc = _emb_mma(acc, tx_row, ty_row, wf_cols, E, mask_m, mask_n, BLOCK_E, DOT_PRECISION,
                       BF16_OPERANDS, INTERPRETER)
        if HAS_PRE:
            acc = acc + tl.load(p_row + offs_n[None, :], mask=mask_m[:, None] & mask_n[None, :],
                                other=0.0).to(tl.float32)
        b = tl.load(b0_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
        yT = tl.trans(_as_activation(_act(acc, b, gain, clamp, HAS_CLAMP), BF16_OPERANDS, INTERPRETER))
        if L == 0:
            rgb = _last_chunk(rgb, yT, act_ptr, wr_ptr, offs_m, mask_m, offs_n, mask_n, offs_r, mask_r, C,
                              HAS_ACT_OUT, DOT_PRECISION, BF16_OPERANDS, INTERPRETER)
        else:
            h = h + (yT,)

    # 3. The following convs, per tile of output channels: acc^T += W[tile, k-chunk] @ h^T[k] for
    #    k = 0, 1, ... (the per-layer kernel's K steps in its order), epilogue, chunk t of the new
    #    activation; the last conv's chunks go straight into the ToRGB's K steps (the same chunks
    #    in the same order as the per-layer ToRGB), so the last activation is never kept (only
    #    stored, chunk by chunk, for a level below the top: HAS_ACT_OUT).
    for layer in tl.static_range(L):
        h_new = ()
        for t in tl.static_range(NT):
            offs_n = t * BLOCK_N + offs_t
            mask_n = offs_n < C
            w_rows = wc_ptr + layer * C * C + offs_n[:, None] * C           # (BLOCK_N, 1)
            acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
            for k in tl.static_range(CP // BLOCK_C):
                offs_k = k * BLOCK_C + offs_b
                w = tl.load(w_rows + offs_k[None, :], mask=mask_n[:, None] & (offs_k < C)[None, :],
                            other=0.0)                                      # (BLOCK_N, BLOCK_C)
                acc = _mma_t(w, h[k], acc, DOT_PRECISION, BF16_OPERANDS, INTERPRETER)
            b = tl.load(bc_ptr + layer * C + offs_n, mask=mask_n, other=0.0).to(tl.float32)[:, None]
            yT = _as_activation(_act(acc, b, gain, clamp, HAS_CLAMP), BF16_OPERANDS, INTERPRETER)
            if layer == L - 1:
                rgb = _last_chunk(rgb, yT, act_ptr, wr_ptr, offs_m, mask_m, offs_n, mask_n, offs_r, mask_r, C,
                                  HAS_ACT_OUT, DOT_PRECISION, BF16_OPERANDS, INTERPRETER)
            else:
                h_new = h_new + (yT,)
        h = h_new

    # 4. ToRGB's epilogue (no activation): + bias, clamp, + the parent image by index (the skip).
    y = rgb + tl.load(br_ptr + offs_r, mask=mask_r, other=0.0).to(tl.float32)[:, None]
    if HAS_RGB_CLAMP:
        y = tl.minimum(tl.maximum(y, -rgb_clamp), rgb_clamp)
    mask = mask_r[:, None] & mask_m[None, :]                                # (BLOCK_R, BLOCK_M)
    if HAS_POST:
        if HAS_POST_INDEX:
            q_rows = tl.load(post_index_ptr + offs_m, mask=mask_m, other=0)
        else:
            q_rows = offs_m
        y = y + tl.load(post_ptr + q_rows[None, :] * stride_post + offs_r[:, None], mask=mask,
                        other=0.0).to(tl.float32)

    # 5. Masked store of the image rows into the (F, TH, TW, R) output view, cast once.
    out = out_ptr + (f * stride_of + i * stride_oi + j * stride_oj)[None, :] + offs_r[:, None]
    if OUT_UINT8:
        tl.store(out, _colour_uint8(y), mask=mask)
    else:
        tl.store(out, y, mask=mask)


@triton.jit(do_not_specialize=["TH", "TW", "row_tiles", "stride_of", "stride_oi", "stride_oj"],
            do_not_specialize_on_alignment=["out_ptr"])
def _fmm_level_scratch_kernel(
    wf_ptr, tx_ptr, ty_ptr, pre_ptr, pre_index_ptr, b0_ptr, wc_ptr, bc_ptr, wr_ptr, br_ptr, post_ptr,
    post_index_ptr, out_ptr, act_ptr,   # as _fmm_level_kernel's
    scratch_ptr,       # (programs, 2, BLOCK_M, CP) compute dtype: each program's two activation buffers
    TH, TW,            # int: tile rows, columns (not specialised)
    row_tiles,         # int: F * cdiv(TH * TW, BLOCK_M) row blocks, walked by the programs in turn
    stride_pre, stride_post, stride_of, stride_oi, stride_oj, gain, clamp, rgb_clamp,
    C: tl.constexpr, CP: tl.constexpr, E: tl.constexpr, L: tl.constexpr, R: tl.constexpr,
    HAS_PRE: tl.constexpr, HAS_PRE_INDEX: tl.constexpr, HAS_POST: tl.constexpr, HAS_POST_INDEX: tl.constexpr,
    HAS_CLAMP: tl.constexpr, HAS_RGB_CLAMP: tl.constexpr, OUT_UINT8: tl.constexpr, HAS_ACT_OUT: tl.constexpr,
    DOT_PRECISION: tl.constexpr, BF16_OPERANDS: tl.constexpr, INTERPRETER: tl.constexpr,
    BLOCK_M: tl.constexpr,         # rows per block (of one frame)
    BLOCK_N: tl.constexpr,         # output column tile of conv0 and the convs (the per-layer kernel's)
    BLOCK_C: tl.constexpr,         # K step of the convs and the ToRGB (the per-layer kernel's)
    BLOCK_E: tl.constexpr,         # K step of the embedding GEMM (the per-layer kernel's)
    BLOCK_R: tl.constexpr,         # padded image channels
):
    """The level where the activations do not fit in registers (fp32, tf32; see level.py): each
    program owns a pair of activation buffers of BLOCK_M x C (64 KB fp32 at C = 256), small
    enough to stay in L2, and walks row blocks p = pid, pid + programs, ... . For a block, every
    layer is the per-layer kernel's own tile code (_linear_triton._column: the same K steps, the
    same epilogue, the same store rounding) reading the previous layer's output from one buffer
    and writing the other, the programs' threads synchronised between layers. So the bits are
    the per-layer chain's, the activations never go to HBM unless evicted, and the registers are
    the per-layer kernel's (a tile at a time), not a whole activation's. The last activation goes
    into act_ptr when HAS_ACT_OUT (the next level reads it), and the ToRGB reads it from there."""
    pid = tl.program_id(0).to(tl.int64)
    nprog = tl.num_programs(0)
    hw = TH * TW
    tiles_per_frame = tl.cdiv(hw, BLOCK_M)
    ROUND: tl.constexpr = BF16_OPERANDS and INTERPRETER    # interpreter casts truncate: round explicitly
    bufs = scratch_ptr + pid * (2 * BLOCK_M * CP)
    offs_r = tl.arange(0, BLOCK_R)
    mask_r = offs_r < R
    for p in range(pid, row_tiles, nprog):
        f, tile = _divmod(p, tiles_per_frame)
        r, mask_m = _block(tile, BLOCK_M, hw)                               # pixel in the frame
        offs_m = f * hw + r                                                 # (BLOCK_M,) int64
        i, j = _divmod(r, TW)
        i = tl.where(mask_m, i, 0)
        j = tl.where(mask_m, j, 0)
        # Buffer row m - first of this block's rows: the buffers are addressed with the block's
        # global row numbers, shifted (the tile code indexes its input and output by offs_m).
        shift = -(f * hw + tile * BLOCK_M) * CP
        # Layer l (0: conv0, 1..L: the convs) writes buffer l % 2, or act_ptr for the last layer of
        # a level whose activation is read on. conv0: the embedding, + pre[pre_index], bias, act.
        if L == 0 and HAS_ACT_OUT:
            dst = act_ptr
            dst_stride = C
        else:
            dst = bufs + shift
            dst_stride = CP
        for n0 in range(0, C, BLOCK_N):
            offs_n = n0 + tl.arange(0, BLOCK_N)
            _column(tx_ptr, tx_ptr, tx_ptr, wf_ptr, tx_ptr, ty_ptr, pre_ptr, pre_index_ptr, b0_ptr, tx_ptr,
                    tx_ptr, dst, offs_m, mask_m, f, i, j, offs_n, offs_n < C, C, 0, E, 0, 0, stride_pre, 0,
                    dst_stride, gain, clamp, False, False, True, HAS_PRE, HAS_PRE_INDEX, True, True, HAS_CLAMP,
                    False, False, DOT_PRECISION, BF16_OPERANDS, INTERPRETER, ROUND, BLOCK_M, BLOCK_N, BLOCK_E)
        tl.debug_barrier()                     # the block's conv0 output complete before it is read
        for layer in tl.static_range(1, L + 1):
            src = bufs + ((layer - 1) % 2) * (BLOCK_M * CP) + shift
            if layer == L and HAS_ACT_OUT:
                dst = act_ptr
                dst_stride = C
            else:
                dst = bufs + (layer % 2) * (BLOCK_M * CP) + shift
                dst_stride = CP
            for n0 in range(0, C, BLOCK_N):
                offs_n = n0 + tl.arange(0, BLOCK_N)
                _column(src, src, wc_ptr + (layer - 1) * C * C, tx_ptr, tx_ptr, ty_ptr, tx_ptr, tx_ptr,
                        bc_ptr + (layer - 1) * C, tx_ptr, tx_ptr, dst, offs_m, mask_m, f, i, j, offs_n, offs_n < C,
                        C, C, 0, CP, C, 0, 0, dst_stride, gain, clamp, True, False, False, False, False, True,
                        True, HAS_CLAMP, False, False, DOT_PRECISION, BF16_OPERANDS, INTERPRETER, ROUND, BLOCK_M,
                        BLOCK_N, BLOCK_C)
            tl.debug_barrier()
        # The ToRGB on the last activation: + bias, clamp, + the parent image by index, stored
        # into the (F, TH, TW, R) view.
        if HAS_ACT_OUT:
            last = act_ptr
            last_stride = C
        else:
            last = bufs + (L % 2) * (BLOCK_M * CP) + shift
            last_stride = CP
        y = _column(last, last, wr_ptr, tx_ptr, tx_ptr, ty_ptr, tx_ptr, tx_ptr, br_ptr, post_ptr, post_index_ptr,
                    tx_ptr, offs_m, mask_m, f, i, j, offs_r, mask_r, R, C, 0, last_stride, C, 0, stride_post, 0,
                    gain, rgb_clamp, True, False, False, False, False, True, False, HAS_RGB_CLAMP, HAS_POST,
                    HAS_POST_INDEX, DOT_PRECISION, BF16_OPERANDS, INTERPRETER, False, BLOCK_M, BLOCK_R, BLOCK_C,
                    STORE=False)
        _store_rows(out_ptr, out_ptr, y, offs_m, offs_r, mask_m[:, None] & mask_r[None, :], 0, TH, TW, stride_of,
                    stride_oi, stride_oj, OUT_UINT8, True, False)
        tl.debug_barrier()                     # this block's reads done before the next block writes
