"""Backward of the fused modulated 1x1 layer (kernels/linear.py), and the differentiable op.

The forward (one video's tile, W per video; see linear.py for the full statement):

    a   = [x[x_index] | sin(p) | cos(p)]            p[m, e] = A[e,0]*xs[j] + A[e,1]*ys[i] + b[f, e]
    z   = a @ W^T + pre_add[pre_index] + bias        (M, N)
    y   = clamp(lrelu(z) * gain)                     (act, clamp optional)
    out = y + post_add[post_index]

Its gradients, first order (dY = d out):

    dY'      = dY * (|y| < clamp) * gain * (y > 0 ? 1 : 0.2)      (sign(y) = sign(z), gain > 0)
    d bias   = sum_m dY'                   d pre_add = scatter-add of dY' by pre_index
    d post   = scatter-add of dY by post_index
    d W      = dY'^T @ a                   (the embedding regenerated, never stored)
    d x      = scatter-add of (dY' @ W_x) by x_index
    dE       = dY' @ [W_sin | W_cos];      dp = dE_sin * cos p - dE_cos * sin p
    d A[:,0] = sum_m dp * xs[j],  d A[:,1] = sum_m dp * ys[i],  d b[f] = sum over frame f's rows of dp

sin p and cos p are never evaluated directly: both backends build them from the forward's
trig-free tables (kernels/linear.py: emb_tables) by two angle additions, (X, Y) then (X+Y, B).
xs, ys and the indices get no gradient. The clamp mask is taken from the clamped output, so an
element exactly at +-clamp before clamping gets no gradient (autograd's clamp passes it); this has
probability zero for real data. Straight-through for operand rounding: with precision 'tf32' or
'bf16' the backward GEMMs round their operands the same way and the gradient of a rounded operand
is passed to the unrounded one. 'fp32' and 'fp32-ieee' are the fp32 statement: the torch backend
runs both as fp32 GEMMs; the Triton kernels run 'fp32' as 3xTF32 on the tensor cores and
'fp32-ieee' as exact-product FMA dots (kernels/_triton_common._mma).

Entry points:
    fmm_linear_backward(grad_out, weight, x, *, out=..., ...) -> FmmLinearGrads   (dispatch)
    fmm_linear_autograd(weight, x, *, ...) -> (M, N) fp32                        (differentiable)
    fmm_linear_backward_reference(...)       autograd through a plain, unfused torch statement
    scatter_rows(src, index, rows)           the deterministic scatter-add used for indices
The Triton launcher is also the custom op `digan::fmm_linear_backward`. One autograd formula,
`_fmm_linear_vjp`, serves FmmLinearFunction (either backend) and the custom op `digan::fmm_linear`
(registered on import with torch.library.register_autograd). Arguments travel as one
FmmLinearArgs / FmmLinearBwdArgs (kernels/_linear_args.py), checked once per launch.

Determinism: both backends reduce in a fixed order (torch: CPU GEMMs and index_add_; Triton:
per-block partial sums added by the host, a stable-sort CSR for the scatters, no atomics), so the
same call gives the same bits every time. The two backends differ from each other by rounding.
"""
from __future__ import annotations

from typing import Iterable, List, NamedTuple, Optional

import torch
import torch.nn.functional as F_

from ._common import (
    FP32_PRECISIONS,
    cdiv,
    gemm_precision_cast,
    load_triton_module,
    resolve_backend,
    round_up,
    tensor_device,
    triton_dot_precision,
)
from ._linear_args import (
    GRAD_NAMES,
    SQRT2,
    FmmLinearArgs,
    FmmLinearBwdArgs,
    _args,
    _bwd_args,
    _check_backward,
    _Dims,
    _from_op,
    _needs,
    _to_op,
)
from .linear import _row_chunks, emb_tables, fmm_linear_args, rows_per_chunk, trig_operand_

__all__ = ["FmmLinearGrads", "GRAD_NAMES", "fmm_linear_backward", "fmm_linear_backward_torch",
           "fmm_linear_backward_triton", "fmm_linear_backward_reference",
           "fmm_linear_reference_autograd", "fmm_linear_autograd", "FmmLinearFunction",
           "scatter_rows"]

# The slot of each differentiable input in FmmLinearArgs (and in digan::fmm_linear's schema).
_GRAD_SLOTS = tuple(FmmLinearArgs._fields.index(k) for k in GRAD_NAMES)
# Triton dW: rows per split of the reduction over M (more programs for long tiles; the partial
# sums are added in a fixed order, so a given M always gives the same bits).
_DW_SPLIT_ROWS = 4096
_DW_MAX_SPLIT = 64


