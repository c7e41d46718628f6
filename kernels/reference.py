"""The plain-PyTorch reference of every op in kernels/, in one place: what tests and benchmarks
compare the fast paths with.

Each reference lives beside its op (one file per op: kernels, launcher, autograd Function and
reference); this module only gathers them, under the op's name in `REFERENCES`. The references
materialise what the fast paths fuse (x[x_index], the embedding by direct sin/cos of an fp64
phase, M = L @ R) and compute in fp32 (the backward references by autograd through the plain
statement, in any float dtype), so they are slow and simple by design.
"""
from __future__ import annotations

from typing import Callable, Dict

from .linear import fmm_linear_reference
from .linear_backward import fmm_linear_backward_reference, fmm_linear_reference_autograd
from .modulate import fmm_modulate_reference, torgb_modulate_reference
from .modulate_backward import fmm_modulate_backward_reference
from .rgb import rgb_to_yuv420_reference, to_uint8_reference

__all__ = ["REFERENCES", "reference", "fmm_linear_reference", "fmm_linear_reference_autograd",
           "fmm_linear_backward_reference", "fmm_modulate_reference", "fmm_modulate_backward_reference",
           "torgb_modulate_reference", "to_uint8_reference", "rgb_to_yuv420_reference"]

# op name (as in torch.ops.digan, plus torgb_modulate, which has no kernel) -> its reference
REFERENCES: Dict[str, Callable] = {
    "fmm_linear": fmm_linear_reference,
    "fmm_linear_backward": fmm_linear_backward_reference,
    "fmm_modulate": fmm_modulate_reference,
    "fmm_modulate_backward": fmm_modulate_backward_reference,
    "torgb_modulate": torgb_modulate_reference,
    "to_uint8": to_uint8_reference,
    "rgb_to_yuv420": rgb_to_yuv420_reference,
}


def reference(op: str) -> Callable:
    """The reference of op `op` (a key of REFERENCES)."""
    if op not in REFERENCES:
        raise ValueError(f"no reference for op {op!r}; ops: {', '.join(REFERENCES)}")
    return REFERENCES[op]
