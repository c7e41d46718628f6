"""Render kernels: per-video weight preparation, the fused modulated GEMM, the colour epilogue.

Each op has a torch reference (`*_reference`), a Triton launcher (`*_triton`, registered as a
`torch.library` custom op `digan::<op>` with a fake implementation for torch.compile) and a
dispatch entry `op(..., backend='auto'|'triton'|'torch')`: 'auto' runs Triton on CUDA tensors
when it is installed, torch otherwise. Importing this package imports neither Triton nor CUDA.
The references, gathered by op name, are in `kernels.reference` (REFERENCES); the precisions
and their compute dtypes in `kernels._common` (PRECISIONS, COMPUTE_DTYPES).
"""
from ._common import MIN_GEMM_ROWS, PRECISIONS, tf32_round
from .linear import SQRT2, fmm_linear, fmm_linear_reference, fmm_linear_torch, fmm_linear_triton, nearest_index
from .linear_backward import (
    FmmLinearGrads,
    fmm_linear_autograd,
    fmm_linear_backward,
    fmm_linear_backward_reference,
    scatter_rows,
)
from .modulate import (
    fmm_modulate,
    fmm_modulate_reference,
    fmm_modulate_triton,
    torgb_modulate,
    torgb_modulate_reference,
)
from .modulate_backward import fmm_modulate_autograd, fmm_modulate_backward, fmm_modulate_backward_reference
from .rgb import (
    YUV_COEFFS,
    rgb_to_yuv420,
    rgb_to_yuv420_reference,
    rgb_to_yuv420_triton,
    to_uint8,
    to_uint8_reference,
    to_uint8_triton,
)

__all__ = [
    "PRECISIONS", "MIN_GEMM_ROWS", "SQRT2", "tf32_round",
    "fmm_modulate", "fmm_modulate_reference", "fmm_modulate_triton",
    "torgb_modulate", "torgb_modulate_reference",
    "fmm_linear", "fmm_linear_reference", "fmm_linear_torch", "fmm_linear_triton", "nearest_index",
    "to_uint8", "to_uint8_reference", "to_uint8_triton",
    "rgb_to_yuv420", "rgb_to_yuv420_reference", "rgb_to_yuv420_triton", "YUV_COEFFS",
    "FmmLinearGrads", "fmm_linear_autograd", "fmm_linear_backward", "fmm_linear_backward_reference",
    "scatter_rows", "fmm_modulate_autograd", "fmm_modulate_backward",
    "fmm_modulate_backward_reference",
]
