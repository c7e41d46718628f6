"""Host helpers shared by the ops in `kernels/`: backend choice, argument checks, lazy Triton.

Nothing here imports Triton or touches a device at import time. The `@triton.jit` kernels live in
private modules (`_*_triton.py`) that are imported only when the Triton backend runs, through
`load_triton_module`, which refuses a `TRITON_INTERPRET` changed since (Triton decides between
compiling and interpreting when the `@triton.jit` decorator runs).
"""
from __future__ import annotations

import importlib
import os
from typing import Iterable, Optional, Sequence

import torch

# The one definition of each; kernels/compile_check.py, engine/ and bench/ import them from here.
# GEMM compute modes (see fmm_linear): 'fp32' is the fp32 statement (torch: fp32 GEMMs; Triton:
# 3xTF32 on the tensor cores, within fp32's error bound), 'fp32-ieee' the same statement with
# Triton's exact-product FMA dot (slow: no tensor cores), 'tf32' / 'bf16' round the operands.
PRECISIONS = ("fp32", "tf32", "bf16", "fp32-ieee")
BACKENDS = ("auto", "triton", "torch")
# Activation / weight dtype of each precision: tf32 keeps fp32 storage (only the GEMM rounds).
COMPUTE_DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16,
                  "fp32-ieee": torch.float32}
# The precisions whose GEMM operands are fp32 values, unrounded (the torch backend runs both as
# plain fp32 GEMMs; they differ only in the Triton dot, see triton_dot_precision).
FP32_PRECISIONS = ("fp32", "fp32-ieee")
FLOAT_DTYPES = (torch.float32, torch.bfloat16)
INDEX_DTYPES = (torch.int64,)

# Torch CPU matmul (MKL / oneDNN) takes another code path, with other bits, for a handful of rows
# (seen for M = 1, 3, 7) and when operand rows are not 64-byte aligned (K = 17 at odd offsets).
# The CPU GEMMs therefore always run on at least this many rows, with K padded to 64 bytes.
MIN_GEMM_ROWS = 64
GEMM_ALIGN_BYTES = 64

_TRUE = ("1", "true", "on", "yes")


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def round_up(a: int, b: int) -> int:
    return cdiv(a, b) * b


_TRITON_IMPORTS: Optional[bool] = None


def triton_available() -> bool:
    """True when the `triton` package imports (it is optional: the torch backend needs none).
    The first call imports it; the answer is cached."""
    global _TRITON_IMPORTS
    if _TRITON_IMPORTS is None:
        try:
            import triton  # noqa: F401
            _TRITON_IMPORTS = True
        except Exception:  # ImportError, or a broken install raising something else
            _TRITON_IMPORTS = False
    return _TRITON_IMPORTS


