"""fmm_modulate / torgb_modulate: Triton (interpreter) and torch against an fp64 statement of the
formula, with rounding-model bounds; argument checks; custom-op registration."""
import pytest
import torch

from kernels import fmm_modulate, torgb_modulate
from kernels.reference import fmm_modulate_reference
from tests.kernel_utils import (
    BACKENDS,
    U32,
    U_BF16,
    assert_bitwise_equal,
    assert_within,
    device_for,
    gpu_compile_stats,
    needs_triton,
    run_poisoned,
)

# Interpreter-mode tl.dot is a fixed-order sum (tests/conftest.fixed_order_dot): bitwise claims
# here are about the kernels, not the host BLAS behind numpy's matmul.
pytestmark = pytest.mark.usefixtures("fixed_order_dot")


def make_inputs(Cout, Cin, rank, B, seed=0):
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(Cout, Cin, generator=g)
    styles = torch.randn(B, (Cin + Cout) * rank, generator=g) * 0.5
    return weight, styles


def naive_fp64(weight, styles, rank, demodulate):
    """fp64 formula and an elementwise error bound for an fp32 evaluation of it.

    Before demodulation, W' = w (1 + M) with M = sum_k L_k R_k / sqrt(r): an fp32 dot of r
    products is within (r + 2) u S of M (S = sum_k |L_k R_k| / sqrt(r), incl. the division),
    then 1 + M and the product by w add 3 roundings: e = |w| ((r + 3) u S + 3 u |1 + M|).
    Demodulation divides by n = ||W'|| + 1e-8: the computed norm is within ||e|| (triangle
    inequality) + (Cin + 2) u n (fp32 sum of Cin squares and sqrt) of n, so the result is within
    e / n + |W''| (norm error / n) + 2 u |W''| (the + 1e-8 and the division)."""
    w = weight.double()
    B = styles.shape[0]
    Cout, Cin = w.shape
    L = styles[:, :Cout * rank].double().reshape(B, Cout, rank)
    R = styles[:, Cout * rank:].double().reshape(B, rank, Cin)
    M = L @ R / rank ** 0.5
    S = L.abs() @ R.abs() / rank ** 0.5
    W1 = w * (1 + M)
    e = w.abs() * ((rank + 3) * U32 * S + 3 * U32 * (1 + M).abs())
    if not demodulate:
        return W1, e + 1e-30
    n = W1.norm(dim=2, keepdim=True) + 1e-8
    W2 = W1 / n
    norm_err = e.norm(dim=2, keepdim=True) + (Cin + 2) * U32 * n
    return W2, e / n + W2.abs() * norm_err / n + 2 * U32 * W2.abs() + 1e-30


SHAPES = [(3, 5, 10, 2), (17, 48, 3, 1), (48, 17, 1, 3), (33, 70, 10, 2), (5, 3, 10, 1)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("demodulate", [True, False])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "Cout{}_Cin{}_r{}_B{}".format(*s))
def test_fmm_modulate_matches_fp64(shape, demodulate, out_dtype, backend):
    Cout, Cin, rank, B = shape
    weight, styles = make_inputs(*shape, seed=Cout * 100 + Cin)
    expect, bound = naive_fp64(weight, styles, rank, demodulate)
    if out_dtype == torch.bfloat16:                  # one more rounding, on store
        bound = bound + U_BF16 * expect.abs()
    dev = device_for(backend)
    out = run_poisoned(lambda: fmm_modulate(weight.to(dev), styles.to(dev), rank, demodulate,
                                            out_dtype=out_dtype, backend=backend))
    assert out.shape == (B, Cout, Cin) and out.dtype == out_dtype
    assert_within(out, expect, bound, f"{backend} vs fp64")


def test_reference_is_the_model_formula():
    """The torch path is the generator's own fmm_weight (bitwise)."""
    from digan.networks import fmm_weight
    weight, styles = make_inputs(17, 48, 10, 2)
    for demod in (True, False):
        assert_bitwise_equal(fmm_modulate_reference(weight, styles, 10, demod),
                             fmm_weight(weight, styles, 10, demod), "reference vs digan.networks")


@pytest.mark.parametrize("backend", BACKENDS)
def test_torgb_modulate_exact(backend):
    """One fp32 product per element: the fp64 product of two fp32 values is exact, so its fp32
    rounding is the correctly rounded result; equality is bitwise."""
    g = torch.Generator().manual_seed(1)
    weight, styles = torch.randn(3, 48, generator=g), torch.randn(2, 48, generator=g) / 48 ** 0.5
    dev = device_for(backend)
    out = torgb_modulate(weight.to(dev), styles.to(dev), backend=backend)
    expect = (weight.double()[None] * styles.double()[:, None, :]).float()
    assert_bitwise_equal(out.cpu(), expect, "torgb_modulate")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kwargs,match", [
    (dict(styles=torch.randn(2, 79)), "shape"),
    (dict(rank=0), "rank"),
    (dict(weight=torch.randn(3, 5, 1)), "2-D"),
    (dict(weight=torch.randn(3, 5).double()), "dtype"),
    (dict(styles=torch.randn(2, 80, device="meta")), "device"),
    (dict(out_dtype=torch.float16), "out_dtype"),
    (dict(weight=torch.randn(5, 3).t()), "stride"),
])
def test_fmm_modulate_value_errors(kwargs, match, backend):
    args = dict(weight=torch.randn(3, 5), styles=torch.randn(2, 80), rank=10)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        fmm_modulate(**args, backend=backend)


def test_torgb_modulate_value_errors():
    with pytest.raises(ValueError, match="shape"):
        torgb_modulate(torch.randn(3, 8), torch.randn(2, 7))


def test_custom_op_fake_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode():
        out = torch.ops.digan.fmm_modulate(torch.empty(5, 3), torch.empty(2, 80), 10, True,
                                           torch.bfloat16)
    assert out.shape == (2, 5, 3) and out.dtype == torch.bfloat16


@needs_triton
def test_custom_op_opcheck():
    weight, styles = make_inputs(5, 3, 10, 2)
    dev = device_for("triton")
    torch.library.opcheck(torch.ops.digan.fmm_modulate.default,
                          (weight.to(dev), styles.to(dev), 10, True, torch.float32))


@pytest.mark.slow
@needs_triton
def test_compiles_for_hopper():
    """Compiles for sm_90 (no GPU needed), with IEEE division and square root (div.rn, sqrt.rn)."""
    counts = gpu_compile_stats("modulate")["bf16"]
    assert counts["div.rn"] > 0 and counts["sqrt.rn"] > 0, counts
