"""Backward of FMM weight modulation (kernels/modulate.py), and the differentiable op.

Forward, per video b (L = styles[b, :Cout*r] viewed (Cout, r), R = styles[b, Cout*r:] viewed
(r, Cin)):

    F = 1 + L R / sqrt(r);   U = W * F;   W' = U / (|U|_row + 1e-8)    (demodulate; else W' = U)

Backward from G = dL/dW' (B, Cout, Cin), per row o of video b (n = |U_o|, d = n + 1e-8):

    dU_o   = G_o / d - U_o (G_o . U_o) / (d^2 n)          (dU = G without demodulation)
    dW     = sum_b dU * F                                  (the base weight is shared)
    dM     = dU * W / sqrt(r);   dL = dM R^T;   dR = L^T dM;   d styles[b] = [dL, dR] flattened

A row with U_o = 0 (n = 0) gets dU_o = G_o / d (autograd would produce NaN there).

Entry points: fmm_modulate_backward(grad, weight, styles, rank, demodulate, backend) -> (d weight,
d styles); fmm_modulate_autograd(weight, styles, rank, demodulate, backend) -> W' (B, Cout, Cin)
fp32, differentiable. The Triton launcher is also the custom op `digan::fmm_modulate_backward`,
registered (on import) as the autograd formula of `digan::fmm_modulate`. Both backends are
deterministic: per-video and per-row-block partials are added by the host in a fixed order.
"""
from __future__ import annotations

import math
from typing import Tuple

import torch

from ._common import FLOAT_DTYPES, cdiv, check_tensor, load_triton_module, resolve_backend, tensor_device
from .modulate import _check_fmm_modulate, fmm_modulate, fmm_modulate_reference

__all__ = ["fmm_modulate_backward", "fmm_modulate_backward_torch", "fmm_modulate_backward_triton",
           "fmm_modulate_backward_reference", "fmm_modulate_autograd", "FmmModulateFunction"]


def _check_backward(grad, weight, styles, rank, demodulate):
    B, Cout, Cin = _check_fmm_modulate(weight, styles, rank, demodulate, torch.float32)
    check_tensor(grad, "grad", shape=(B, Cout, Cin), dtypes=FLOAT_DTYPES, device=weight.device)
    return B, Cout, Cin


# ---- reference: autograd through the forward formula --------------------------------------------

def fmm_modulate_backward_reference(grad, weight, styles, rank, demodulate=True):
    """(d weight, d styles) by autograd through fmm_modulate_reference (the test oracle)."""
    w = weight.detach().clone().requires_grad_(True)
    s = styles.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        out = fmm_modulate_reference(w, s, rank, demodulate)
        return torch.autograd.grad(out, (w, s), grad.float())


# ---- torch backend ------------------------------------------------------------------------------

def fmm_modulate_backward_torch(grad, weight, styles, rank, demodulate=True):
    """The closed-form backward in torch (batched GEMMs; any device)."""
    _check_backward(grad, weight, styles, rank, demodulate)
    return _backward_torch(grad, weight, styles, rank, demodulate)


def _backward_torch(grad, weight, styles, rank, demodulate) -> Tuple[torch.Tensor, torch.Tensor]:
    """Unchecked; dtype-generic (fp64 inputs are computed in fp64, for gradcheck)."""
    dt = torch.float64 if weight.dtype == torch.float64 else torch.float32
    Cout, Cin = weight.shape
    B = styles.shape[0]
    w, g = weight.to(dt), grad.to(dt)
    left = styles[:, :Cout * rank].reshape(B, Cout, rank).to(dt)
    right = styles[:, Cout * rank:].reshape(B, rank, Cin).to(dt)
    f1 = left @ right / math.sqrt(rank) + 1.0                                 # (B, Cout, Cin)
    if demodulate:
        u = w * f1
        n = u.norm(dim=2, keepdim=True)
        d = n + 1e-8
        coef = torch.where(n > 0, (g * u).sum(2, keepdim=True) / (d * d * n.clamp_min(1e-300)),
                           torch.zeros((), dtype=dt))
        du = g / d - u * coef
    else:
        du = g
    d_weight = (du * f1).sum(0)
    dm = du * w / math.sqrt(rank)
    d_left = dm @ right.transpose(1, 2)                                       # (B, Cout, r)
    d_right = left.transpose(1, 2) @ dm                                       # (B, r, Cin)
    return d_weight, torch.cat([d_left.reshape(B, -1), d_right.reshape(B, -1)], dim=1)


# ---- triton launcher ----------------------------------------------------------------------------

