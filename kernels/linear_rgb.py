"""A modulated layer with the following ToRGB folded into its epilogue (render path, no grad).

    h   = fmm_linear(weight, x, ...)                                  (M, N) the layer, as stored
    img = clamp_rgb(h @ W_rgb^T + b_rgb) + img_parent[img_index]      (M, R) the ToRGB + skip

is exactly fmm_linear(weight, x, ...) followed by fmm_linear(W_rgb, h, bias=b_rgb, clamp=..,
post_add=img_parent, post_index=img_index) (`fmm_linear_torgb_reference`, the torch path). The
ToRGB re-reads the whole N-wide activation for R = 3 outputs (arithmetic intensity ~3 FLOP/byte):
at the 512-wide levels of digan-128 that is one extra pass over each of their four activations
(bench/estimate.py). Folded, a CTA owns BLOCK_M whole rows and walks the layer's column tiles in
order; column tile t, BLOCK_N wide = the per-layer ToRGB's K step (linear._triton_config of the
ToRGB's shape), is stored as the layer's output and is K chunk t of the image's GEMM, so both
outputs get the per-layer chain's reduction chunks, order and epilogue: the same bits in the
interpreter (tests/test_kernels_linear_rgb.py); on a GPU the gpu-marked test compares them.

The image goes to a new (M, R) tensor, or straight into an (F, h, w, R) view of the frame
buffer (img_out=), as fmm_linear's out=. No autograd: training keeps the per-layer chain.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Tuple

import torch

from ._common import FLOAT_DTYPES, check_index, check_tensor, resolve_backend, tensor_device
from ._linear_args import SQRT2, FmmLinearArgs, _args, _Dims, as_float, check_args
from .linear import _triton_config, check_out_view, fmm_linear, launch_fmm_linear

__all__ = ["RgbFold", "fmm_linear_torgb", "fmm_linear_torgb_reference", "fold_config", "fold_supported"]

MAX_IMG_CHANNELS = 16     # the image is padded to one 16-wide dot tile


class RgbFold(NamedTuple):
    """The folded ToRGB's operands (checked by check_rgb)."""
    W: torch.Tensor                      # (R, N) in the compute dtype
    bias: torch.Tensor                   # (R,)
    clamp: Optional[float]
    img: Optional[torch.Tensor]          # (MQ, R) the parent image (skip)
    img_index: Optional[torch.Tensor]    # (M,) int64 row of img read by row m
    uint8: bool                          # store the image as uint8 colour (else fp32)
    out: Optional[torch.Tensor]          # (M, R) destination, None: a view of frames is given


def check_rgb(rgb: RgbFold, d: _Dims, dev: torch.device) -> int:
    """Every host check of the folded ToRGB against the layer's dims; returns R."""
    check_tensor(rgb.W, "rgb_weight", ndim=2, shape=(None, d.N), dtypes=FLOAT_DTYPES, device=dev,
                 inner_contiguous=True)
    R = rgb.W.shape[0]
    if not 1 <= R <= MAX_IMG_CHANNELS:
        raise ValueError(f"rgb_weight must have 1..{MAX_IMG_CHANNELS} rows (image channels), got {R}")
    check_tensor(rgb.bias, "rgb_bias", shape=(R,), dtypes=FLOAT_DTYPES, device=dev)
    if rgb.img_index is not None and rgb.img is None:
        raise ValueError("img_index given without img")
    if rgb.img is not None:
        check_tensor(rgb.img, "img", ndim=2, shape=(None, R), dtypes=FLOAT_DTYPES, device=dev,
                     inner_contiguous=True)
        if rgb.img_index is None:
            if rgb.img.shape[0] != d.M:
                raise ValueError(f"img has {rgb.img.shape[0]} rows, expected M = {d.M} (or pass img_index)")
        else:
            check_tensor(rgb.img_index, "img_index", ndim=1)
            check_index(rgb.img_index, "img_index", d.M, rgb.img.shape[0], dev, True)
    if d.out_dtype == torch.uint8:
        raise ValueError("the layer before a folded ToRGB stores activations, not uint8")
    return R


def _rgb_dims(d: _Dims, R: int, uint8: bool) -> _Dims:
    return d._replace(N=R, out_dtype=torch.uint8 if uint8 else torch.float32)


def _fold(rgb_weight, rgb_bias, rgb_clamp, img, img_index, img_uint8, out=None) -> RgbFold:
    if not isinstance(img_uint8, bool):
        raise ValueError(f"img_uint8 must be a bool, got {img_uint8!r}")
    clamp = None if rgb_clamp is None else as_float(rgb_clamp, "rgb_clamp must be None or a finite number >= 0")
    if clamp is not None and not clamp >= 0:
        raise ValueError(f"rgb_clamp must be None or a finite number >= 0, got {rgb_clamp!r}")
    return RgbFold(rgb_weight, rgb_bias, clamp, img, img_index, img_uint8, out)