class FmmLinearGrads(NamedTuple):
    """Gradients of fmm_linear's differentiable inputs (None where not asked for or absent)."""
    weight: Optional[torch.Tensor]   # (N, KX + 2E) fp32
    x: Optional[torch.Tensor]        # (MX, KX) fp32
    emb_A: Optional[torch.Tensor]    # (E, 2) fp32
    emb_b: Optional[torch.Tensor]    # (F, E) fp32
    pre_add: Optional[torch.Tensor]  # (MP, N) fp32
    bias: Optional[torch.Tensor]     # (N,) fp32
    post_add: Optional[torch.Tensor]  # (MQ, N) fp32


# ---- scatter-add by index -----------------------------------------------------------------------

def scatter_rows(src: torch.Tensor, index: Optional[torch.Tensor], rows: int,
                 backend: str = "auto") -> torch.Tensor:
    """out (rows, N) fp32 with out[p] = sum of src[m] over the m with index[m] = p (zero rows where
    none); index None means the identity (out = src in fp32). Deterministic on every backend:
    torch runs index_add_ (sequential on CPU), Triton a stable-sort CSR and one ordered sum per
    row."""
    if index is None:
        return src.float()
    if resolve_backend(backend, src.device) == "triton":
        return _scatter_rows_triton(src, index, rows)
    return _scatter_rows_torch(src, index, rows)


def _scatter_rows_torch(src, index, rows):
    dtype = torch.float64 if src.dtype == torch.float64 else torch.float32
    out = torch.zeros((rows, src.shape[1]), dtype=dtype, device=src.device)
    return out.index_add_(0, index, src.to(dtype))


def _scatter_rows_triton(src, index, rows):
    N = src.shape[1]
    out = torch.empty((rows, N), dtype=torch.float32, device=src.device)
    if rows == 0 or N == 0:
        return out
    order = torch.argsort(index, stable=True)
    start = torch.zeros(rows + 1, dtype=torch.int64, device=src.device)
    torch.cumsum(torch.bincount(index, minlength=rows), 0, out=start[1:])
    if src.stride(-1) != 1:
        src = src.contiguous()
    BLOCK_N = min(256, max(16, 1 << (N - 1).bit_length()))
    mod = load_triton_module("_linear_backward_triton")
    mod._segment_sum_kernel[(rows, cdiv(N, BLOCK_N))](
        src, order, start, out, N, src.stride(0), BLOCK_N=BLOCK_N, num_warps=4)
    return out


# ---- torch reference (autograd through the plain statement) -------------------------------------

def fmm_linear_reference_autograd(weight, x=None, *, x_index=None, emb_A=None, emb_b=None, xs=None,
                                  ys=None, pre_add=None, pre_index=None, bias=None, act=False,
                                  gain=SQRT2, clamp=None, post_add=None, post_index=None):
    """Out-of-place, unfused torch statement of the forward (fp32 operands), differentiable by
    autograd and usable in any float dtype (fp64 for gradcheck). The phase is formed directly as
    A0*x + A1*y + b (the plain statement; the kernels' trig-free embedding is nearer the exact
    phase, see kernels/linear.py); the embedding and x[x_index] are materialised."""
    parts = []
    if x is not None:
        parts.append(x if x_index is None else x[x_index])
    if emb_A is not None:
        F, E = emb_b.shape
        phase = (emb_A[:, 0] * xs[None, None, :, None] + emb_A[:, 1] * ys[None, :, None, None]
                 + emb_b[:, None, None, :]).reshape(-1, E)                        # (F*h*w, E)
        parts.append(torch.cat([phase.sin(), phase.cos()], dim=1))
    y = torch.cat(parts, dim=1) @ weight.t() if parts else 0.0
    if pre_add is not None:
        y = y + (pre_add if pre_index is None else pre_add[pre_index])
    if bias is not None:
        y = y + bias
    if act:
        y = F_.leaky_relu(y, 0.2) * gain
    if clamp is not None:
        y = y.clamp(-clamp, clamp)
    if post_add is not None:
        y = y + (post_add if post_index is None else post_add[post_index])
    return y


