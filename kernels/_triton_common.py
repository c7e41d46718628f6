"""@triton.jit helpers shared by the kernels in kernels/_*_triton.py (imported only by the Triton
backend, through those modules).

Triton inlines a @triton.jit function into its caller, so a helper here compiles to the same
instructions as the code it replaces (python3 -m kernels.compile_check: same variants, registers,
spills and MMA kinds). Every floating-point helper states its op order: the kernels are launched
with enable_fp_fusion=False and their bits are matched by the torch paths.
"""
import triton
import triton.language as tl

from ._common import interpreter_enabled

INTERPRETED = interpreter_enabled()   # how the helpers below were decorated (see load_triton_module)


@triton.jit
def _round_bf16(x):
    """fp32 -> the nearest bf16 value (ties to even), kept in fp32 (finite inputs)."""
    bits = x.to(tl.uint32, bitcast=True)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _rint(v):
    """Round to nearest, ties to even, for 0 <= v <= 2^22 (1.5 * 2^23 leaves no fraction bits)."""
    return (v + 12582912.0) - 12582912.0


@triton.jit
def _colour_uint8(y):
    """rint((y + 1) * 127.5) clamped to [0, 255], as uint8 (the colour conversion, fp32)."""
    v = tl.minimum(tl.maximum((y + 1.0) * 127.5, 0.0), 255.0)
    return _rint(v).to(tl.uint8)


@triton.jit
def _round_tf32(x):
    """fp32 -> the nearest TF32 value (10 stored mantissa bits), ties away from zero, kept in fp32:
    the bits of kernels._common.tf32_round and of the hardware's cvt.rna.tf32.f32. Adding half of
    the dropped 13 bits to the sign-magnitude pattern and clearing them rounds the magnitude, so
    ties go away from zero; a carry into the exponent is the correct round up (up to inf past the
    largest finite TF32). For finite inputs and +-inf (kept); a NaN whose top 10 payload bits are
    all set would wrap to -0 (the torch model passes NaN through)."""
    bits = x.to(tl.uint32, bitcast=True)
    bits = (bits + 0x1000) & 0xFFFFE000
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _mma(a, b, acc, DOT_PRECISION: tl.constexpr, BF16_OPERANDS: tl.constexpr,
         INTERPRETER: tl.constexpr, TRANSPOSED: tl.constexpr = False):
    """acc += a @ b with fp32 accumulation; operands in bf16 (BF16_OPERANDS), or fp32 by
    DOT_PRECISION:

    "ieee"    exact fp32 products (an FMA dot: no tensor cores, <= 67 TFLOP/s on H200; precision
              'fp32-ieee').
    "tf32"    operands rounded to nearest TF32 (ties away, _round_tf32) here, then a TF32
              tensor-core dot (precision 'tf32'). The compiled dot truncates its operands (no
              cvt.rna.tf32 is emitted), which is exact on values that already are TF32, and the
              interpreter ignores input_precision and multiplies the fp32 values it gets: both
              therefore see exactly the operands of the torch model (kernels._common.tf32_round),
              and the three differ only by summation order.
    "tf32x3"  3xTF32 (precision 'fp32' on Triton): a = a_hi + a_lo with a_hi = tf32(a) and
              a_lo = tf32(a - a_hi) (a - a_hi is exact in fp32: |a - a_hi| <= 2^-11 |a| and it
              keeps a's last bit), same for b, and
                  acc += a_lo @ b_hi;  acc += a_hi @ b_lo;  acc += a_hi @ b_hi
              (small terms first, so they are not absorbed before the large ones arrive), three
              TF32 tensor-core dots whose products are exact in fp32 (11 x 11 significant bits).
              Error per product a*b, with u = 2^-24: the dropped a_lo*b_lo <= 2^-22 |ab|, the
              rounding of a_lo (12 significant bits rounded to 11) <= 2^-23 |a|, of b_lo likewise:
              <= (2^-22 + 2^-22) |ab| = 2^-21 |ab| = 8 u |ab| in the worst case (measured on
              2^20 random pairs: max 2^-21.09, mean 2^-24.2, about one fp32 rounding), against
              the exact products of "ieee"; the fp32 accumulation (gamma_K ~ K u of sum |ab|,
              worst case) dominates for K >= 8. Measured in the interpreter
              (tests/test_kernels_tf32x3.py), max |err| / sum |ab|: 7.8e-8 (x path, K = 96)
              against 3.0e-8 for "ieee" and 1.4e-4 for 'tf32'; the official small-64 fixture
              through the Triton engine: relative L2 8.7e-7, inside the fp32 parity bound 1e-5.
              Written out here, not left to Triton, so the interpreter runs the same algorithm.
              TRANSPOSED: this is the transposed form acc^T += a @ b of a product b^T @ a^T
              (the fused level kernel's): the cross terms come in the mirrored order a_hi @ b_lo,
              a_lo @ b_hi, so every element gets the per-layer product's sums in its order (the
              only operand-asymmetric mode).
    """
    if BF16_OPERANDS:
        if INTERPRETER:
            # The interpreter's bf16 tl.dot multiplies the raw uint16 bits and its fp32 -> bf16
            # cast truncates: emulate with bf16-rounded fp32 operands (exact products, fp32 sums).
            return tl.dot(_round_bf16(a.to(tl.float32)), _round_bf16(b.to(tl.float32)), acc,
                          input_precision="ieee")
        else:
            return tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16), acc)
    elif DOT_PRECISION == "tf32x3":
        a = a.to(tl.float32)
        b = b.to(tl.float32)
        a_hi = _round_tf32(a)
        b_hi = _round_tf32(b)
        a_lo = _round_tf32(a - a_hi)
        b_lo = _round_tf32(b - b_hi)
        if TRANSPOSED:
            acc = tl.dot(a_hi, b_lo, acc, input_precision="tf32")
            acc = tl.dot(a_lo, b_hi, acc, input_precision="tf32")
        else:
            acc = tl.dot(a_lo, b_hi, acc, input_precision="tf32")
            acc = tl.dot(a_hi, b_lo, acc, input_precision="tf32")
        return tl.dot(a_hi, b_hi, acc, input_precision="tf32")
    elif DOT_PRECISION == "tf32":
        return tl.dot(_round_tf32(a.to(tl.float32)), _round_tf32(b.to(tl.float32)), acc,
                      input_precision="tf32")
    else:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision=DOT_PRECISION)


