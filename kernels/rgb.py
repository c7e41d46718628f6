"""Colour epilogue: float image -> uint8, and uint8 RGB -> planar I420 (BT.709, limited range).

    to_uint8(img (..., ) float) -> uint8, rint((x + 1) * 127.5) clamped to [0, 255]
        (round half to even, like torch.round; NaN maps to an unspecified value)
    rgb_to_yuv420(frames (F, H, W, 3) uint8) -> (F, H * 3 // 2, W) uint8, H and W even:
        per frame the Y plane (H, W), then U (H/2, W/2), then V (H/2, W/2), contiguous (I420),
        so 1.5 bytes per pixel cross PCIe instead of 3. With Kr = 0.2126, Kb = 0.0722,
        Kg = 1 - Kr - Kb and Y' = Kr R + Kg G + Kb B (R, G, B in [0, 255]):
        Y = 16 + 219/255 Y';  U = 128 + 224/255 (B - Y') / (2 (1 - Kb));
        V = 128 + 224/255 (R - Y') / (2 (1 - Kr)); chroma from the 2x2 average of R, G, B.
        Each is rint(.) clamped to [0, 255], evaluated in fp32 as ((c_r R + c_g G) + c_b B) + offset
        with fp32 coefficients: the torch and Triton paths give identical bytes.
"""
from __future__ import annotations

import torch

from ._common import FLOAT_DTYPES, cdiv, check_tensor, load_triton_module, resolve_backend, tensor_device

__all__ = ["to_uint8", "to_uint8_reference", "to_uint8_triton",
           "rgb_to_yuv420", "rgb_to_yuv420_reference", "rgb_to_yuv420_triton", "YUV_COEFFS"]

KR, KB = 0.2126, 0.0722
KG = 1.0 - KR - KB


def _f32(v: float) -> float:
    """`v` rounded to the nearest fp32 (so both backends multiply by the same constant)."""
    return torch.tensor(v, dtype=torch.float64).float().item()


# (c_r, c_g, c_b) of Y, U, V; computed in float64, then rounded once to fp32.
YUV_COEFFS = {
    "Y": tuple(_f32(219.0 / 255.0 * k) for k in (KR, KG, KB)),
    "U": tuple(_f32(224.0 / 255.0 * k / (2.0 * (1.0 - KB))) for k in (-KR, -KG, 1.0 - KB)),
    "V": tuple(_f32(224.0 / 255.0 * k / (2.0 * (1.0 - KR))) for k in (1.0 - KR, -KG, -KB)),
}
_OFFSETS = {"Y": 16.0, "U": 128.0, "V": 128.0}


def _register_op(name: str, launcher, fake):
    """The Triton launcher `launcher` (one tensor in, one out; it checks its input) as the custom op
    digan::<name>, with `fake` (shapes only) for torch.compile."""
    op = torch.library.custom_op(f"digan::{name}", launcher, mutates_args=())
    op.register_fake(fake)
    return op


def _dispatch(op_name: str, reference, t, name: str, backend: str) -> torch.Tensor:
    """torch.ops.digan.<op_name>(t) on the Triton backend, else reference(t): each checks `t` (once)."""
    if resolve_backend(backend, tensor_device(t, name)) == "triton":
        return getattr(torch.ops.digan, op_name)(t.contiguous())
    return reference(t)


# ---- to_uint8 -----------------------------------------------------------------------------------

def _check_to_uint8(img):
    check_tensor(img, "img", dtypes=FLOAT_DTYPES)
    if img.dim() == 0:
        raise ValueError("img must have at least one dimension")


def to_uint8_reference(img: torch.Tensor) -> torch.Tensor:
    """img (...) fp32/bf16 in [-1, 1] -> uint8 of the same shape."""
    _check_to_uint8(img)
    return ((img.float() + 1.0) * 127.5).clamp_(0.0, 255.0).round_().to(torch.uint8)


def to_uint8_triton(img: torch.Tensor) -> torch.Tensor:
    """Triton launcher (CUDA tensors, or CPU tensors under TRITON_INTERPRET=1)."""
    _check_to_uint8(img)
    resolve_backend("triton", img.device)
    if not img.is_contiguous():
        raise ValueError("img must be contiguous for the Triton backend")
    out = torch.empty(img.shape, dtype=torch.uint8, device=img.device)
    n = img.numel()
    if n == 0:
        return out
    mod = load_triton_module("_rgb_triton")
    BLOCK = 1024
    mod._to_uint8_kernel[(cdiv(n, BLOCK),)](img, out, n, BLOCK=BLOCK, num_warps=4,
                                            enable_fp_fusion=False)
    return out