def fmm_linear_backward_reference(grad_out, weight, x=None, *, x_index=None, emb_A=None, emb_b=None,
                                  xs=None, ys=None, pre_add=None, pre_index=None, bias=None,
                                  act=False, gain=SQRT2, clamp=None, post_add=None,
                                  post_index=None) -> FmmLinearGrads:
    """Gradients by autograd through fmm_linear_reference_autograd (the test oracle)."""
    inputs = {"weight": weight, "x": x, "emb_A": emb_A, "emb_b": emb_b, "pre_add": pre_add,
              "bias": bias, "post_add": post_add}
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in inputs.items() if v is not None}
    with torch.enable_grad():
        y = fmm_linear_reference_autograd(
            leaves["weight"], leaves.get("x"), x_index=x_index, emb_A=leaves.get("emb_A"),
            emb_b=leaves.get("emb_b"), xs=xs, ys=ys, pre_add=leaves.get("pre_add"),
            pre_index=pre_index, bias=leaves.get("bias"), act=act, gain=gain, clamp=clamp,
            post_add=leaves.get("post_add"), post_index=post_index)
        names = list(leaves)
        grads = torch.autograd.grad(y, [leaves[k] for k in names], grad_out, allow_unused=True)
    got = dict(zip(names, grads))
    return FmmLinearGrads(*(got.get(k) for k in GRAD_NAMES))


# ---- torch backend (the CPU path) ---------------------------------------------------------------

def _dy_prime(g, out, act, gain, clamp):
    """dY' from dY and the output before post_add: the clamp mask, then lrelu's slope (read from
    the sign of the output: the fused leaky_relu_backward, one pass) times the gain."""
    if not act and clamp is None:
        return g
    t = g
    if clamp is not None:
        t = torch.where((out > -clamp) & (out < clamp), t, torch.zeros((), dtype=t.dtype))
    if act:
        t = torch.ops.aten.leaky_relu_backward(t, out, 0.2, True).mul_(gain)
    return t


def _q(t, precision):
    """The GEMM operand a backward GEMM sees (fp32 / fp32-ieee and fp64 tensors: unchanged)."""
    if precision in FP32_PRECISIONS or t.dtype == torch.float64:
        return t
    return gemm_precision_cast(t, precision)


def fmm_linear_backward_torch(grad_out, weight, x=None, **kw) -> FmmLinearGrads:
    """Torch backward (any device; the CPU product path): dense GEMMs over chunks of rows. The
    arguments of fmm_linear_backward but `backend`."""
    a = _bwd_args(grad_out, weight, x, **kw)
    return _backward_torch(a, _check_backward(a), _needs(a))


