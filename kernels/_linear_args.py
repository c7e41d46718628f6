"""The arguments of fmm_linear (kernels/linear.py) and of its backward (kernels/linear_backward.py)
as named tuples, and every host check of them.

`FmmLinearArgs` holds the 17 slots of the custom op digan::fmm_linear; `_args` builds it from the
public keyword arguments (out_dtype resolved, gain / clamp as floats) and `check_args` checks it
once per launch, returning the op's dims. Likewise `FmmLinearBwdArgs` (digan::fmm_linear_backward),
`_bwd_args` and `_check_backward`. The two checks share check_x, check_embedding,
check_weight_columns and check_clamp.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional, Tuple

import torch

from ._common import FLOAT_DTYPES, check_index, check_precision, check_tensor

SQRT2 = math.sqrt(2.0)
_OUT_DTYPES = (torch.float32, torch.bfloat16, torch.uint8)   # uint8 = the colour conversion
_INT32_MAX = 2**31 - 1
GRAD_NAMES = ("weight", "x", "emb_A", "emb_b", "pre_add", "bias", "post_add")   # fmm_linear's grads


class _Dims(NamedTuple):
    M: int          # output rows
    N: int          # output channels
    KX: int         # x channels (0: no x)
    E: int          # embedding frequencies (0: no embedding)
    F: int          # frames of the embedding tile (1 without embedding)
    TH: int         # tile rows (1 without embedding)
    TW: int         # tile columns (1 without embedding)
    out_dtype: torch.dtype


class FmmLinearArgs(NamedTuple):
    """fmm_linear's arguments in the slot order of the custom op digan::fmm_linear, out_dtype
    resolved and gain / clamp made floats (`_args`). One tuple travels through the check, both
    backends, the custom op, its fake and the autograd formula (kernels/linear_backward.py)."""
    weight: torch.Tensor                 # (N, KX + 2E) [W_x | W_sin | W_cos]
    x: Optional[torch.Tensor]            # (MX, KX)
    x_index: Optional[torch.Tensor]      # (M,) int64
    emb_A: Optional[torch.Tensor]        # (E, 2) fp32
    emb_b: Optional[torch.Tensor]        # (F, E) fp32
    xs: Optional[torch.Tensor]           # (w,) fp32
    ys: Optional[torch.Tensor]           # (h,) fp32
    pre_add: Optional[torch.Tensor]      # (MP, N)
    pre_index: Optional[torch.Tensor]    # (M,) int64
    bias: Optional[torch.Tensor]         # (N,)
    act: bool
    gain: float
    clamp: Optional[float]
    post_add: Optional[torch.Tensor]     # (MQ, N)
    post_index: Optional[torch.Tensor]   # (M,) int64
    out_dtype: torch.dtype               # fp32, bf16, or uint8 (the colour conversion)
    precision: str


# ---- checks -------------------------------------------------------------------------------------

def as_float(v, what: str) -> float:
    """`v` (an int or float, not a bool) as a float; else ValueError "<what>, got v"."""
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        raise ValueError(f"{what}, got {v!r}")
    return float(v)


def _args(weight, x=None, *, x_index=None, emb_A=None, emb_b=None, xs=None, ys=None, pre_add=None,
          pre_index=None, bias=None, act=False, gain=SQRT2, clamp=None, post_add=None,
          post_index=None, out_dtype=None, out_uint8=False, precision="fp32") -> FmmLinearArgs:
    """fmm_linear's keyword arguments as one FmmLinearArgs (the values are checked by
    check_args, once per launch)."""
    return FmmLinearArgs(
        weight, x, x_index, emb_A, emb_b, xs, ys, pre_add, pre_index, bias, act,
        as_float(gain, "gain must be a finite number"),
        None if clamp is None else as_float(clamp, "clamp must be None or a finite number >= 0"),
        post_add, post_index, _resolve_out_dtype(out_dtype, out_uint8, precision), precision)


def check_x(x, x_index, dev: torch.device) -> int:
    """x (MX, KX) float on `dev` with unit inner stride; returns KX (0 without x)."""
    if x is None:
        if x_index is not None:
            raise ValueError("x_index given without x")
        return 0
    check_tensor(x, "x", ndim=2, dtypes=FLOAT_DTYPES, device=dev, inner_contiguous=True)
    if x.shape[1] < 1:
        raise ValueError("x has no columns; pass x=None instead")
    return x.shape[1]


def check_embedding(emb_A, emb_b, xs, ys, dev: torch.device):
    """emb_A (E, 2), emb_b (F, E), xs (w,), ys (h,), all fp32 on `dev`, all or none; returns
    (E, F, h, w), (0, 1, 1, 1) without the embedding."""
    emb = {"emb_A": emb_A, "emb_b": emb_b, "xs": xs, "ys": ys}
    given = [k for k, v in emb.items() if v is not None]
    if not given:
        return 0, 1, 1, 1
    if len(given) != 4:
        raise ValueError(f"the embedding needs all of emb_A, emb_b, xs, ys; got only {given}")
    check_tensor(emb_A, "emb_A", ndim=2, shape=(None, 2), dtypes=(torch.float32,), device=dev)
    E = emb_A.shape[0]
    if E < 1:
        raise ValueError("emb_A has no rows (E = 0)")
    check_tensor(emb_b, "emb_b", ndim=2, shape=(None, E), dtypes=(torch.float32,), device=dev)
    check_tensor(xs, "xs", ndim=1, dtypes=(torch.float32,), device=dev)
    check_tensor(ys, "ys", ndim=1, dtypes=(torch.float32,), device=dev)
    return E, emb_b.shape[0], ys.shape[0], xs.shape[0]


def check_weight_columns(weight, KX: int, E: int) -> None:
    if weight.shape[1] != KX + 2 * E:
        raise ValueError(f"weight must have Kx + 2E = {KX} + 2*{E} = {KX + 2 * E} columns "
                         f"([W_x | W_sin | W_cos]), got {weight.shape[1]}")


def check_clamp(clamp) -> None:
    if clamp is not None and (not isinstance(clamp, (int, float)) or isinstance(clamp, bool)
                              or not clamp >= 0 or not math.isfinite(clamp)):
        raise ValueError(f"clamp must be None or a finite number >= 0, got {clamp!r}")


def check_args(a: FmmLinearArgs, check_values: bool = True) -> _Dims:
    """Every host check of fmm_linear (shapes, dtypes, devices, strides, index ranges on CPU).
    `a.out_dtype` is resolved: fp32, bf16, or uint8 for the colour conversion."""
    check_precision(a.precision)
    check_tensor(a.weight, "weight", ndim=2, dtypes=FLOAT_DTYPES, inner_contiguous=True)
    dev = a.weight.device
    N = a.weight.shape[0]
    if N < 1:
        raise ValueError("weight has no rows (N = 0)")
    KX = check_x(a.x, a.x_index, dev)
    E, F, TH, TW = check_embedding(a.emb_A, a.emb_b, a.xs, a.ys, dev)
    M = F * TH * TW if E else None
    if a.x is not None:
        rows = a.x.shape[0]
        if a.x_index is not None:
            check_tensor(a.x_index, "x_index", ndim=1)
            rows = a.x_index.shape[0]
            check_index(a.x_index, "x_index", rows, a.x.shape[0], dev, check_values)
        if M is not None and rows != M:
            raise ValueError(f"x gives {rows} rows but the embedding tile has F*h*w = "
                             f"{F}*{TH}*{TW} = {M} rows")
        M = rows
    check_weight_columns(a.weight, KX, E)
    pre_add, pre_index, post_add, post_index = a.pre_add, a.pre_index, a.post_add, a.post_index
    if pre_index is not None and pre_add is None:
        raise ValueError("pre_index given without pre_add")
    if post_index is not None and post_add is None:
        raise ValueError("post_index given without post_add")
    if M is None:
        if pre_add is None:
            raise ValueError("fmm_linear needs at least one of x, the embedding, pre_add")
        if pre_index is not None:
            check_tensor(pre_index, "pre_index", ndim=1)
        M = pre_add.shape[0] if pre_index is None else pre_index.shape[0]

    for name, add, idx in (("pre_add", pre_add, pre_index), ("post_add", post_add, post_index)):
        if add is None:
            continue
        check_tensor(add, name, ndim=2, shape=(None, N), dtypes=FLOAT_DTYPES, device=dev,
                     inner_contiguous=True)
        if idx is None:
            if add.shape[0] != M:
                raise ValueError(f"{name} has {add.shape[0]} rows, expected M = {M} (or pass an index)")
        else:
            check_index(idx, name.replace("add", "index"), M, add.shape[0], dev, check_values)
    if a.bias is not None:
        check_tensor(a.bias, "bias", shape=(N,), dtypes=FLOAT_DTYPES, device=dev)
    if not isinstance(a.act, bool):
        raise ValueError(f"act must be a bool, got {a.act!r}")
    if not math.isfinite(as_float(a.gain, "gain must be a finite number")):
        raise ValueError(f"gain must be a finite number, got {a.gain!r}")
    check_clamp(a.clamp)
    if a.out_dtype not in _OUT_DTYPES:
        raise ValueError(f"out_dtype must be one of {_OUT_DTYPES}, got {a.out_dtype}")
    if M > _INT32_MAX or max(N, KX + 2 * E) > _INT32_MAX:
        raise ValueError(f"M = {M}, N = {N}, K = {KX + 2 * E} must each stay below 2^31")
    return _Dims(M, N, KX, E, F, TH, TW, a.out_dtype)


def _check_fmm_linear(*args, check_values: bool = True) -> _Dims:
    """check_args on the 17 positional slots of digan::fmm_linear (kernels/level.py calls it so)."""
    return check_args(FmmLinearArgs(*args), check_values)


def _resolve_out_dtype(out_dtype, out_uint8, precision) -> torch.dtype:
    if not isinstance(out_uint8, bool):
        raise ValueError(f"out_uint8 must be a bool, got {out_uint8!r}")
    if out_uint8:
        if out_dtype not in (None, torch.uint8):
            raise ValueError(f"out_uint8=True stores uint8; got out_dtype={out_dtype}")
        return torch.uint8
    if out_dtype is None:
        return torch.bfloat16 if precision == "bf16" else torch.float32
    if out_dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"out_dtype must be torch.float32 or torch.bfloat16 (or use out_uint8), "
                         f"got {out_dtype}")
    return out_dtype


class FmmLinearBwdArgs(NamedTuple):
    """fmm_linear_backward's arguments in the slot order of digan::fmm_linear_backward (`_bwd_args`
    builds it). pre_rows / post_rows: rows of pre_add / post_add, None when absent (-1 in the
    op); needs: one bool per GRAD_NAMES entry, the gradients asked for."""
    grad_out: torch.Tensor               # (M, N) dL / d out
    weight: torch.Tensor                 # (N, KX + 2E)
    x: Optional[torch.Tensor]            # (MX, KX)
    out: Optional[torch.Tensor]          # (M, N) the forward's output before post_add (act, clamp)
    x_index: Optional[torch.Tensor]      # (M,) int64
    emb_A: Optional[torch.Tensor]        # (E, 2) fp32
    emb_b: Optional[torch.Tensor]        # (F, E) fp32
    xs: Optional[torch.Tensor]           # (w,) fp32
    ys: Optional[torch.Tensor]           # (h,) fp32
    pre_rows: Optional[int]
    pre_index: Optional[torch.Tensor]    # (M,) int64
    has_bias: bool
    act: bool
    gain: float
    clamp: Optional[float]
    post_rows: Optional[int]
    post_index: Optional[torch.Tensor]   # (M,) int64
    needs: Tuple[bool, ...]
    precision: str


# ---- arguments and checks ----------------------------------------------------------------------

def _bwd_args(grad_out, weight, x=None, *, out=None, x_index=None, emb_A=None, emb_b=None, xs=None,
              ys=None, pre_rows=None, pre_index=None, has_bias=False, act=False, gain=SQRT2,
              clamp=None, post_rows=None, post_index=None, needs=None,
              precision="fp32") -> FmmLinearBwdArgs:
    """fmm_linear_backward's keyword arguments as one FmmLinearBwdArgs (`needs` names turned into
    flags; the values are checked by _check_backward, once per launch)."""
    if needs is None:
        asked = (True,) * len(GRAD_NAMES)
    else:
        needs = set(needs)
        unknown = needs - set(GRAD_NAMES)
        if unknown:
            raise ValueError(f"unknown gradient names {sorted(unknown)}; choose from {GRAD_NAMES}")
        asked = tuple(k in needs for k in GRAD_NAMES)
    gain = as_float(gain, "gain must be a finite number > 0 (the backward reads the sign of the output)")
    clamp = None if clamp is None else as_float(clamp, "clamp must be None or a finite number >= 0")
    return FmmLinearBwdArgs(grad_out, weight, x, out, x_index, emb_A, emb_b, xs, ys, pre_rows,
                            pre_index, has_bias, act, gain, clamp, post_rows, post_index, asked,
                            precision)


def _to_op(a: FmmLinearBwdArgs) -> FmmLinearBwdArgs:
    """The op's conventions: -1 for an absent pre_add / post_add, needs as a list."""
    return a._replace(pre_rows=-1 if a.pre_rows is None else a.pre_rows,
                      post_rows=-1 if a.post_rows is None else a.post_rows, needs=list(a.needs))


