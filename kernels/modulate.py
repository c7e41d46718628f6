"""Per-video weight preparation: FMM modulation (+ row demodulation) and ToRGB modulation.

    fmm_modulate(weight (Cout, Cin), styles (B, (Cin + Cout) * r), rank) -> W' (B, Cout, Cin)
        L = styles[:, :Cout*r] viewed (B, Cout, r); R = styles[:, Cout*r:] viewed (B, r, Cin)
        W' = weight * (L @ R / sqrt(r) + 1);  demodulate: W' /= ||W'||_2 over Cin + 1e-8
    torgb_modulate(weight (3, C), styles (B, C)) -> (B, 3, C) = weight * styles[:, None, :]

Runs once per video (a few MFLOP), so the torch path is simply the reference formula; the Triton
kernel (kernels/_modulate_triton.py) keeps W' on the GPU without the (B, Cout, Cin) temporaries
of M = L @ R. All arithmetic is fp32; the result is cast once, on store, to `out_dtype`.
"""
from __future__ import annotations

import math

import torch

from ._common import FLOAT_DTYPES, cdiv, check_backend, check_tensor, load_triton_module, resolve_backend, tensor_device

__all__ = ["fmm_modulate", "fmm_modulate_reference", "fmm_modulate_triton",
           "torgb_modulate", "torgb_modulate_reference"]

_OUT_DTYPES = (torch.float32, torch.bfloat16)


# ---- checks -------------------------------------------------------------------------------------

def _check_fmm_modulate(weight, styles, rank, demodulate, out_dtype):
    """All host checks of fmm_modulate; returns (B, Cout, Cin)."""
    check_tensor(weight, "weight", ndim=2, dtypes=(torch.float32,), inner_contiguous=True)
    Cout, Cin = weight.shape
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise ValueError(f"rank must be a positive int, got {rank!r}")
    check_tensor(styles, "styles", ndim=2, shape=(None, (Cin + Cout) * rank), dtypes=(torch.float32,),
                 device=weight.device, inner_contiguous=True)
    if not isinstance(demodulate, bool):
        raise ValueError(f"demodulate must be a bool, got {demodulate!r}")
    if out_dtype not in _OUT_DTYPES:
        raise ValueError(f"out_dtype must be one of {_OUT_DTYPES}, got {out_dtype}")
    if Cout < 1 or Cin < 1:
        raise ValueError(f"weight must be non-empty, got shape {tuple(weight.shape)}")
    return styles.shape[0], Cout, Cin


# ---- torch reference (also the torch backend) ---------------------------------------------------

def fmm_modulate_reference(weight: torch.Tensor, styles: torch.Tensor, rank: int,
                           demodulate: bool = True, out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """weight (Cout, Cin), styles (B, (Cin+Cout)*r) -> W' (B, Cout, Cin), the model's formula."""
    B, Cout, Cin = _check_fmm_modulate(weight, styles, rank, demodulate, out_dtype)
    left = styles[:, :Cout * rank].reshape(B, Cout, rank)
    right = styles[:, Cout * rank:].reshape(B, rank, Cin)
    w = weight.unsqueeze(0) * (left @ right / math.sqrt(rank) + 1.0)             # (B, Cout, Cin)
    if demodulate:
        w = w / (w.norm(dim=2, keepdim=True) + 1e-8)
    return w.to(out_dtype)


# ---- triton launcher ----------------------------------------------------------------------------

def fmm_modulate_triton(weight: torch.Tensor, styles: torch.Tensor, rank: int, demodulate: bool = True,
                        out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Triton launcher (CUDA tensors, or CPU tensors under TRITON_INTERPRET=1)."""
    B, Cout, Cin = _check_fmm_modulate(weight, styles, rank, demodulate, out_dtype)
    resolve_backend("triton", weight.device)
    out = torch.empty((B, Cout, Cin), dtype=out_dtype, device=weight.device)
    if B == 0:
        return out
    mod = load_triton_module("_modulate_triton")
    BLOCK_O, BLOCK_I = 32, 64
    grid = (B, cdiv(Cout, BLOCK_O))
    mod._fmm_modulate_kernel[grid](
        weight, styles, out,
        Cout, Cin, weight.stride(0), styles.stride(0), math.sqrt(rank),
        RANK=rank, RANK_PAD=max(16, 1 << (rank - 1).bit_length()), DEMODULATE=demodulate,
        ROUND_BF16_STORE=mod.INTERPRETED and out_dtype == torch.bfloat16,
        BLOCK_O=BLOCK_O, BLOCK_I=BLOCK_I, num_warps=4, enable_fp_fusion=False,
    )
    return out


@torch.library.custom_op("digan::fmm_modulate", mutates_args=())
def _fmm_modulate_op(weight: torch.Tensor, styles: torch.Tensor, rank: int, demodulate: bool,
                     out_dtype: torch.dtype) -> torch.Tensor:
    return fmm_modulate_triton(weight, styles, rank, demodulate, out_dtype)


@_fmm_modulate_op.register_fake
def _fmm_modulate_fake(weight, styles, rank, demodulate, out_dtype):
    B, Cout, Cin = _check_fmm_modulate(weight, styles, rank, demodulate, out_dtype)
    return weight.new_empty((B, Cout, Cin), dtype=out_dtype)


# ---- dispatch -----------------------------------------------------------------------------------

def fmm_modulate(weight: torch.Tensor, styles: torch.Tensor, rank: int, demodulate: bool = True,
                 out_dtype: torch.dtype = torch.float32, backend: str = "auto") -> torch.Tensor:
    """FMM-modulated, optionally demodulated weight W' (B, Cout, Cin), computed in fp32.

    backend: 'auto' (Triton for CUDA tensors when available, else torch), 'triton', 'torch'.
    The two backends agree to fp32 rounding (different summation orders for L @ R and the norm).
    Each path checks the arguments once (the custom op's launcher, or the reference)."""
    if resolve_backend(backend, tensor_device(weight, "weight")) == "triton":
        return torch.ops.digan.fmm_modulate(weight, styles, rank, demodulate, out_dtype)
    return fmm_modulate_reference(weight, styles, rank, demodulate, out_dtype)


# ---- ToRGB ------------------------------------------------------------------------------------

def torgb_modulate_reference(weight: torch.Tensor, styles: torch.Tensor,
                             out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """weight (3, C), styles (B, C) (already times 1/sqrt(C)) -> (B, 3, C) = weight * styles."""
    check_tensor(weight, "weight", ndim=2, dtypes=(torch.float32,))
    check_tensor(styles, "styles", ndim=2, shape=(None, weight.shape[1]), dtypes=FLOAT_DTYPES,
                 device=weight.device)
    if out_dtype not in _OUT_DTYPES:
        raise ValueError(f"out_dtype must be one of {_OUT_DTYPES}, got {out_dtype}")
    return (weight.unsqueeze(0) * styles.float().unsqueeze(1)).to(out_dtype)


def torgb_modulate(weight: torch.Tensor, styles: torch.Tensor, out_dtype: torch.dtype = torch.float32,
                   backend: str = "auto") -> torch.Tensor:
    """ToRGB modulated weight (B, 3, C). One elementwise product per video: every backend runs the
    torch formula (a kernel launch would cost more than the op)."""
    check_backend(backend)
    return torgb_modulate_reference(weight, styles, out_dtype)