def _backward_torch(a: FmmLinearBwdArgs, d: _Dims, need: dict) -> FmmLinearGrads:
    """Unchecked torch backward. Dtype-generic: fp64 inputs are computed in fp64 (gradcheck)."""
    g, weight, x, out, x_index, emb_A, emb_b, xs, ys = a[:9]
    pre_rows, pre_index, act, gain, clamp, post_rows, post_index, precision = (
        a.pre_rows, a.pre_index, a.act, a.gain, a.clamp, a.post_rows, a.post_index, a.precision)
    dt = torch.float64 if weight.dtype == torch.float64 else torch.float32
    dev = weight.device
    M, N, KX, E = d.M, d.N, d.KX, d.E
    K = KX + 2 * E
    g = g.to(dt)
    dyp = _dy_prime(g, None if out is None else out.to(dt), act, gain, clamp)   # (M, N)
    res = dict.fromkeys(GRAD_NAMES)
    if need["bias"]:
        res["bias"] = dyp.sum(0)
    if need["pre_add"]:
        res["pre_add"] = _scatter_rows_torch(dyp, pre_index, pre_rows) if pre_index is not None else dyp
    if need["post_add"]:
        res["post_add"] = _scatter_rows_torch(g, post_index, post_rows) if post_index is not None else g
    need_w, need_x, need_e = need["weight"], need["x"], need["emb_A"] or need["emb_b"]
    if not (K and (need_w or need_x or need_e)) or M == 0:
        if need_w:
            res["weight"] = torch.zeros((N, K), dtype=dt, device=dev)
        if need_x:
            res["x"] = torch.zeros(x.shape, dtype=dt, device=dev)
        if need_e:
            res["emb_A"] = torch.zeros((E, 2), dtype=dt, device=dev)
            res["emb_b"] = torch.zeros((d.F, E), dtype=dt, device=dev)
        return FmmLinearGrads(*(res[k] for k in GRAD_NAMES))

    dyq = _q(dyp, precision)
    wq = _q(weight.to(dt), precision)                                        # (N, K)
    dx_rows = None
    if not E:
        # One GEMM each over all rows: dW = dY'^T a, dX = dY' W.
        a = x if x_index is None else x.index_select(0, x_index)
        if need_w:
            res["weight"] = dyq.t() @ _q(a.to(dt), precision)
        if need_x:
            dx_rows = dyq @ wq
    else:
        dW = torch.zeros((N, K), dtype=dt, device=dev) if need_w else None
        if need_x:
            dx_rows = torch.empty((M, KX), dtype=dt, device=dev)
        if need_e:
            dA = torch.zeros((2, E), dtype=dt, device=dev)
            db = torch.zeros((d.F, E), dtype=dt, device=dev)
        xs_, ys_ = xs.to(dt), ys.to(dt)
        # The forward's trig-free tables (kernels/linear.py): (w, 2E), (h, 2E), (F, 2E).
        tx, ty, tb = emb_tables(emb_A, xs, ys, emb_b, dtype=dt)
        sb, cb = tb[:, None, :E], tb[:, None, E:]                           # (F, 1, E)
        chunks = list(_row_chunks(d, rows_per_chunk((K + N) * (torch.finfo(dt).bits // 8))))
        buf = torch.empty((max(c[1] - c[0] for c in chunks), K), dtype=dt, device=dev)
        for c0, c1, f0, f1, i0, i1 in chunks:
            m, nf, nh = c1 - c0, f1 - f0, i1 - i0
            dy_c = dyq[c0:c1]
            # 1. Operand rows [x[x_index] | sin p | cos p] (m, K), p = (X + Y) + B by two angle
            #    additions from the tables, in the Triton kernels' op order (no sin/cos here).
            a = buf[:m]
            if KX and need_w:
                xa = x[c0:c1] if x_index is None else x.index_select(0, x_index[c0:c1])
                a[:, :KX].copy_(xa)
            hw_c = nh * d.TW
            sp, cp = torch.empty((2, hw_c, E), dtype=dt, device=dev)       # sin/cos(X + Y)
            trig_operand_(tx, ty[i0:i1], sp, cp, torch.empty((2, hw_c, E), dtype=dt, device=dev))
            s = a[:, KX:KX + E]
            c = a[:, KX + E:]
            s3, c3 = s.view(nf, hw_c, E), c.view(nf, hw_c, E)
            sbf, cbf = sb[f0:f1], cb[f0:f1]                                 # (nf, 1, E)
            t1 = torch.empty((nf, hw_c, E), dtype=dt, device=dev)
            torch.mul(sp, cbf, out=t1)
            torch.add(t1, torch.mul(cp, sbf), out=s3)                       # sin p = sP cB + cP sB
            torch.mul(cp, cbf, out=t1)
            torch.sub(t1, torch.mul(sp, sbf), out=c3)                       # cos p = cP cB - sP sB
            # 2. dW += dY'^T a: one GEMM, accumulated over the chunks.
            if need_w:
                dW.addmm_(dy_c.t(), _q(a, precision))
            # 3. [dX rows | dE] = dY' W: one GEMM; dE -> dp -> reductions over the rows.
            if need_x or need_e:
                da = dy_c @ (wq if need_x else wq[:, KX:])
                if need_x:
                    dx_rows[c0:c1] = da[:, :KX]
                if need_e:
                    de = da[:, KX:] if need_x else da                       # (m, 2E)
                    dp = torch.addcmul(de[:, :E] * c, de[:, E:], s, value=-1.0)
                    dp = dp.view(nf, nh, d.TW, E)
                    dA[0] += xs_ @ dp.sum((0, 1))                           # sum_j x_j sum_(f,i)
                    dA[1] += ys_[i0:i1] @ dp.sum((0, 2))
                    db[f0:f1] += dp.sum((1, 2))
        if need_w:
            res["weight"] = dW
        if need_e:
            res["emb_A"] = dA.t().contiguous() if need["emb_A"] else None
            res["emb_b"] = db if need["emb_b"] else None
    if need_x:
        res["x"] = _scatter_rows_torch(dx_rows, x_index, x.shape[0]) if x_index is not None else dx_rows
    return FmmLinearGrads(*(res[k] for k in GRAD_NAMES))


# ---- triton launcher ----------------------------------------------------------------------------

def _triton_bwd_config(KX: int, E: int, N: int, M: int, precision: str) -> dict:
    """Tile sizes from the layer shape and precision; the dW row split from M (the split sums are
    added in a fixed order, so a given shape always gives the same bits)."""
    bn_out = 16 if N <= 16 else 32 if N <= 32 else 64
    wide = 64 if precision == "bf16" else 32
    split = max(1, min(_DW_MAX_SPLIT, M // _DW_SPLIT_ROWS))
    rows_per_split = round_up(cdiv(max(M, 1), split), wide)
    dw = dict(BLOCK_M=wide, BLOCK_N=bn_out, BLOCK_K=32, num_warps=4)
    if precision != "fp32-ieee":
        # Tensor-core dots (bf16, tf32, and fp32 as 3xTF32). The dW dot is (BLOCK_N, BLOCK_M) @
        # (BLOCK_M, BLOCK_K): Hopper's wgmma needs its M side, BLOCK_N here, to be >= 64 (ToRGB's
        # N = 3 got mma.sync); rows past N are masked off. 3xTF32 (hi and lo operand tiles) fits
        # the tf32 tiles: dW 96-146 registers on sm_90 (wgmma), 128-158 on sm_80, dA 85-148 /
        # 96-168, no spill (python -m kernels.compile_check).
        dw["BLOCK_N"] = 64
    elif E:
        # fp32-ieee with the embedding (two FMA accumulators plus the embedding operand built in the
        # prologue): 64x32 on 4 warps got 32 registers and 4.4 KB spill stores on sm_90 and sm_80
        # (with libdevice sin/cos in the loop); 64x16 on 8 warps spills nothing on either arch,
        # before and after the trig-free embedding (make compile-check). The row step BLOCK_M,
        # and with it the reduction order, is unchanged; keyed on the shape only, never on M.
        dw.update(BLOCK_K=16, num_warps=8)
    return dict(
        dy=dict(BLOCK_M=64, BLOCK_N=min(128, max(16, 1 << (N - 1).bit_length()))),
        # dA's reduction runs over N: for ToRGB's N = 3 a 32-wide step left 12 bytes of spill
        # on sm_90 (fp32); a 16-wide one does not.
        da=dict(BLOCK_M=64, BLOCK_N=16 if N <= 16 else wide, BLOCK_K=32, num_warps=4),
        dw=dw,
        split=cdiv(max(M, 1), rows_per_split), rows_per_split=rows_per_split)


def fmm_linear_backward_triton(grad_out, weight, x=None, **kw) -> FmmLinearGrads:
    """Triton launcher (CUDA tensors, or CPU tensors under TRITON_INTERPRET=1). The arguments of
    fmm_linear_backward but `backend`."""
    return _backward_triton(_bwd_args(grad_out, weight, x, **kw))


def _backward_triton(a: FmmLinearBwdArgs) -> FmmLinearGrads:
    """Check (the Triton path's only check) and launch."""
    d, need = _check_backward(a), _needs(a)
    g, weight, x, out, x_index, emb_A, emb_b, xs, ys = a[:9]
    pre_rows, pre_index, act, gain, clamp, post_rows, post_index, precision = (
        a.pre_rows, a.pre_index, a.act, a.gain, a.clamp, a.post_rows, a.post_index, a.precision)
    resolve_backend("triton", weight.device)
    mod = load_triton_module("_linear_backward_triton")
    dev = weight.device
    M, N, KX, E = d.M, d.N, d.KX, d.E
    K = KX + 2 * E
    f32 = torch.float32
    res = dict.fromkeys(GRAD_NAMES)
    need_w, need_x, need_e = need["weight"], need["x"], need["emb_A"] or need["emb_b"]
    cfg = _triton_bwd_config(KX, E, N, M, precision)
    dot = dict(DOT_PRECISION=triton_dot_precision(precision),
               BF16_OPERANDS=precision == "bf16", INTERPRETER=mod.INTERPRETED)
    if g.stride(-1) != 1:
        g = g.contiguous()

    # 1. dY' (and the bias gradient's per-block column sums).
    if M and (act or clamp is not None or need["bias"]):
        c = cfg["dy"]
        n_mb = cdiv(M, c["BLOCK_M"])
        dyp = torch.empty((M, N), dtype=f32, device=dev)
        bias_part = torch.empty((n_mb, N), dtype=f32, device=dev) if need["bias"] else dyp
        if out is not None and out.stride(-1) != 1:
            out = out.contiguous()
        mod._fmm_bwd_dy_kernel[(n_mb, cdiv(N, c["BLOCK_N"]))](
            g, g if out is None else out, dyp, bias_part, M, N, g.stride(0),
            0 if out is None else out.stride(0), gain, 0.0 if clamp is None else clamp,
            ACT=act, HAS_CLAMP=clamp is not None, HAS_BIAS=need["bias"], num_warps=4,
            enable_fp_fusion=False, **c)
        if need["bias"]:
            res["bias"] = bias_part.sum(0)
    else:
        dyp = g.float() if g.dtype != f32 or not g.is_contiguous() else g
        if need["bias"]:
            res["bias"] = torch.zeros(N, dtype=f32, device=dev)
    if need["pre_add"]:
        res["pre_add"] = (_scatter_rows_triton(dyp, pre_index, pre_rows) if pre_index is not None
                          else (dyp.clone() if dyp is g else dyp))
    if need["post_add"]:
        res["post_add"] = (_scatter_rows_triton(g, post_index, post_rows) if post_index is not None
                           else g.to(f32, copy=True))
    dummy = dyp
    if E:
        # The forward's trig-free tables (kernels/linear.py), once per call: no sin/cos in the GEMMs.
        xs, ys = xs.contiguous(), ys.contiguous()
        tx, ty, tb = emb_tables(emb_A, xs, ys, emb_b)               # (w, 2E), (h, 2E), (F, 2E)
    else:
        tx = ty = tb = dummy

    # 2. dX rows and the embedding's partial sums: dA = dY' @ W.
    if M and (need_x or need_e):
        c = cfg["da"]
        HW = d.TH * d.TW if E else M
        MB = cdiv(HW, c["BLOCK_M"])
        n_rows_blocks = d.F * MB
        n_cols = (cdiv(KX, c["BLOCK_K"]) if need_x else 0) + (cdiv(E, c["BLOCK_K"]) if need_e else 0)
        dx_rows = torch.empty((M, KX), dtype=f32, device=dev) if need_x else dummy
        part = torch.empty((n_rows_blocks, 3, E), dtype=f32, device=dev) if need_e else dummy
        mod._fmm_bwd_da_kernel[(n_rows_blocks, n_cols)](
            dyp, weight, tx, ty, tb, xs if E else dummy, ys if E else dummy,
            dx_rows, part, M, N, KX, E, HW, d.TW, MB, weight.stride(0),
            NEED_X=need_x, NEED_EMB=need_e, num_stages=3, enable_fp_fusion=False,
            **dot, **c)
        if need_x:
            res["x"] = (_scatter_rows_triton(dx_rows, x_index, x.shape[0]) if x_index is not None
                        else dx_rows)
        if need_e:
            part = part.view(d.F, MB, 3, E).sum(1)                          # (F, 3, E), fixed order
            if need["emb_A"]:
                res["emb_A"] = part[:, :2].sum(0).t().contiguous()           # (E, 2)
            if need["emb_b"]:
                res["emb_b"] = part[:, 2].contiguous()
    elif need_x or need_e:
        if need_x:
            res["x"] = torch.zeros(x.shape, dtype=f32, device=dev)
        if need["emb_A"]:
            res["emb_A"] = torch.zeros((E, 2), dtype=f32, device=dev)
        if need["emb_b"]:
            res["emb_b"] = torch.zeros((d.F, E), dtype=f32, device=dev)

    # 3. dW = dY'^T @ [x[x_index] | sin | cos], rows split into ranges summed in order.
    if need_w:
        if M == 0 or K == 0:
            res["weight"] = torch.zeros((N, K), dtype=f32, device=dev)
        else:
            c = cfg["dw"]
            S = cfg["split"]
            n_cols = (cdiv(KX, c["BLOCK_K"]) if KX else 0) + (cdiv(E, c["BLOCK_K"]) if E else 0)
            dw = torch.empty((S, N, K), dtype=f32, device=dev)
            HW = d.TH * d.TW
            mod._fmm_bwd_dw_kernel[(cdiv(N, c["BLOCK_N"]), n_cols, S)](
                dyp, x if KX else dummy, x_index if x_index is not None else dummy,
                tx, ty, tb, dw, M, N, KX, E, HW, d.TW, cfg["rows_per_split"],
                x.stride(0) if KX else 0,
                NEED_X=KX > 0, HAS_X_INDEX=x_index is not None, NEED_EMB=E > 0,
                num_stages=3, enable_fp_fusion=False, **dot, **c)
            res["weight"] = dw[0] if S == 1 else dw.sum(0)
    return FmmLinearGrads(*(res[k] for k in GRAD_NAMES))


_EMPTY = (0,)


@torch.library.custom_op("digan::fmm_linear_backward", mutates_args=())
def _fmm_linear_backward_op(grad_out: torch.Tensor, weight: torch.Tensor, x: Optional[torch.Tensor],
                            out: Optional[torch.Tensor], x_index: Optional[torch.Tensor],
                            emb_A: Optional[torch.Tensor], emb_b: Optional[torch.Tensor],
                            xs: Optional[torch.Tensor], ys: Optional[torch.Tensor], pre_rows: int,
                            pre_index: Optional[torch.Tensor], has_bias: bool, act: bool,
                            gain: float, clamp: Optional[float], post_rows: int,
                            post_index: Optional[torch.Tensor], needs: List[bool],
                            precision: str) -> List[torch.Tensor]:
    """The Triton backward as a custom op: 7 gradients in GRAD_NAMES order, an empty (0,) tensor
    for each one not computed. pre_rows / post_rows = -1: no pre_add / post_add."""
    grads = _backward_triton(_from_op((grad_out, weight, x, out, x_index, emb_A, emb_b, xs, ys,
                                       pre_rows, pre_index, has_bias, act, gain, clamp, post_rows,
                                       post_index, needs, precision)))
    return [grad_out.new_empty(_EMPTY, dtype=torch.float32) if t is None else t for t in grads]


@_fmm_linear_backward_op.register_fake
def _fmm_linear_backward_fake(*args):
    a = _from_op(args)
    d, need = _check_backward(a, check_values=False), _needs(a)
    shapes = {"weight": (d.N, d.KX + 2 * d.E), "x": None if a.x is None else tuple(a.x.shape),
              "emb_A": (d.E, 2), "emb_b": (d.F, d.E), "pre_add": (a.pre_rows, d.N), "bias": (d.N,),
              "post_add": (a.post_rows, d.N)}
    return [a.grad_out.new_empty(shapes[k] if need[k] else _EMPTY, dtype=torch.float32)
            for k in GRAD_NAMES]


# ---- dispatch -----------------------------------------------------------------------------------

def fmm_linear_backward(grad_out: torch.Tensor, weight: torch.Tensor,
                        x: Optional[torch.Tensor] = None, *, out: Optional[torch.Tensor] = None,
                        x_index: Optional[torch.Tensor] = None,
                        emb_A: Optional[torch.Tensor] = None, emb_b: Optional[torch.Tensor] = None,
                        xs: Optional[torch.Tensor] = None, ys: Optional[torch.Tensor] = None,
                        pre_rows: Optional[int] = None, pre_index: Optional[torch.Tensor] = None,
                        has_bias: bool = False, act: bool = False, gain: float = SQRT2,
                        clamp: Optional[float] = None, post_rows: Optional[int] = None,
                        post_index: Optional[torch.Tensor] = None,
                        needs: Optional[Iterable[str]] = None, precision: str = "fp32",
                        backend: str = "auto") -> FmmLinearGrads:
    """Gradients of fmm_linear (see the module docstring) from grad_out = dL/d out (M, N).

    The forward's tensors are passed again (weight, x, the embedding, the indices); pre_add,
    bias and post_add only by their presence: pre_rows / post_rows (rows of pre_add / post_add,
    None when absent) and has_bias. `out` is the forward's output BEFORE post_add, needed with act
    or clamp. needs: names from GRAD_NAMES to compute (default: all that exist). All gradients
    are fp32 (fp64 inputs stay fp64 on the torch backend)."""
    return fmm_linear_backward_args(_bwd_args(
        grad_out, weight, x, out=out, x_index=x_index, emb_A=emb_A, emb_b=emb_b, xs=xs, ys=ys,
        pre_rows=pre_rows, pre_index=pre_index, has_bias=has_bias, act=act, gain=gain, clamp=clamp,
        post_rows=post_rows, post_index=post_index, needs=needs, precision=precision), backend)


def fmm_linear_backward_args(a: FmmLinearBwdArgs, backend: str = "auto") -> FmmLinearGrads:
    """fmm_linear_backward on an FmmLinearBwdArgs: checked once, by the custom op (Triton) or here."""
    need = _needs(a)
    if resolve_backend(backend, tensor_device(a.weight, "weight")) == "triton":
        grads = torch.ops.digan.fmm_linear_backward(*_to_op(a))
        return FmmLinearGrads(*(t if need[k] else None for k, t in zip(GRAD_NAMES, grads)))
    return _backward_torch(a, _check_backward(a), need)


# ---- the differentiable op: one autograd formula for FmmLinearFunction and digan::fmm_linear --------

def _gather(t, index):
    return t if index is None else t.index_select(0, index)


def _save_for_backward(ctx, a: FmmLinearArgs, y: Optional[torch.Tensor], recompute: bool,
                       backend: str) -> None:
    """What _fmm_linear_vjp needs. y: the output before post_add when act / clamp mask the
    gradient (None otherwise, or with `recompute`, when the backward computes it again)."""
    ctx.save_for_backward(a.weight, a.x, a.x_index, a.emb_A, a.emb_b, a.xs, a.ys,
                          a.pre_add if recompute else None, a.pre_index,
                          a.bias if recompute else None, a.post_index, y)
    ctx.cfg = dict(pre_rows=None if a.pre_add is None else a.pre_add.shape[0],
                   has_bias=a.bias is not None, act=a.act, gain=a.gain, clamp=a.clamp,
                   post_rows=None if a.post_add is None else a.post_add.shape[0],
                   precision=a.precision)
    ctx.recompute, ctx.out_dtype, ctx.backend = recompute, a.out_dtype, backend
    ctx.dtypes = [None if a[s] is None else a[s].dtype for s in _GRAD_SLOTS]


def _fmm_linear_vjp(ctx, grad):
    """Gradients of the FmmLinearArgs slots (then None for any further input) by
    fmm_linear_backward on the forward's backend."""
    if ctx.out_dtype == torch.uint8:
        raise RuntimeError("digan::fmm_linear with a uint8 output is not differentiable")
    (weight, x, x_index, emb_A, emb_b, xs, ys, pre_add, pre_index, bias, post_index,
     y) = ctx.saved_tensors
    c = ctx.cfg
    ni = ctx.needs_input_grad
    flags = tuple(bool(ni[s]) and dt is not None for s, dt in zip(_GRAD_SLOTS, ctx.dtypes))
    res = [None] * len(ni)
    if not any(flags):
        return tuple(res)
    if ctx.recompute:
        y = fmm_linear_args(FmmLinearArgs(weight, x, x_index, emb_A, emb_b, xs, ys, pre_add, pre_index,
                                          bias, c["act"], c["gain"], c["clamp"], None, None,
                                          torch.float32, c["precision"]), ctx.backend)
    grads = fmm_linear_backward_args(FmmLinearBwdArgs(
        grad.contiguous(), weight, x, y, x_index, emb_A, emb_b, xs, ys, c["pre_rows"], pre_index,
        c["has_bias"], c["act"], c["gain"], c["clamp"], c["post_rows"], post_index, flags,
        c["precision"]), ctx.backend)
    for s, f, t, dt in zip(_GRAD_SLOTS, flags, grads, ctx.dtypes):
        if f:
            res[s] = t.to(dt)
    return tuple(res)


class FmmLinearFunction(torch.autograd.Function):
    """fmm_linear (fp32 output) with fmm_linear_backward as its backward, on either backend.
    Inputs: the FmmLinearArgs slots, then the backend. Use through fmm_linear_autograd."""

    @staticmethod
    def forward(ctx, *inputs):
        a, backend = FmmLinearArgs(*inputs[:-1]), inputs[-1]
        masked = a.act or a.clamp is not None
        if a.post_add is not None and masked:
            # The backward reads the sign / clamp of the output before post_add: keep it. Adding
            # post_add afterwards is the fused epilogue's last operation, so the bits are equal.
            y = fmm_linear_args(a._replace(post_add=None, post_index=None), backend)
            out = y + _gather(a.post_add, a.post_index).float()
        else:
            out = fmm_linear_args(a, backend)
            y = out if masked else None
        _save_for_backward(ctx, a, y, False, backend)
        return out

    backward = staticmethod(_fmm_linear_vjp)


def fmm_linear_autograd(weight: torch.Tensor, x: Optional[torch.Tensor] = None, *,
                        x_index: Optional[torch.Tensor] = None,
                        emb_A: Optional[torch.Tensor] = None, emb_b: Optional[torch.Tensor] = None,
                        xs: Optional[torch.Tensor] = None, ys: Optional[torch.Tensor] = None,
                        pre_add: Optional[torch.Tensor] = None,
                        pre_index: Optional[torch.Tensor] = None,
                        bias: Optional[torch.Tensor] = None, act: bool = False,
                        gain: float = SQRT2, clamp: Optional[float] = None,
                        post_add: Optional[torch.Tensor] = None,
                        post_index: Optional[torch.Tensor] = None, precision: str = "fp32",
                        backend: str = "auto") -> torch.Tensor:
    """fmm_linear (same arguments, fp32 output) differentiable w.r.t. weight, x, emb_A, emb_b,
    pre_add, bias and post_add, with the fused backward of this module on the same backend."""
    a = _args(weight, x, x_index=x_index, emb_A=emb_A, emb_b=emb_b, xs=xs, ys=ys, pre_add=pre_add,
              pre_index=pre_index, bias=bias, act=act, gain=gain, clamp=clamp, post_add=post_add,
              post_index=post_index, out_dtype=torch.float32, precision=precision)
    return FmmLinearFunction.apply(*a, backend)


def _op_setup_context(ctx, inputs, output):
    # digan::fmm_linear's output includes post_add: with act / clamp the backward recomputes the
    # output before it.
    a = FmmLinearArgs(*inputs)
    masked = a.act or a.clamp is not None
    recompute = a.post_add is not None and masked
    _save_for_backward(ctx, a, output if masked and not recompute else None, recompute, "triton")


torch.library.register_autograd("digan::fmm_linear", _fmm_linear_vjp, setup_context=_op_setup_context)
