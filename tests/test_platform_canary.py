"""Platform canaries: properties of this host's BLAS and vector math, not of the engine.

The torch (CPU) path gives a pixel the same bits in every tile because (a) torch's CPU matmul
(MKL / oneDNN) gives a 64-byte aligned row the same bits for any M >= MIN_GEMM_ROWS wherever the
row sits, and (b) torch.sin/cos (SLEEF) give an element the same bits in the vectorised body and
in the scalar tail. If a test here fails, your BLAS or vector-math library breaks that
assumption on this CPU: the engine's CPU tile-identity tests then skip (naming this file), and the
fix belongs in the engine's padding (kernels/_common.MIN_GEMM_ROWS, GEMM_ALIGN_BYTES) for this
platform, not in the kernels under test. Interpreter-mode Triton tests do not depend on numpy's
BLAS at all (they run tl.dot as a fixed-order sum: tests/kernel_utils.patch_interpreter_dot).
"""
import pytest
import torch

from tests.kernel_utils import HOST_MATMUL_SHAPES, host_matmul_row_problems, host_sin_cos_problems


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("K,N", HOST_MATMUL_SHAPES)
def test_your_blas_gives_padded_rows_position_independent_bits(K, N, dtype):
    bad = host_matmul_row_problems(K, N, dtype)
    assert not bad, ("your BLAS (torch's CPU matmul) gives a row other bits depending on where it "
                     "sits in the matrix, which the engine's CPU path assumes it does not (this is "
                     "the host library's behaviour, not an engine bug): " + "; ".join(bad))


def test_your_vector_math_gives_sin_cos_position_independent_bits():
    bad = host_sin_cos_problems()
    assert not bad, ("your vector math library (torch.sin/cos, SLEEF) gives an element other bits "
                     "depending on where it sits in the tensor, which the engine's CPU path assumes "
                     "it does not (the host library's behaviour, not an engine bug): " + "; ".join(bad))