def fold_config(KX: int, E: int, N: int, R: int, precision: str) -> dict:
    """The layer's per-layer launch settings (its K steps: its bits) with column tiles = the
    ToRGB's K chunks (see the module docstring), from the shapes and precision only. The CTA also
    holds the image accumulator and walks every column tile: with the embedding's four table
    tiles, 128-row blocks spilled 24 bytes (bf16, 255 registers) on sm_80 / sm_90, and 64 rows on
    4 warps 56 B on sm_80 (bf16): with the embedding 64 rows, on 8 warps in bf16
    (python -m kernels.compile_check)."""
    cfg = dict(_triton_config(KX, E, N, precision))
    cfg["BLOCK_N"] = _triton_config(N, 0, R, precision)["BLOCK_K"]
    if E:
        cfg.update(BLOCK_M=64, num_warps=8 if precision == "bf16" else 4)
    return cfg


def fold_supported(precision: str) -> bool:
    """Whether the fold is offered for `precision`: not for 'fp32-ieee', whose FMA dot with the
    image accumulator spilled 12-32 bytes on sm_80 at every tile tried (it is the slow exact mode,
    where the ToRGB's extra pass matters least); the other precisions compile without spills."""
    return precision != "fp32-ieee"


# ---- torch reference: the two per-layer calls ---------------------------------------------------

def fmm_linear_torgb_reference(a: FmmLinearArgs, rgb: RgbFold, img_out: Optional[torch.Tensor] = None,
                               backend: str = "torch") -> Tuple[torch.Tensor, torch.Tensor]:
    """The spec: the layer, then the ToRGB on its stored output (fmm_linear twice)."""
    kw = a._asdict()
    weight, x = kw.pop("weight"), kw.pop("x")
    out_dtype = kw.pop("out_dtype")
    h = fmm_linear(weight, x, out_dtype=out_dtype, backend=backend, **kw)
    img = fmm_linear(rgb.W, h, bias=rgb.bias, clamp=rgb.clamp, post_add=rgb.img, post_index=rgb.img_index,
                     out_uint8=rgb.uint8, out_dtype=None if rgb.uint8 else torch.float32,
                     precision=a.precision, backend=backend, out=img_out)
    return h, img


# ---- triton launcher ----------------------------------------------------------------------------