def _from_op(args) -> FmmLinearBwdArgs:
    a = FmmLinearBwdArgs(*args)
    return a._replace(pre_rows=None if a.pre_rows < 0 else a.pre_rows,
                      post_rows=None if a.post_rows < 0 else a.post_rows, needs=tuple(a.needs))


def _check_backward(a: FmmLinearBwdArgs, check_values: bool = True) -> _Dims:
    """Host checks of fmm_linear_backward; returns the forward's dims (out_dtype fp32)."""
    check_precision(a.precision)
    check_tensor(a.weight, "weight", ndim=2, dtypes=FLOAT_DTYPES, inner_contiguous=True)
    dev = a.weight.device
    check_tensor(a.grad_out, "grad_out", ndim=2, shape=(None, a.weight.shape[0]), dtypes=FLOAT_DTYPES,
                 device=dev)
    M, N = a.grad_out.shape
    KX = check_x(a.x, a.x_index, dev)
    if a.x_index is not None:
        check_index(a.x_index, "x_index", M, a.x.shape[0], dev, check_values)
    elif a.x is not None and a.x.shape[0] != M:
        raise ValueError(f"x has {a.x.shape[0]} rows but grad_out has {M}")
    E, F, TH, TW = check_embedding(a.emb_A, a.emb_b, a.xs, a.ys, dev)
    if E and F * TH * TW != M:
        raise ValueError(f"grad_out has {M} rows but the embedding tile has F*h*w = "
                         f"{F}*{TH}*{TW} = {F * TH * TW}")
    check_weight_columns(a.weight, KX, E)
    for name, rows, idx in (("pre", a.pre_rows, a.pre_index), ("post", a.post_rows, a.post_index)):
        if rows is None:
            if idx is not None:
                raise ValueError(f"{name}_index given without {name}_rows")
            continue
        if not isinstance(rows, int) or isinstance(rows, bool) or rows < 0:
            raise ValueError(f"{name}_rows must be a non-negative int, got {rows!r}")
        if idx is None:
            if rows != M:
                raise ValueError(f"{name}_rows = {rows} without {name}_index must equal M = {M}")
        else:
            check_index(idx, f"{name}_index", M, rows, dev, check_values)
    if not isinstance(a.act, bool) or not isinstance(a.has_bias, bool):
        raise ValueError("act and has_bias must be bools")
    if not a.gain > 0 or not math.isfinite(a.gain):
        raise ValueError(f"gain must be a finite number > 0 (the backward reads the sign of the "
                         f"output), got {a.gain!r}")
    check_clamp(a.clamp)
    if a.act or a.clamp is not None:
        if a.out is None:
            raise ValueError("act or clamp needs `out`, the forward's output before post_add")
        check_tensor(a.out, "out", shape=(M, N), dtypes=FLOAT_DTYPES, device=dev)
    return _Dims(M, N, KX, E, F, TH, TW, torch.float32)


def _needs(a: FmmLinearBwdArgs) -> dict:
    """Which gradients to compute: the asked ones among those whose input exists."""
    have = {"weight": True, "x": a.x is not None, "emb_A": a.emb_A is not None,
            "emb_b": a.emb_A is not None, "pre_add": a.pre_rows is not None, "bias": a.has_bias,
            "post_add": a.post_rows is not None}
    return {k: have[k] and asked for k, asked in zip(GRAD_NAMES, a.needs)}
