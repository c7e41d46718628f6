"""The modulated 1x1 layer as one GEMM over the rows of a tile, with fused prologue and epilogue.

Rows are pixels x frames of one video's tile, in (f, i, j) row-major order over F frames x h rows
x w columns. With the per-video weight W = [W_x | W_sin | W_cos] of shape (N, Kx + 2E):

    y   = x[x_index] @ W_x^T  +  e @ [W_sin | W_cos]^T  +  pre_add[pre_index]          (M, N)
    e[m] = [sin(A[:,0]*xs[j] + A[:,1]*ys[i] + b[f]), cos(same)]   for m = (f, i, j)    (M, 2E)
    y   = y + bias;  if act: y = lrelu(y) * gain;  if clamp: y = clamp(y, -clamp, clamp)
    out = y + post_add[post_index]       (stored as out_dtype, or as uint8 colour, see below)

Every term is optional: without x, Kx = 0; without the embedding, E = 0; an index left out means
the identity. lrelu(y) = max(y, 0.2 y). The embedding is generated in the prologue, never stored
(torch path: in blocks of tile rows).

Trig-free embedding (DESIGN §7), the same in both backends and in the backward. The phase is a
column term X = A0*xs[j], a row term Y = A1*ys[i] and a frame term B = b[f], so

    e @ [W_sin | W_cos]^T = sin(X+Y) W'_sin(f)^T + cos(X+Y) W'_cos(f)^T
    sin(X+Y) = sx*cy + cx*sy,   cos(X+Y) = cx*cy - sx*sy                  (angle addition)
    W'_sin(f) = W_sin diag(cos B) - W_cos diag(sin B),  W'_cos(f) = W_sin diag(sin B) + W_cos diag(cos B)

from tables tx = [sin X | cos X] (w, 2E), ty (h, 2E), tb (F, 2E) (`emb_tables`: fp64 of the exact
products, rounded once), the frame-independent operand built with 4 multiplies and 2 adds
(`trig_operand_`) and per-frame folded weights (`fold_frame_weights`, F x N x 2E per call). No
sin/cos is evaluated per pixel: the Triton kernel has none, the launchers evaluate the tables once
per call with torch. Tables, operand and folded weights are elementwise with a fixed op order (no
FMA), so their bits do not depend on the tile, and the two backends use the very same values.

Error against the exact statement (sin/cos of the exact A0*x + A1*y + b of the fp32 inputs), per
frequency, with u = 2^-24 (rounding a value below 1 in magnitude costs <= u/2): table entries
<= u/2; operand entries <= (sqrt2 + 2) u = 3.4 u (table errors times |sin|+|cos| <= sqrt2, u/2 for
each product, u for the sum); folded weights <= 2.5 u (|W_sin| + |W_cos|) (tables u/2, products
and sum u relative each); so one frequency's contribution is off by <= (3.4 + 2.5) sqrt2 u =
8.4 u per unit of |W_sin| + |W_cos|, before the GEMM's own summation error. The fp32 statement it
replaces rounds the phase twice: at |phase| ~ 10 that is up to ulp(8) = 9.5e-7 = 16 u of phase
error, at ~30 up to 32 u (and the direct sin/cos adds ~1 u). Measured at the
official small-64 fixture's phases (|phase| <= 10.9, 128 x 128 grid, 16 frames): operand max error
2.3 u, sin/cos(X+Y+B) by angle addition (the backward's operand) 3.8 u, the old sin/cos of the
fp32 phase 20 u; e @ W^T with exact sums, max |err| / sum|w|: 0.33 u new vs 0.82 u old, relative
L2 6.1e-8 vs 1.1e-7. At |phase| <= 29 (uniform A in [-12, 12]^2, b in [-6, 6]): operand 2.4 u,
angle addition 3.7 u, old 47.5 u; e @ W^T 0.29 u vs 2.1 u, relative L2 6.0e-8 vs 2.7e-7. The new
embedding is therefore inside the fp32 parity bound with room (the fixtures' rel. L2 stays 1.06e-6
for the engine, 9.1e-7 for fast_synthesis, as with the direct sin/cos).

Split conv0: W'.[up(h), e] = up(W'_h h) + W'_e e. Run the feature part at the parent resolution
(fmm_linear(W'_h, h)), then the child call adds it by index (pre_add, pre_index=nearest_index(...)).
The ToRGB skip img = up(img) + rgb is post_add/post_index (the clamp applies to rgb first).

out_uint8=True (the last ToRGB) stores rint((y + 1) * 127.5) clamped to [0, 255] as uint8,
rounding half to even like torch.round.

Precision (argument `precision`), accumulation always fp32:
  'fp32'       the fp32 statement. Torch path: fp32 GEMMs. Triton: 3xTF32 on the tensor cores
               (_triton_common._mma "tf32x3": each operand = TF32 head + TF32 tail, three TF32
               dots, tail x head, head x tail, head x head); each product within 2^-21 of the
               exact one, below the fp32 accumulation error: max |err| / sum|ab| 7.8e-8 against
               3.0e-8 for exact products and 1.4e-4 for tf32; official fixture rel. L2 8.7e-7.
  'fp32-ieee'  the same statement with Triton's exact-product FMA dot (input_precision="ieee",
               no tensor cores, <= 67 TFLOP/s on H200); the torch path is 'fp32' bit for bit.
  'tf32'       operands rounded to TF32, to nearest, ties away (tf32_round). Triton rounds them
               itself (_round_tf32) before the TF32 dot, which truncates (exact on TF32 values),
               so the compiled kernel, the interpreter and the torch path (rounded operands, then
               an fp32 GEMM) multiply the same operands and differ only by summation order.
  'bf16'  operands cast to bf16. The torch CPU path rounds the GEMM result to bf16 once before the
          fp32 epilogue (CPU matmul has no bf16 x bf16 -> fp32 output); Triton keeps it in fp32.

Determinism: a row's bits do not depend on the tile (its number of rows M, or the offset of the
row in it), per backend and device. Triton: tile sizes and the K order come from (Kx, E, N,
precision) only, never from M; no autotuning by timing (it could pick other tiles in another
process). Torch: the GEMMs run on at least MIN_GEMM_ROWS rows with 64-byte aligned, zero-padded
K (CPU matmul uses other bits for a few rows or unaligned rows), and elementwise ops only.
With the embedding, Triton's row tiles lie in one frame and the torch GEMMs run per frame (each
frame has its folded weights). The two backends see the same operand and weight values and
differ from each other only by the GEMMs' summation order.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F_

from ._common import (
    GEMM_ALIGN_BYTES,
    MIN_GEMM_ROWS,
    cdiv,
    check_out_layout,
    check_tensor,
    gemm_precision_cast,
    load_triton_module,
    resolve_backend,
    round_up,
    tensor_device,
    tf32_round,
    triton_dot_precision,
)
from ._linear_args import _INT32_MAX, SQRT2, FmmLinearArgs, _args, _check_fmm_linear, _Dims, check_args  # noqa: F401

__all__ = ["fmm_linear", "fmm_linear_reference", "fmm_linear_torch", "fmm_linear_triton",
           "nearest_index", "SQRT2"]

# Torch path: rows per GEMM chunk, so that a chunk's operand rows and fp32 result (the epilogue
# passes over it) stay in cache; CPU GEMM speed is flat from a few hundred rows. Any value gives
# the same bits (rows are independent past MIN_GEMM_ROWS).
_TORCH_CHUNK_BYTES = 4 << 20
_TORCH_MIN_CHUNK_ROWS = 256
_TORCH_MAX_CHUNK_ROWS = 8192
# Torch path with the embedding: bytes of per-frame folded weights (frames x N x Kp) held at once.
_TORCH_FOLD_BYTES = 8 << 20


# ---- shared pieces of the torch paths -----------------------------------------------------------

def _row_chunks(d: "_Dims", rows_per_chunk: int):
    """Chunks (c0, c1, f0, f1, i0, i1) of the output rows. With the embedding a chunk is whole
    frames f0:f1 (when one fits) or whole tile rows i0:i1 of frame f0 (at least one), so that its
    phase is a broadcast, never a gather; otherwise plain runs of rows. Chunking never changes a
    bit (rows are independent)."""
    if not d.E:
        for c0 in range(0, d.M, rows_per_chunk):
            yield c0, min(d.M, c0 + rows_per_chunk), 0, 0, 0, 0
        return
    hw = d.TH * d.TW
    if hw <= rows_per_chunk:
        step = rows_per_chunk // hw
        for f0 in range(0, d.F, step):
            f1 = min(d.F, f0 + step)
            yield f0 * hw, f1 * hw, f0, f1, 0, d.TH
        return
    step = max(1, rows_per_chunk // d.TW)
    for f in range(d.F):
        for i0 in range(0, d.TH, step):
            i1 = min(d.TH, i0 + step)
            c0 = f * hw + i0 * d.TW
            yield c0, c0 + (i1 - i0) * d.TW, f, f + 1, i0, i1


def rows_per_chunk(row_bytes: int) -> int:
    """Rows per chunk of the torch paths (forward and backward) for `row_bytes` per row."""
    return min(_TORCH_MAX_CHUNK_ROWS,
               max(_TORCH_MIN_CHUNK_ROWS, _TORCH_CHUNK_BYTES // row_bytes // 64 * 64))


def _epilogue_(y: torch.Tensor, rows: slice, a: FmmLinearArgs) -> torch.Tensor:
    """In place on fp32 `y` (m, N) for output rows `rows`; the same op order as the kernel."""
    pre_add, pre_index, post_add, post_index = a.pre_add, a.pre_index, a.post_add, a.post_index
    bias, act, gain, clamp = a.bias, a.act, a.gain, a.clamp
    if pre_add is not None:
        y += pre_add[rows] if pre_index is None else pre_add.index_select(0, pre_index[rows])
    if bias is not None:
        y += bias
    if act:
        F_.leaky_relu_(y, 0.2)            # y > 0 ? y : y * 0.2, i.e. max(y, 0.2 y)
        y *= gain
    if clamp is not None:
        y.clamp_(-clamp, clamp)
    if post_add is not None:
        y += post_add[rows] if post_index is None else post_add.index_select(0, post_index[rows])
    if a.out_dtype == torch.uint8:
        y += 1.0
        y *= 127.5
        y.clamp_(0.0, 255.0)
        y.round_()                        # half to even
    return y


# ---- the trig-free embedding (tables, operand, folded weights; both backends) ----------------------

def emb_tables(emb_A: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor, emb_b: torch.Tensor,
               dtype: Optional[torch.dtype] = None):
    """[sin | cos] tables of the three phase terms X = A0*xs[j], Y = A1*ys[i], B = b[f]:
    tx (w, 2E), ty (h, 2E), tb (F, 2E), in `dtype` (default: emb_A's, fp32).

    Evaluated in fp64 and rounded once: an fp32 x fp32 product is exact in fp64 (48 of 53 bits),
    so each entry is sin/cos of the exact term, correctly rounded (error <= 2^-25, half an ulp of
    1) but for the fp64 sin's own ~1e-16. Elementwise: an entry does not depend on the tile it is
    computed in. (w + h + F) * 2E values per call, against F*h*w*2E of the direct statement."""
    wide = torch.float64
    dtype = dtype or emb_A.dtype
    A = emb_A.to(wide)
    terms = (xs.to(wide)[:, None] * A[:, 0], ys.to(wide)[:, None] * A[:, 1], emb_b.to(wide))
    return tuple(torch.cat([t.sin(), t.cos()], dim=1).to(dtype) for t in terms)


def trig_operand_(tx: torch.Tensor, ty: torch.Tensor, s_out: torch.Tensor, c_out: torch.Tensor,
                  tmp: torch.Tensor) -> None:
    """sin(X+Y), cos(X+Y) of the tile rows of `ty` (nh, 2E) x the columns of `tx` (w, 2E) by angle
    addition, into s_out, c_out ((nh*w, E) views, rows (i, j) row-major; fp32 or bf16, rounded on
    store). The op order the Triton kernels use, every product and sum rounded once (no FMA):
        s = sx*cy + cx*sy,   c = cx*cy - sx*sy.
    tmp: fp32 scratch (2, >= nh*w, E)."""
    E = tx.shape[1] // 2
    nh, w = ty.shape[0], tx.shape[0]
    sx, cx = tx[None, :, :E], tx[None, :, E:]                        # (1, w, E)
    sy, cy = ty[:, None, :E], ty[:, None, E:]                        # (nh, 1, E)
    t1 = tmp[0, :nh * w].view(nh, w, E)
    t2 = tmp[1, :nh * w].view(nh, w, E)
    torch.mul(sx, cy, out=t1)
    torch.mul(cx, sy, out=t2)
    torch.add(t1, t2, out=s_out.view(nh, w, E))
    torch.mul(cx, cy, out=t1)
    torch.mul(sx, sy, out=t2)
    torch.sub(t1, t2, out=c_out.view(nh, w, E))


def fold_frame_weights(w_emb: torch.Tensor, tb: torch.Tensor) -> torch.Tensor:
    """Per-frame embedding weights (g, N, 2E) = [W'_sin(f) | W'_cos(f)] from w_emb (N, 2E) =
    [W_sin | W_cos] and the frame tables tb (g, 2E) = [sin B | cos B]:
        W'_sin = W_sin*cos B - W_cos*sin B,   W'_cos = W_sin*sin B + W_cos*cos B
    so that sin(P+B) W_sin + cos(P+B) W_cos = sin(P) W'_sin + cos(P) W'_cos (P = X+Y). Same
    dtype as w_emb; every product and sum rounded once."""
    E = tb.shape[1] // 2
    ws, wc = w_emb[None, :, :E], w_emb[None, :, E:]                  # (1, N, E)
    sb, cb = tb[:, None, :E], tb[:, None, E:]                        # (g, 1, E)
    return torch.cat([ws * cb - wc * sb, ws * sb + wc * cb], dim=2)


# ---- torch reference ----------------------------------------------------------------------------

def fmm_linear_reference(weight, x=None, **kw) -> torch.Tensor:
    """Plain, unfused torch statement of the op (materialises x[x_index] and the embedding); the
    arguments of fmm_linear but `backend`. The embedding is sin/cos of the phase A0*x + A1*y + b
    evaluated in fp64 (exact products, no trig-free rewriting), rounded once to fp32. Operands
    rounded to `precision`, then one fp32 GEMM: exact products, fp32 accumulation."""
    args = _args(weight, x, **kw)
    d = check_args(args)
    x, x_index, emb_A, emb_b, xs, ys, precision = (args.x, args.x_index, args.emb_A, args.emb_b,
                                                   args.xs, args.ys, args.precision)
    parts = []
    if x is not None:
        parts.append((x if x_index is None else x[x_index]).float())
    if d.E:
        A, b = emb_A.double(), emb_b.double()
        xd, yd = xs.double()[None, None, :, None], ys.double()[None, :, None, None]
        phase = A[:, 0] * xd + A[:, 1] * yd + b[:, None, None, :]                # (F, h, w, E)
        phase = phase.reshape(d.M, d.E)
        parts.append(torch.cat([phase.sin(), phase.cos()], dim=1).float())
    if parts:
        a = gemm_precision_cast(torch.cat(parts, dim=1), precision)
        y = a @ gemm_precision_cast(weight, precision).t()
    else:
        y = torch.zeros((d.M, d.N), dtype=torch.float32, device=weight.device)
    return _epilogue_(y, slice(None), args).to(args.out_dtype)


# ---- torch fast path (the CPU product path) -----------------------------------------------------

def fmm_linear_torch(weight, x=None, **kw) -> torch.Tensor:
    """Chunked torch implementation (the arguments of fmm_linear but `backend`): per chunk of rows,
    one GEMM over [x[x_index] | sin | cos] written into one aligned, zero-padded buffer, then the
    fp32 epilogue in place."""
    args = _args(weight, x, **kw)
    return _fmm_linear_torch(args, check_args(args))


def _fmm_linear_torch(args: FmmLinearArgs, d: _Dims) -> torch.Tensor:
    """The torch path on checked arguments (`d` = check_args(args))."""
    weight, x, x_index, emb_A, emb_b, xs, ys, precision = (args.weight, args.x, args.x_index, args.emb_A,
                                                           args.emb_b, args.xs, args.ys, args.precision)
    dev = weight.device
    M, N, KX, E = d.M, d.N, d.KX, d.E
    out = torch.empty((M, N), dtype=d.out_dtype, device=dev)
    if M == 0:
        return out
    K = KX + 2 * E
    cdt = torch.bfloat16 if precision == "bf16" else torch.float32
    esize = torch.finfo(cdt).bits // 8
    Kp = round_up(max(K, 1), GEMM_ALIGN_BYTES // esize)          # 64-byte rows
    chunk_rows = rows_per_chunk(Kp * esize + N * 4)
    # The GEMM writes straight into `out` when nothing is left to cast.
    gemm_into_out = cdt == torch.float32 and d.out_dtype == torch.float32

    def gemm_epilogue(a, wt_t, m, rows):
        # 2. One GEMM, fp32 accumulation (bf16: result rounded to bf16 by torch).
        if gemm_into_out and a.shape[0] == m:
            y = torch.mm(a, wt_t, out=out[rows])
        else:
            y = torch.mm(a, wt_t)[:m]
            if y.dtype != torch.float32:
                y = y.float()
        # 3. Epilogue in place, fp32; cast once into `out`.
        _epilogue_(y, rows, args)
        if y.data_ptr() != out[rows].data_ptr():
            out[rows].copy_(y)

    def x_rows(rows):
        src = x[rows] if x_index is None else x.index_select(0, x_index[rows])
        return tf32_round(src.float()) if precision == "tf32" else src

    if not K:                                                    # epilogue only
        for c0 in range(0, M, chunk_rows):
            rows = slice(c0, min(M, c0 + chunk_rows))
            y = torch.zeros((rows.stop - c0, N), dtype=torch.float32, device=dev)
            out[rows].copy_(_epilogue_(y, rows, args))
        return out

    if not E:
        # x only: chunks of rows, one GEMM each; x is used in place when it already is the
        # aligned operand the buffer would hold.
        wt = torch.empty((N, Kp), dtype=cdt, device=dev)
        wt[:, :K] = tf32_round(weight.float()) if precision == "tf32" else weight
        wt[:, K:].zero_()
        direct = (x_index is None and x.dtype == cdt and precision != "tf32" and KX == Kp
                  and (x.stride(0) * esize) % GEMM_ALIGN_BYTES == 0
                  and x.data_ptr() % GEMM_ALIGN_BYTES == 0)
        chunks = [(c0, min(M, c0 + chunk_rows)) for c0 in range(0, M, chunk_rows)]
        if not direct or min(c1 - c0 for c0, c1 in chunks) < MIN_GEMM_ROWS:
            buf = torch.empty((max(MIN_GEMM_ROWS, max(c1 - c0 for c0, c1 in chunks)), Kp),
                              dtype=cdt, device=dev)
            buf[:, K:].zero_()
        for c0, c1 in chunks:
            m, rows = c1 - c0, slice(c0, c1)
            # 1. Operand rows [x[x_index] | 0] (m, Kp), at least MIN_GEMM_ROWS of them.
            if direct and m >= MIN_GEMM_ROWS:
                a = x[rows]
            else:
                a = buf[:max(m, MIN_GEMM_ROWS)]
                if m < a.shape[0]:
                    a[m:].zero_()
                a[:m, :KX].copy_(x_rows(rows))
            gemm_epilogue(a, wt.t(), m, rows)
        return out

    # With the embedding (see "Trig-free embedding" in the module docstring): the operand
    # [x | sin(X+Y) | cos(X+Y)] of a block of tile rows i0:i1 is the same for every frame; frame f
    # multiplies it by its own folded weight [W_x | W'_sin(f) | W'_cos(f)]. Loops: frame groups
    # (their folded weights, at most _TORCH_FOLD_BYTES), blocks of tile rows (the operand, built
    # once per group, or once per call when one block holds the tile), frames (one GEMM each).
    TH, TW, F = d.TH, d.TW, d.F
    hw = TH * TW
    step = TH if hw <= chunk_rows else max(1, chunk_rows // TW)
    blocks = [(i0, min(TH, i0 + step)) for i0 in range(0, TH, step)]
    max_rows = min(TH, step) * TW
    buf = torch.empty((max(MIN_GEMM_ROWS, max_rows), Kp), dtype=cdt, device=dev)
    buf[:, K:].zero_()
    tx, ty, tb = emb_tables(emb_A, xs, ys, emb_b)                 # (w, 2E), (h, 2E), (F, 2E)
    group = max(1, min(F, _TORCH_FOLD_BYTES // (N * Kp * esize)))
    wt = torch.empty((group, N, Kp), dtype=cdt, device=dev)
    wt[:, :, K:].zero_()
    if KX:
        wt[:, :, :KX] = tf32_round(weight[:, :KX].float()) if precision == "tf32" else weight[:, :KX]
    w_emb = weight[:, KX:].float()                                   # (N, 2E) [W_sin | W_cos]
    tmp = torch.empty((2, max_rows, E), dtype=torch.float32, device=dev)
    stage = (torch.empty((max_rows, 2 * E), dtype=torch.float32, device=dev)
             if precision == "tf32" else None)
    built = None
    for g0 in range(0, F, group):
        g1 = min(F, g0 + group)
        folded = fold_frame_weights(w_emb, tb[g0:g1])               # (g, N, 2E) fp32
        wt[:g1 - g0, :, KX:K] = tf32_round(folded) if precision == "tf32" else folded
        del folded
        for i0, i1 in blocks:
            m = (i1 - i0) * TW
            a = buf[:max(m, MIN_GEMM_ROWS)]
            if built != (i0, i1):
                # 1. Operand rows [. | sin(X+Y) | cos(X+Y) | 0] (m, Kp), at least MIN_GEMM_ROWS.
                if m < a.shape[0]:
                    a[m:].zero_()
                dst = stage[:m] if stage is not None else a[:m, KX:K]
                trig_operand_(tx, ty[i0:i1], dst[:, :E], dst[:, E:], tmp[:, :m])
                if stage is not None:
                    a[:m, KX:K].copy_(tf32_round(dst))
                built = (i0, i1)
            for f in range(g0, g1):
                c0 = f * hw + i0 * TW
                rows = slice(c0, c0 + m)
                if KX:
                    a[:m, :KX].copy_(x_rows(rows))
                gemm_epilogue(a, wt[f - g0].t(), m, rows)
    return out


# ---- triton launcher ----------------------------------------------------------------------------

def _triton_config(KX: int, E: int, N: int, precision: str) -> dict:
    """Tile sizes and launch settings from the layer shape and precision only (never from M), so a
    row's reduction order, and its bits, are the same in every tile."""
    BLOCK_N = 16 if N <= 16 else 32 if N <= 32 else 64 if N <= 64 else 128
    BLOCK_K = 64 if precision == "bf16" else 32
    if E:
        # The trig-free prologue loads four (BLOCK_M, BLOCK_K) fp32 table tiles per K step,
        # pipelined through shared memory: at the steps above sm_90 needed 360 KB (bf16) and
        # spilled 28 bytes (fp32, 255 registers). Half the step: 180 / 115 / 74 KB (bf16 / tf32 /
        # fp32), 220 / 174 / 254 registers, no spill (python3 -m kernels.compile_check).
        BLOCK_K //= 2
    fp32 = precision in ("fp32", "fp32-ieee")
    BLOCK_M = 128 if (N <= 16 or not fp32) else 64
    num_warps = 8 if BLOCK_M * BLOCK_N >= 128 * 128 else 4
    if fp32 and (E or precision == "fp32-ieee") and BLOCK_M * BLOCK_N >= 64 * 128:
        # 8 warps halve the (64, 128) accumulator per thread (the tile and its reduction order are
        # unchanged). The FMA dot (fp32-ieee) with four table tiles spilled 56 bytes at 255
        # registers on sm_80 with 4 warps, its x path 32 B on sm_90 (254-255 registers), 128 /
        # 198-200 registers on 8. 3xTF32 ('fp32') keeps 64 rows: at 128 x 128 sm_80 spilled
        # 20-36 B at 255 registers (python3 -m kernels.compile_check).
        num_warps = 8
    return dict(BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K, num_warps=num_warps, num_stages=3)


def fmm_linear_triton(weight, x=None, **kw) -> torch.Tensor:
    """Triton launcher (CUDA tensors, or CPU tensors under TRITON_INTERPRET=1): one fused kernel.
    The arguments of fmm_linear but `backend`."""
    return _fmm_linear_triton(_args(weight, x, **kw))


def _fmm_linear_triton(a: FmmLinearArgs, frames: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Check (the Triton path's only check) and launch. frames: the (F, h, w, N) view the output
    is stored into (fmm_linear's out=), else a new (M, N) tensor is returned."""
    d = check_args(a)
    weight, precision = a.weight, a.precision
    resolve_backend("triton", weight.device)
    if frames is None:
        out = torch.empty((d.M, d.N), dtype=d.out_dtype, device=weight.device)
        TH, TW = d.TH, d.TW
    else:
        TH, TW = check_out_view(frames, d, weight.device)
        out = frames
    if d.M == 0:
        return out
    cfg = _triton_config(d.KX, d.E, d.N, precision)
    launch_fmm_linear(a, d, cfg, out=None if frames is not None else out, frames=frames, TH=TH, TW=TW)
    return out


def launch_fmm_linear(a: FmmLinearArgs, d: _Dims, cfg: dict, out: Optional[torch.Tensor],
                      frames: Optional[torch.Tensor], TH: int, TW: int, rgb=None) -> None:
    """Launch _fmm_linear_kernel (arguments checked by the caller): the layer's (M, N) rows into
    `out`, or into the (F, TH, TW, N) view `frames`. rgb: the ToRGB folded into the epilogue
    (kernels/linear_rgb.py's RgbFold; its image goes to rgb.out, or to `frames`), the layer's
    rows then into `out`."""
    weight, x, x_index, pre_add, pre_index, bias, post_add, post_index, clamp, precision = (
        a.weight, a.x, a.x_index, a.pre_add, a.pre_index, a.bias, a.post_add, a.post_index,
        a.clamp, a.precision)
    # With the embedding, row tiles never straddle frames (each frame has its folded weights).
    row_tiles = (d.F * cdiv(d.TH * d.TW, cfg["BLOCK_M"]) if d.E else cdiv(d.M, cfg["BLOCK_M"]))
    grid = (row_tiles, 1 if rgb is not None else cdiv(d.N, cfg["BLOCK_N"]))
    if grid[1] > 65535:
        raise ValueError(f"N = {d.N} needs more than 65535 column tiles")
    if row_tiles > _INT32_MAX:
        raise ValueError(f"{row_tiles} row tiles exceed the grid's 2^31 - 1")
    if d.E:
        # The tables and the folded weights: tiny torch ops once per call, outside the kernel
        # (the same values the torch path uses).
        tx, ty, tb = emb_tables(a.emb_A, a.xs, a.ys, a.emb_b)     # (w, 2E), (h, 2E), (F, 2E)
        wf = fold_frame_weights(weight[:, d.KX:].float(), tb)     # (F, N, 2E) contiguous
        if precision == "bf16":
            # Rounded once here as the kernel's dot would (nearest even; same bits), so the
            # kernel streams half the bytes.
            wf = wf.to(torch.bfloat16)
    if bias is not None:
        bias = bias.contiguous()
    dummy = weight  # pointer for absent operands; never read (their HAS_* flag is off)
    frame_strides = frames.stride()[:3] if frames is not None else (0, 0, 0)
    uint8 = (rgb.uint8 if rgb is not None else d.out_dtype == torch.uint8)
    mod = load_triton_module("_linear_triton")
    mod._fmm_linear_kernel[grid](
        dummy if x is None else x,
        dummy if x_index is None else x_index,
        weight,
        dummy if not d.E else wf,
        dummy if not d.E else tx,
        dummy if not d.E else ty,
        dummy if pre_add is None else pre_add,
        dummy if pre_index is None else pre_index,
        dummy if bias is None else bias,
        dummy if post_add is None else post_add,
        dummy if post_index is None else post_index,
        dummy if rgb is None else rgb.W,
        dummy if rgb is None else rgb.bias,
        dummy if rgb is None or rgb.img is None else rgb.img,
        dummy if rgb is None or rgb.img_index is None else rgb.img_index,
        dummy if rgb is None or rgb.out is None else rgb.out,
        dummy if out is None else out,
        dummy if frames is None else frames,
        d.M, 0 if rgb is None else rgb.W.shape[0], d.N, d.KX, d.E, TH, TW,
        x.stride(0) if x is not None else 0,
        weight.stride(0),
        pre_add.stride(0) if pre_add is not None else 0,
        post_add.stride(0) if post_add is not None else 0,
        out.stride(0) if out is not None else 0,
        *frame_strides,
        a.gain, 0.0 if clamp is None else clamp,
        0.0 if rgb is None or rgb.clamp is None else rgb.clamp,
        0 if rgb is None or rgb.img is None else rgb.img.stride(0),
        HAS_X=x is not None, HAS_X_INDEX=x_index is not None, HAS_EMB=d.E > 0,
        HAS_PRE=pre_add is not None, HAS_PRE_INDEX=pre_index is not None,
        HAS_BIAS=bias is not None, ACT=a.act, HAS_CLAMP=clamp is not None,
        HAS_POST=post_add is not None, HAS_POST_INDEX=post_index is not None,
        OUT_UINT8=uint8,
        OUT_FRAMES=frames is not None,
        RGB_FOLD=rgb is not None,
        RGB_HAS_CLAMP=rgb is not None and rgb.clamp is not None,
        RGB_HAS_POST=rgb is not None and rgb.img is not None,
        RGB_HAS_POST_INDEX=rgb is not None and rgb.img_index is not None,
        DOT_PRECISION=triton_dot_precision(precision),
        BF16_OPERANDS=precision == "bf16",
        INTERPRETER=mod.INTERPRETED,
        ROUND_BF16_STORE=mod.INTERPRETED and d.out_dtype == torch.bfloat16,
        BLOCK_R=16,
        enable_fp_fusion=False,
        **cfg,
    )


@torch.library.custom_op("digan::fmm_linear", mutates_args=())
def _fmm_linear_op(weight: torch.Tensor, x: Optional[torch.Tensor], x_index: Optional[torch.Tensor],
                   emb_A: Optional[torch.Tensor], emb_b: Optional[torch.Tensor],
                   xs: Optional[torch.Tensor], ys: Optional[torch.Tensor],
                   pre_add: Optional[torch.Tensor], pre_index: Optional[torch.Tensor],
                   bias: Optional[torch.Tensor], act: bool, gain: float, clamp: Optional[float],
                   post_add: Optional[torch.Tensor], post_index: Optional[torch.Tensor],
                   out_dtype: torch.dtype, precision: str) -> torch.Tensor:
    # The slots of FmmLinearArgs (the schema needs them spelled out).
    return _fmm_linear_triton(FmmLinearArgs(weight, x, x_index, emb_A, emb_b, xs, ys, pre_add,
                                            pre_index, bias, act, gain, clamp, post_add,
                                            post_index, out_dtype, precision))


@_fmm_linear_op.register_fake
def _fmm_linear_fake(*args):
    d = check_args(FmmLinearArgs(*args), check_values=False)
    return args[0].new_empty((d.M, d.N), dtype=d.out_dtype)


@torch.library.custom_op("digan::fmm_linear_out", mutates_args=("out",))
def _fmm_linear_out_op(out: torch.Tensor, weight: torch.Tensor, x: Optional[torch.Tensor],
                       x_index: Optional[torch.Tensor], emb_A: Optional[torch.Tensor],
                       emb_b: Optional[torch.Tensor], xs: Optional[torch.Tensor], ys: Optional[torch.Tensor],
                       pre_add: Optional[torch.Tensor], pre_index: Optional[torch.Tensor],
                       bias: Optional[torch.Tensor], act: bool, gain: float, clamp: Optional[float],
                       post_add: Optional[torch.Tensor], post_index: Optional[torch.Tensor],
                       out_dtype: torch.dtype, precision: str) -> None:
    # digan::fmm_linear storing into `out`, an (F, h, w, N) view (of the renderer's frame buffer).
    _fmm_linear_triton(FmmLinearArgs(weight, x, x_index, emb_A, emb_b, xs, ys, pre_add, pre_index,
                                     bias, act, gain, clamp, post_add, post_index, out_dtype,
                                     precision), frames=out)


@_fmm_linear_out_op.register_fake
def _fmm_linear_out_fake(out, *args):
    check_out_view(out, check_args(FmmLinearArgs(*args), check_values=False), args[0].device)


def check_out_view(out, d, dev: torch.device) -> Tuple[int, int]:
    """fmm_linear's out=: an (F, h, w, N) view (any strides, unit stride across channels) of
    out_dtype on `dev` with F*h*w = M rows, (h, w) the embedding's tile when there is one;
    returns (h, w)."""
    check_tensor(out, "out", ndim=4, dtypes=(d.out_dtype,), device=dev)
    F, h, w, N = out.shape
    if N != d.N or F * h * w != d.M:
        raise ValueError(f"out has shape {tuple(out.shape)}; the op writes {d.M} rows of {d.N} "
                         "channels as (frames, rows, columns, channels)")
    if d.E and (F, h, w) != (d.F, d.TH, d.TW):
        raise ValueError(f"out has {F} frames of {h}x{w}; the embedding tile is {d.F} of {d.TH}x{d.TW}")
    check_out_layout(out, "channels")
    return h, w


# ---- dispatch -----------------------------------------------------------------------------------

def fmm_linear(weight: torch.Tensor, x: Optional[torch.Tensor] = None, *,
               x_index: Optional[torch.Tensor] = None,
               emb_A: Optional[torch.Tensor] = None, emb_b: Optional[torch.Tensor] = None,
               xs: Optional[torch.Tensor] = None, ys: Optional[torch.Tensor] = None,
               pre_add: Optional[torch.Tensor] = None, pre_index: Optional[torch.Tensor] = None,
               bias: Optional[torch.Tensor] = None, act: bool = False, gain: float = SQRT2,
               clamp: Optional[float] = None,
               post_add: Optional[torch.Tensor] = None, post_index: Optional[torch.Tensor] = None,
               out_dtype: Optional[torch.dtype] = None, out_uint8: bool = False,
               precision: str = "fp32", backend: str = "auto",
               out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Fused modulated 1x1 layer over the rows of one tile (see the module docstring).

    weight (N, Kx + 2E); x (Mx, Kx) fp32/bf16 with optional x_index (M,) int64; embedding from
    emb_A (E, 2), emb_b (F, E), xs (w,), ys (h,), all fp32, M = F*h*w; pre_add (Mp, N) with
    pre_index (M,); bias (N,); post_add (Mq, N) with post_index (M,). Returns (M, N) in out_dtype
    (default fp32, bf16 for precision='bf16'), or uint8 colour with out_uint8=True.
    backend: 'auto' (Triton for CUDA tensors when available, else torch), 'triton', 'torch'.
    out: an (F, h, w, N) tensor (any strides, unit stride across channels, e.g. a tile's place
    in a frame buffer) the rows are stored into, (f, i, j) at out[f, i, j]; returns it. The
    Triton kernel stores there directly; the torch path copies its result in."""
    return fmm_linear_args(_args(weight, x, x_index=x_index, emb_A=emb_A, emb_b=emb_b, xs=xs, ys=ys,
                                 pre_add=pre_add, pre_index=pre_index, bias=bias, act=act,
                                 gain=gain, clamp=clamp, post_add=post_add, post_index=post_index,
                                 out_dtype=out_dtype, out_uint8=out_uint8, precision=precision),
                           backend, out)


def fmm_linear_args(a: FmmLinearArgs, backend: str = "auto", out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """fmm_linear on an FmmLinearArgs: checked once, by the custom op (Triton) or here (torch)."""
    triton_path = resolve_backend(backend, tensor_device(a.weight, "weight")) == "triton"
    if out is not None:
        if triton_path:
            torch.ops.digan.fmm_linear_out(out, *a)
        else:
            d = check_args(a)
            check_out_view(out, d, a.weight.device)
            out.copy_(_fmm_linear_torch(a, d).view(out.shape))
        return out
    if triton_path:
        return torch.ops.digan.fmm_linear(*a)
    return _fmm_linear_torch(a, check_args(a))


# ---- index helper -------------------------------------------------------------------------------

def nearest_index(frames: int, child_rect: Sequence[int], parent_rect: Sequence[int], *,
                  factor: int = 2, device=None) -> torch.Tensor:
    """(M,) int64 row of the parent tile read by each row of the child tile (nearest upsampling).

    child_rect = (i0, i1, j0, j1): half-open absolute pixel rows and columns at level L; they may
    be negative (zoom-out views). parent_rect likewise at level L-1. Child pixel (i, j) has parent
    (floor(i / factor), floor(j / factor)). Both tiles hold the same `frames` frames, rows in
    (f, i, j) order, so M = frames * (i1 - i0) * (j1 - j0). Raises ValueError when the parent
    rectangle does not contain every parent the child needs."""
    vals = [frames, factor, *child_rect, *parent_rect]
    if len(child_rect) != 4 or len(parent_rect) != 4 or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in vals):
        raise ValueError("frames, factor and the two rects (i0, i1, j0, j1) must be ints")
    ci0, ci1, cj0, cj1 = child_rect
    pi0, pi1, pj0, pj1 = parent_rect
    if frames < 1 or factor < 1:
        raise ValueError(f"frames and factor must be >= 1, got {frames}, {factor}")
    if ci1 <= ci0 or cj1 <= cj0 or pi1 <= pi0 or pj1 <= pj0:
        raise ValueError(f"empty rect: child {tuple(child_rect)}, parent {tuple(parent_rect)}")
    need = (ci0 // factor, (ci1 - 1) // factor + 1, cj0 // factor, (cj1 - 1) // factor + 1)
    if need[0] < pi0 or need[1] > pi1 or need[2] < pj0 or need[3] > pj1:
        raise ValueError(f"parent rect {tuple(parent_rect)} does not contain the parents "
                         f"{need} of child rect {tuple(child_rect)}")
    ph, pw = pi1 - pi0, pj1 - pj0
    pi = torch.div(torch.arange(ci0, ci1), factor, rounding_mode="floor") - pi0     # (h,)
    pj = torch.div(torch.arange(cj0, cj1), factor, rounding_mode="floor") - pj0     # (w,)
    idx = (torch.arange(frames)[:, None, None] * (ph * pw) + pi[None, :, None] * pw
           + pj[None, None, :])
    return idx.reshape(-1).to(device=device)