def _triton(a: FmmLinearArgs, rgb: RgbFold, frames: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
    d = check_args(a)
    dev = a.weight.device
    resolve_backend("triton", dev)
    R = check_rgb(rgb, d, dev)
    h = torch.empty((d.M, d.N), dtype=d.out_dtype, device=dev)
    if frames is not None:
        TH, TW = check_out_view(frames, _rgb_dims(d, R, rgb.uint8), dev)
        img = frames
    else:
        TH, TW = d.TH, d.TW
        img = torch.empty((d.M, R), dtype=torch.uint8 if rgb.uint8 else torch.float32, device=dev)
        rgb = rgb._replace(out=img)
    if d.M == 0:
        return h, img
    cfg = fold_config(d.KX, d.E, d.N, R, a.precision)
    launch_fmm_linear(a, d, cfg, out=h, frames=frames, TH=TH, TW=TW,
                      rgb=rgb._replace(W=rgb.W.contiguous(), bias=rgb.bias.contiguous()))
    return h, img


@torch.library.custom_op("digan::fmm_linear_torgb", mutates_args=())
def _torgb_op(weight: torch.Tensor, x: Optional[torch.Tensor], x_index: Optional[torch.Tensor],
              emb_A: Optional[torch.Tensor], emb_b: Optional[torch.Tensor], xs: Optional[torch.Tensor],
              ys: Optional[torch.Tensor], pre_add: Optional[torch.Tensor], pre_index: Optional[torch.Tensor],
              bias: Optional[torch.Tensor], act: bool, gain: float, clamp: Optional[float],
              post_add: Optional[torch.Tensor], post_index: Optional[torch.Tensor], out_dtype: torch.dtype,
              precision: str, rgb_weight: torch.Tensor, rgb_bias: torch.Tensor, rgb_clamp: Optional[float],
              img: Optional[torch.Tensor], img_index: Optional[torch.Tensor],
              img_uint8: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    a = FmmLinearArgs(weight, x, x_index, emb_A, emb_b, xs, ys, pre_add, pre_index, bias, act, gain, clamp,
                      post_add, post_index, out_dtype, precision)
    return _triton(a, RgbFold(rgb_weight, rgb_bias, rgb_clamp, img, img_index, img_uint8, None), None)


@_torgb_op.register_fake
def _torgb_fake(*args):
    a, rgb = FmmLinearArgs(*args[:17]), RgbFold(*args[17:], None)
    d = check_args(a, check_values=False)
    R = rgb.W.shape[0]
    return (args[0].new_empty((d.M, d.N), dtype=d.out_dtype),
            args[0].new_empty((d.M, R), dtype=torch.uint8 if rgb.uint8 else torch.float32))


@torch.library.custom_op("digan::fmm_linear_torgb_out", mutates_args=("img_out",))
def _torgb_out_op(img_out: torch.Tensor, weight: torch.Tensor, x: Optional[torch.Tensor],
                  x_index: Optional[torch.Tensor], emb_A: Optional[torch.Tensor], emb_b: Optional[torch.Tensor],
                  xs: Optional[torch.Tensor], ys: Optional[torch.Tensor], pre_add: Optional[torch.Tensor],
                  pre_index: Optional[torch.Tensor], bias: Optional[torch.Tensor], act: bool, gain: float,
                  clamp: Optional[float], post_add: Optional[torch.Tensor], post_index: Optional[torch.Tensor],
                  out_dtype: torch.dtype, precision: str, rgb_weight: torch.Tensor, rgb_bias: torch.Tensor,
                  rgb_clamp: Optional[float], img: Optional[torch.Tensor], img_index: Optional[torch.Tensor],
                  img_uint8: bool) -> torch.Tensor:
    # digan::fmm_linear_torgb with the image stored into img_out, an (F, h, w, R) view.
    a = FmmLinearArgs(weight, x, x_index, emb_A, emb_b, xs, ys, pre_add, pre_index, bias, act, gain, clamp,
                      post_add, post_index, out_dtype, precision)
    return _triton(a, RgbFold(rgb_weight, rgb_bias, rgb_clamp, img, img_index, img_uint8, None), img_out)[0]


@_torgb_out_op.register_fake
def _torgb_out_fake(img_out, *args):
    d = check_args(FmmLinearArgs(*args[:17]), check_values=False)
    return args[0].new_empty((d.M, d.N), dtype=d.out_dtype)


# ---- dispatch -----------------------------------------------------------------------------------

def fmm_linear_torgb(weight: torch.Tensor, x: Optional[torch.Tensor] = None, *, rgb_weight: torch.Tensor,
                     rgb_bias: torch.Tensor, rgb_clamp: Optional[float] = None, img: Optional[torch.Tensor] = None,
                     img_index: Optional[torch.Tensor] = None, img_uint8: bool = False,
                     img_out: Optional[torch.Tensor] = None, x_index=None, emb_A=None, emb_b=None, xs=None,
                     ys=None, pre_add=None, pre_index=None, bias=None, act: bool = False, gain: float = SQRT2,
                     clamp=None, post_add=None, post_index=None, out_dtype=None, precision: str = "fp32",
                     backend: str = "auto") -> Tuple[torch.Tensor, torch.Tensor]:
    """The layer fmm_linear(weight, x, ...) (its keyword arguments) and the ToRGB of its output:
    -> (h (M, N) in out_dtype, image (M, R) fp32 or uint8 (img_uint8), or img_out). rgb_weight
    (R, N), rgb_bias (R,), rgb_clamp; img (Mq, R) the parent image read by img_index (M,);
    img_out an (F, h, w, R) view the image is stored into (see fmm_linear's out=)."""
    a = _args(weight, x, x_index=x_index, emb_A=emb_A, emb_b=emb_b, xs=xs, ys=ys, pre_add=pre_add,
              pre_index=pre_index, bias=bias, act=act, gain=gain, clamp=clamp, post_add=post_add,
              post_index=post_index, out_dtype=out_dtype, precision=precision)
    rgb = _fold(rgb_weight, rgb_bias, rgb_clamp, img, img_index, img_uint8)
    if resolve_backend(backend, tensor_device(weight, "weight")) != "triton":
        check_rgb(rgb, check_args(a), weight.device)
        return fmm_linear_torgb_reference(a, rgb, img_out)
    slots = (*a, rgb.W, rgb.bias, rgb.clamp, rgb.img, rgb.img_index, rgb.uint8)
    if img_out is not None:
        return torch.ops.digan.fmm_linear_torgb_out(img_out, *slots), img_out
    return tuple(torch.ops.digan.fmm_linear_torgb(*slots))