def fmm_modulate_backward_triton(grad, weight, styles, rank, demodulate=True):
    """Triton launcher (CUDA tensors, or CPU tensors under TRITON_INTERPRET=1)."""
    B, Cout, Cin = _check_backward(grad, weight, styles, rank, demodulate)
    resolve_backend("triton", weight.device)
    dev = weight.device
    S = (Cin + Cout) * rank
    d_styles = torch.empty((B, S), dtype=torch.float32, device=dev)
    if B == 0:
        return torch.zeros_like(weight), d_styles
    grad = grad.contiguous()
    BLOCK_O, BLOCK_I = 32, 64
    NOB = cdiv(Cout, BLOCK_O)
    dw_part = torch.empty((B, Cout, Cin), dtype=torch.float32, device=dev)
    dr_part = torch.empty((B, NOB, rank, Cin), dtype=torch.float32, device=dev)
    mod = load_triton_module("_modulate_backward_triton")
    mod._fmm_modulate_bwd_kernel[(B, NOB)](
        grad, weight, styles, dw_part, d_styles, dr_part,
        Cout, Cin, NOB, weight.stride(0), styles.stride(0), math.sqrt(rank),
        RANK=rank, RANK_PAD=max(16, 1 << (rank - 1).bit_length()), DEMODULATE=demodulate,
        BLOCK_O=BLOCK_O, BLOCK_I=BLOCK_I, num_warps=4, enable_fp_fusion=False)
    d_styles[:, Cout * rank:] = dr_part.sum(1).reshape(B, -1)               # fixed order
    return dw_part.sum(0), d_styles


@torch.library.custom_op("digan::fmm_modulate_backward", mutates_args=())
def _fmm_modulate_backward_op(grad: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor,
                              rank: int, demodulate: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    return fmm_modulate_backward_triton(grad, weight, styles, rank, demodulate)


@_fmm_modulate_backward_op.register_fake
def _fmm_modulate_backward_fake(grad, weight, styles, rank, demodulate):
    _check_backward(grad, weight, styles, rank, demodulate)
    return (weight.new_empty(weight.shape, dtype=torch.float32),
            styles.new_empty(styles.shape, dtype=torch.float32))


# ---- dispatch -----------------------------------------------------------------------------------

def fmm_modulate_backward(grad: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, rank: int,
                          demodulate: bool = True, backend: str = "auto"):
    """(dL/d weight (Cout, Cin), dL/d styles (B, (Cin+Cout)*r)), fp32, from grad = dL/dW'. Checked
    once: by the custom op's launcher (Triton) or here (torch)."""
    if resolve_backend(backend, tensor_device(weight, "weight")) == "triton":
        return torch.ops.digan.fmm_modulate_backward(grad, weight, styles, rank, demodulate)
    _check_backward(grad, weight, styles, rank, demodulate)
    return _backward_torch(grad, weight, styles, rank, demodulate)


# ---- the differentiable op: one autograd formula for FmmModulateFunction and digan::fmm_modulate --

def _save_for_backward(ctx, weight, styles, rank, demodulate, backend):
    ctx.save_for_backward(weight, styles)
    ctx.cfg = (rank, demodulate, backend)


def _fmm_modulate_vjp(ctx, grad):
    """(d weight, d styles, then None for the other inputs) by fmm_modulate_backward on the
    forward's backend."""
    weight, styles = ctx.saved_tensors
    rank, demodulate, backend = ctx.cfg
    ni = ctx.needs_input_grad
    res = [None] * len(ni)
    if ni[0] or ni[1]:
        d_weight, d_styles = fmm_modulate_backward(grad, weight, styles, rank, demodulate, backend)
        res[0], res[1] = (d_weight if ni[0] else None), (d_styles if ni[1] else None)
    return tuple(res)


class FmmModulateFunction(torch.autograd.Function):
    """fmm_modulate (fp32 output) with fmm_modulate_backward; use through fmm_modulate_autograd."""

    @staticmethod
    def forward(ctx, weight, styles, rank, demodulate, backend):
        _save_for_backward(ctx, weight, styles, rank, demodulate, backend)
        return fmm_modulate(weight, styles, rank, demodulate, torch.float32, backend)

    backward = staticmethod(_fmm_modulate_vjp)


def fmm_modulate_autograd(weight: torch.Tensor, styles: torch.Tensor, rank: int,
                          demodulate: bool = True, backend: str = "auto") -> torch.Tensor:
    """W' (B, Cout, Cin) fp32 (as fmm_modulate), differentiable w.r.t. weight and styles."""
    return FmmModulateFunction.apply(weight, styles, rank, demodulate, backend)


def _op_setup_context(ctx, inputs, output):
    weight, styles, rank, demodulate, out_dtype = inputs
    _save_for_backward(ctx, weight, styles, rank, demodulate, "triton")


torch.library.register_autograd("digan::fmm_modulate", _fmm_modulate_vjp, setup_context=_op_setup_context)