def interpreter_enabled() -> bool:
    """True when Triton runs kernels in its CPU interpreter (`TRITON_INTERPRET=1`)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in _TRUE


def load_triton_module(name: str):
    """Import `kernels.<name>` (a module of `@triton.jit` kernels). Its kernels were decorated for
    the TRITON_INTERPRET setting of their first import; a later change of the setting is an error
    (set it once, before the first Triton launch), not a silent re-import."""
    mod = importlib.import_module(f"{__package__}.{name}")
    # The module's kernels call the shared helpers of kernels/_triton_common.py: both must match.
    for m in (mod, importlib.import_module(f"{__package__}._triton_common")):
        if getattr(m, "INTERPRETED", None) != interpreter_enabled():
            mode = "interpreted" if getattr(m, "INTERPRETED", False) else "compiled"
            raise ValueError(f"TRITON_INTERPRET changed after {m.__name__} was imported (its kernels "
                             f"are {mode}); set it once, before the first Triton launch")
    return mod


def check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")


def resolve_backend(backend: str, device: torch.device) -> str:
    """'auto' -> 'triton' for CUDA tensors when Triton is installed, else 'torch'.

    'triton' on CPU tensors is allowed only under TRITON_INTERPRET=1 (tests)."""
    check_backend(backend)
    on_cuda = device.type == "cuda"
    if backend == "auto":
        return "triton" if on_cuda and triton_available() else "torch"
    if backend == "triton":
        if not triton_available():
            raise ValueError("backend='triton' needs the triton package, which does not import here")
        if not on_cuda and not interpreter_enabled():
            raise ValueError(f"backend='triton' needs CUDA tensors (got {device}); CPU tensors run "
                             "only in Triton's interpreter (TRITON_INTERPRET=1)")
    return backend


def check_tensor(t, name: str, *, ndim: Optional[int] = None, shape: Optional[Sequence] = None,
                 dtypes: Optional[Iterable[torch.dtype]] = None,
                 device: Optional[torch.device] = None, inner_contiguous: bool = False) -> None:
    """Raise ValueError naming `name` unless `t` is a tensor of the given rank, shape (None entries
    are free), dtype, device, and (inner_contiguous) unit stride in its last dimension."""
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(t.shape)}")
    if shape is not None:
        if t.dim() != len(shape) or any(s is not None and t.shape[d] != s for d, s in enumerate(shape)):
            want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
            raise ValueError(f"{name} must have shape {want}, got {tuple(t.shape)}")
    if dtypes is not None:
        dtypes = tuple(dtypes)
        if t.dtype not in dtypes:
            raise ValueError(f"{name} must have dtype in {[str(d) for d in dtypes]}, got {t.dtype}")
    if device is not None and t.device != device:
        raise ValueError(f"{name} is on {t.device} but the op runs on {device}; all tensors must "
                         "be on one device")
    if inner_contiguous and t.dim() > 0 and t.shape[-1] > 1 and t.stride(-1) != 1:
        raise ValueError(f"{name} must have unit stride in its last dimension, got strides "
                         f"{tuple(t.stride())}")


def check_out_layout(out: torch.Tensor, across: str) -> None:
    """An out= destination view (any strides, e.g. a tile's place in a frame buffer): unit stride
    across its last dimension (`across` names it in the message), not overlapping itself (the
    kernels store each element once), not requiring grad (the op is not differentiable)."""
    if out.shape[-1] > 1 and out.stride(-1) != 1:
        raise ValueError(f"out must have unit stride across {across}, got strides {tuple(out.stride())}")
    if any(st < 0 or (st == 0 and n > 1) for st, n in zip(out.stride(), out.shape)) or (
            torch._debug_has_internal_overlap(out) == 1):
        raise ValueError(f"out must not overlap itself, got strides {tuple(out.stride())}")
    if out.requires_grad:
        raise ValueError("out= does not take a tensor that requires grad")


def tensor_device(t, name: str) -> torch.device:
    """The device of tensor `t` (ValueError naming `name` when it is no tensor): what a dispatch
    needs to pick the backend before the chosen path checks everything else."""
    check_tensor(t, name)
    return t.device


def check_index(idx, name: str, length: int, bound: int, device: torch.device, check_values: bool) -> None:
    """`idx` must be (length,) int64 on `device`; with check_values, on CPU, also 0 <= idx < bound
    (not on CUDA, where it would cost a device sync, nor while torch.compile traces: indices
    are trusted there)."""
    check_tensor(idx, name, shape=(length,), dtypes=INDEX_DTYPES, device=device)
    if check_values and idx.device.type == "cpu" and length > 0 and not torch.compiler.is_compiling():
        lo, hi = int(idx.min()), int(idx.max())
        if lo < 0 or hi >= bound:
            raise ValueError(f"{name} holds values in [{lo}, {hi}], outside [0, {bound})")


def tf32_round(x: torch.Tensor) -> torch.Tensor:
    """Round fp32 values to TF32 (10-bit mantissa), to nearest, ties away from zero (as the
    hardware conversion cvt.rna.tf32.f32). Returns a new fp32 tensor."""
    if x.dtype != torch.float32:
        raise ValueError(f"tf32_round expects float32, got {x.dtype}")
    bits = x.contiguous().view(torch.int32)
    finite = torch.isfinite(x)
    rounded = ((bits + 0x1000) & ~0x1FFF).view(torch.float32)
    return torch.where(finite, rounded, x)


def triton_dot_precision(precision: str) -> str:
    """The Triton kernels' DOT_PRECISION for a precision mode (one place for every launcher; see
    kernels/_triton_common._mma): 'fp32' -> "tf32x3" (3xTF32 on the tensor cores), 'tf32' ->
    "tf32", 'fp32-ieee' -> "ieee" (the exact FMA dot); 'bf16' -> "ieee" (bf16 operands ignore it)."""
    check_precision(precision)
    return {"fp32": "tf32x3", "tf32": "tf32"}.get(precision, "ieee")


def gemm_precision_cast(t: torch.Tensor, precision: str) -> torch.Tensor:
    """fp32 copy of `t` holding the operand values a GEMM sees in `precision` mode ('fp32' and
    'fp32-ieee': the fp32 values themselves; the model of Triton's 3xTF32 is the exact product)."""
    t = t.float()
    if precision == "bf16":
        return t.bfloat16().float()
    if precision == "tf32":
        return tf32_round(t)
    return t