def _to_uint8_fake(img):
    _check_to_uint8(img)
    return torch.empty_like(img, dtype=torch.uint8)


_to_uint8_op = _register_op("to_uint8", to_uint8_triton, _to_uint8_fake)


def to_uint8(img: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """Float image (any shape, e.g. (M, 3) or (F, H, W, 3)) -> uint8, rint((x+1)*127.5) in
    [0, 255]. Both backends give identical bytes."""
    return _dispatch("to_uint8", to_uint8_reference, img, "img", backend)


# ---- rgb_to_yuv420 ------------------------------------------------------------------------------

def _check_yuv(frames):
    check_tensor(frames, "frames", ndim=4, shape=(None, None, None, 3), dtypes=(torch.uint8,))
    F, H, W, _ = frames.shape
    if H % 2 or W % 2:
        raise ValueError(f"rgb_to_yuv420 needs even H and W, got {H}x{W}")
    return F, H, W


def _plane(r, g, b, key):
    cr, cg, cb = YUV_COEFFS[key]
    v = r * cr
    v += g * cg
    v += b * cb
    v += _OFFSETS[key]
    return v.clamp_(0.0, 255.0).round_().to(torch.uint8)


def rgb_to_yuv420_reference(frames: torch.Tensor) -> torch.Tensor:
    """frames (F, H, W, 3) uint8 -> (F, H*3//2, W) uint8 I420 (BT.709 limited range)."""
    F, H, W = _check_yuv(frames)
    x = frames.float()
    r, g, b = x[..., 0], x[..., 1], x[..., 2]                                  # (F, H, W)
    y = _plane(r, g, b, "Y")
    # 2x2 sums in the kernel's order ((p00 + p01) + p10) + p11 (exact: small integers), * 0.25.
    q = x.reshape(F, H // 2, 2, W // 2, 2, 3)
    avg = (((q[:, :, 0, :, 0] + q[:, :, 0, :, 1]) + q[:, :, 1, :, 0]) + q[:, :, 1, :, 1]) * 0.25
    ra, ga, ba = avg[..., 0], avg[..., 1], avg[..., 2]                         # (F, H/2, W/2)
    u = _plane(ra, ga, ba, "U")
    v = _plane(ra, ga, ba, "V")
    return torch.cat([y.reshape(F, -1), u.reshape(F, -1), v.reshape(F, -1)], dim=1).reshape(
        F, H * 3 // 2, W)


def rgb_to_yuv420_triton(frames: torch.Tensor) -> torch.Tensor:
    """Triton launcher (CUDA tensors, or CPU tensors under TRITON_INTERPRET=1)."""
    F, H, W = _check_yuv(frames)
    resolve_backend("triton", frames.device)
    if not frames.is_contiguous():
        raise ValueError("frames must be contiguous for the Triton backend")
    out = torch.empty((F, H * 3 // 2, W), dtype=torch.uint8, device=frames.device)
    blocks = (H // 2) * (W // 2)
    if F == 0 or blocks == 0:
        return out
    mod = load_triton_module("_rgb_triton")
    BLOCK = 256
    (yr, yg, yb), (ur, ug, ub), (vr, vg, vb) = YUV_COEFFS["Y"], YUV_COEFFS["U"], YUV_COEFFS["V"]
    mod._rgb_to_yuv420_kernel[(F, cdiv(blocks, BLOCK))](
        frames, out, H, W,
        Y_R=yr, Y_G=yg, Y_B=yb, U_R=ur, U_G=ug, U_B=ub, V_R=vr, V_G=vg, V_B=vb,
        BLOCK=BLOCK, num_warps=4, enable_fp_fusion=False)
    return out


def _rgb_to_yuv420_fake(frames):
    F, H, W = _check_yuv(frames)
    return frames.new_empty((F, H * 3 // 2, W))


_rgb_to_yuv420_op = _register_op("rgb_to_yuv420", rgb_to_yuv420_triton, _rgb_to_yuv420_fake)


def rgb_to_yuv420(frames: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """uint8 RGB frames (F, H, W, 3), H and W even -> I420 (F, H*3//2, W) uint8, BT.709 limited
    range. Both backends give identical bytes."""
    return _dispatch("rgb_to_yuv420", rgb_to_yuv420_reference, frames, "frames", backend)