@triton.jit
def _angle_add(s1, c1, s2, c2):
    """sin(u + v), cos(u + v) from sin/cos of u (s1, c1) and of v (s2, c2): s1*c2 + c1*s2 and
    c1*c2 - s1*s2, each product and sum rounded once (with enable_fp_fusion=False)."""
    return s1 * c2 + c1 * s2, c1 * c2 - s1 * s2


@triton.jit
def _trig_xy(tx_row, ty_row, e, E, t_mask):
    """sin(X + Y), cos(X + Y) (BLOCK_M, BLOCK_K) of the trig-free embedding for frequencies `e`
    (BLOCK_K,): tx_row / ty_row point at each row's [sin | cos] table row (BLOCK_M, 1) (tables of
    width 2E); masked entries load 0, so their result is 0."""
    sx = tl.load(tx_row + e[None, :], mask=t_mask, other=0.0)        # (BLOCK_M, BLOCK_K)
    cx = tl.load(tx_row + (E + e)[None, :], mask=t_mask, other=0.0)
    sy = tl.load(ty_row + e[None, :], mask=t_mask, other=0.0)
    cy = tl.load(ty_row + (E + e)[None, :], mask=t_mask, other=0.0)
    return _angle_add(sx, cx, sy, cy)


@triton.jit
def _emb_mma(acc, tx_row, ty_row, wf_cols, E, mask_m, mask_n, BLOCK_E: tl.constexpr,
             DOT_PRECISION: tl.constexpr, BF16_OPERANDS: tl.constexpr, INTERPRETER: tl.constexpr):
    """acc += [sin(X + Y), cos(X + Y)] @ [W'_s; W'_c] of the trig-free embedding, frequencies in
    steps of BLOCK_E from 0 (the reduction order never depends on M): tx_row / ty_row as in
    _trig_xy, wf_cols (1, BLOCK_N) points at each output column's folded frame weights [W'_s | W'_c]
    (width 2E). Padded frequencies (e >= E) and rows load 0: their operand is 0, their weights too."""
    offs_e = tl.arange(0, BLOCK_E)
    for e0 in range(0, E, BLOCK_E):
        e = e0 + offs_e
        mask_e = e < E
        s, c = _trig_xy(tx_row, ty_row, e, E, mask_m[:, None] & mask_e[None, :])   # (BLOCK_M, BLOCK_E)
        w_mask = mask_e[:, None] & mask_n[None, :]
        w_sin = tl.load(wf_cols + e[:, None], mask=w_mask, other=0.0)             # (BLOCK_E, BLOCK_N)
        w_cos = tl.load(wf_cols + (E + e)[:, None], mask=w_mask, other=0.0)
        acc = _mma(s, w_sin, acc, DOT_PRECISION, BF16_OPERANDS, INTERPRETER)
        acc = _mma(c, w_cos, acc, DOT_PRECISION, BF16_OPERANDS, INTERPRETER)
    return acc


@triton.jit
def _divmod(a, b):
    """(a // b, a - (a // b) * b) for a >= 0, b > 0: a row's (frame, pixel) or (tile row, column)."""
    q = a // b
    return q, a - q * b


@triton.jit
def _block(pid, BLOCK: tl.constexpr, size):
    """Offsets (BLOCK,) of block `pid` (int64 for pointer arithmetic) and their mask < size."""
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    return offs, offs < size


@triton.jit
def _gather_rows(index_ptr, offs_m, mask_m, HAS_INDEX: tl.constexpr):
    """The source row of each output row offs_m: index[offs_m] (HAS_INDEX), else offs_m itself."""
    if HAS_INDEX:
        rows = tl.load(index_ptr + offs_m, mask=mask_m, other=0)
    else:
        rows = offs_m
    return rows


@triton.jit
def _load_addend(ptr, index_ptr, offs_m, mask_m, offs_n, mask, stride, HAS_INDEX: tl.constexpr):
    """(BLOCK_M, BLOCK_N) fp32 tile of an addend (rows, N) read at rows index[offs_m] (or offs_m)."""
    rows = _gather_rows(index_ptr, offs_m, mask_m, HAS_INDEX)
    return tl.load(ptr + rows[:, None] * stride + offs_n[None, :], mask=mask, other=0.0).to(tl.float32)
