"""fp32 on the tensor cores (3xTF32) and the TF32 model (kernels/_triton_common._mma), Triton in
the interpreter: _round_tf32 is kernels._common.tf32_round bit for bit; precision 'fp32' on Triton
(3xTF32) is within fp32's error bound of the fp64 statement and >= 100x more accurate than 'tf32'
on the same data (x path, embedding path, the backward's dX and dW kernels), so a missing
correction term fails; 'tf32' Triton equals the torch TF32 model to fp32 summation order;
'fp32-ieee' is the exact-product FMA dot and the torch backend runs it as 'fp32'.

u = 2^-24 below. The interpreter's tl.dot is the fixed-order fp64 sum (tests/conftest.py
fixed_order_dot): one fp32 rounding per dot, then the fp32 add into the accumulator.
"""
import functools
import math

import numpy as np
import pytest
import torch

from kernels import fmm_linear
from kernels._common import tf32_round
from kernels.linear import _triton_config
from kernels.linear_backward import fmm_linear_backward
from tests.kernel_utils import (
    U32,
    assert_bitwise_equal,
    assert_within,
    device_for,
    fixed_order_matmul,
    needs_triton,
    run_poisoned,
)
from tests.test_kernels_fmm_linear import make_case, to_device

pytestmark = pytest.mark.usefixtures("fixed_order_dot")

# One product's error in 3xTF32 against the exact product, worst case (see _mma's docstring):
# the dropped a_lo*b_lo (2^-22) and the rounding of a_lo and b_lo (2^-23 each): 2^-21 = 8 u.
TF32X3_PRODUCT = 8 * U32
_round_tf32 = None       # kernels._triton_common._round_tf32, bound by _round_kernel()


# ---- _round_tf32 -------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _round_kernel():
    """A one-op Triton kernel around _round_tf32 (decorated on first use, in the test's mode)."""
    import triton
    import triton.language as tl

    from kernels._common import load_triton_module
    # The interpreter resolves the names a kernel calls in its module's globals, not closures.
    global _round_tf32
    _round_tf32 = load_triton_module("_triton_common")._round_tf32

    @triton.jit
    def kernel(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        tl.store(out_ptr + offs, _round_tf32(tl.load(x_ptr + offs, mask=mask)), mask=mask)

    return kernel


def _tf32_inputs():
    """Finite fp32 values of every exponent and both signs (random bit patterns), exact ties (the
    13 dropped bits 0x1000) and their neighbours, values just below / at / above powers of two
    (carries into the exponent), +-0, subnormals, the largest finite values (round to inf) and
    +-inf."""
    g = torch.Generator().manual_seed(0)
    rand_bits = torch.randint(-2 ** 31, 2 ** 31 - 1, (1 << 16,), generator=g, dtype=torch.int64)
    base = rand_bits.to(torch.int32) & ~0x1FFF
    ties = torch.cat([base + 0x1000, base + 0x0FFF, base + 0x1001])
    exps = torch.arange(-140, 128, dtype=torch.float64)
    pows = torch.cat([2.0 ** exps, -(2.0 ** exps)]).float().view(torch.int32)
    near = torch.cat([pows + d for d in (-0x1001, -0x1000, -0xFFF, -1, 0, 1, 0xFFF, 0x1000)])
    special = torch.tensor([0, 1, 0x1000, 0x7FFFFF, 0x7F7FFFFF, 0x7F7FF000, 0x7F7FEFFF, 0x7F800000],
                           dtype=torch.int32)
    special = torch.cat([special, special | -2 ** 31])
    bits = torch.cat([rand_bits.to(torch.int32), ties, near, special])
    x = bits.view(torch.float32)
    return x[~torch.isnan(x)]


@needs_triton
def test_round_tf32_is_the_torch_model():
    x = _tf32_inputs()
    assert (x == 0).float().mean() < 1e-3 and len(x) > 200_000
    n, BLOCK = x.numel(), 4096
    out = torch.full_like(x, float("nan"))                          # poison: unwritten stays NaN
    _round_kernel()[(math.ceil(n / BLOCK),)](x, out, n, BLOCK=BLOCK)
    assert_bitwise_equal(out, tf32_round(x), "_round_tf32 vs kernels._common.tf32_round")
    # The model itself: ties away from zero, 10 mantissa bits, idempotent.
    one = torch.tensor([1.0 + 2.0 ** -11, -(1.0 + 2.0 ** -11), 1.0 + 3 * 2.0 ** -11])
    assert tf32_round(one).tolist() == [1.0 + 2.0 ** -10, -(1.0 + 2.0 ** -10), 1.0 + 2 * 2.0 ** -10]
    assert_bitwise_equal(tf32_round(out), out, "idempotent")


# ---- forward: 3xTF32 against fp64 and against tf32 ---------------------------------------------

def _exact_forward(kw):
    """(y, G, Wtrig) in fp64: y the exact statement (sin/cos of the exact phase of the fp32
    inputs; fp64 products of the fp32 values), G = |a| @ |W|^T, Wtrig = sum |w| over the sin/cos
    columns."""
    W = kw["weight"].double()
    cols = []
    if kw.get("x") is not None:
        cols.append(kw["x"].double())
    if kw.get("emb_A") is not None:
        A, b = kw["emb_A"].double(), kw["emb_b"].double()
        xs, ys = kw["xs"].double(), kw["ys"].double()
        phase = (A[:, 0] * xs[None, None, :, None] + A[:, 1] * ys[None, :, None, None]
                 + b[:, None, None, :]).reshape(-1, A.shape[0])        # (F*h*w, E)
        cols.append(torch.cat([phase.sin(), phase.cos()], dim=1))
    a = torch.cat(cols, dim=1)
    E = 0 if kw.get("emb_A") is None else kw["emb_A"].shape[0]
    Wtrig = W[:, W.shape[1] - 2 * E:].abs().sum(1).expand(a.shape[0], -1)
    return a @ W.t(), a.abs() @ W.abs().t(), Wtrig


def _fp32_bound(G, Wtrig, K):
    """|3xTF32 - exact| bound: TF32X3_PRODUCT per product; the fp32 accumulation of the 3K
    products (three dots per K step, each rounded once into the fp32 accumulator: gamma_3K, on
    sum |terms| <= (1 + 2^-9) G, the lo terms being <= 2^-10 |ab| together); the trig-free
    operand and folded weights (kernels/linear.py: <= 8.4 u per unit of |W_sin| + |W_cos|, so
    9 u Wtrig)."""
    return (TF32X3_PRODUCT + (3 * K + 2) * U32 * (1 + 2.0 ** -9)) * G + 9 * U32 * Wtrig


FWD_CASES = {
    # conv-like: K = 96 (three K steps of 32), N = 24 (a partial column tile)
    "x": dict(M=40, KX=96, N=24),
    # the embedding path only: E = 24 (two steps of 16 for sin and cos), 2 frames of 4 x 5
    "emb": dict(E=24, F=2, h=4, w=5, N=20),
}


@needs_triton
@pytest.mark.parametrize("case", list(FWD_CASES))
def test_fp32_is_3xtf32_within_fp32_bound(case):
    kw = make_case(11, **FWD_CASES[case])
    y64, G, Wtrig = _exact_forward(kw)
    K = kw["weight"].shape[1]
    dev = device_for("triton")
    out = {p: run_poisoned(lambda p=p: fmm_linear(**to_device(kw, dev), out_dtype=torch.float32,
                                                  precision=p, backend="triton")).cpu()
           for p in ("fp32", "tf32", "fp32-ieee")}
    assert_within(out["fp32"], y64, _fp32_bound(G, Wtrig, K), f"{case}: 3xTF32 vs fp64")
    err = {p: ((o.double() - y64).abs() / G).max().item() for p, o in out.items()}
    # Measured (interpreter, fixed-order dot), max |err| / G: x 3xTF32 7.8e-8, tf32 1.4e-4,
    # fp32-ieee 3.0e-8; emb 1.1e-7, 1.7e-4, 6.1e-8. A dropped correction term leaves ~2^-12 |ab|
    # per product, within 2x of tf32: 100x separates the two cases with room (we see ~1800x).
    assert err["fp32"] * 100 < err["tf32"], err
    # 3xTF32 is not the exact-product dot: the mode switch reaches the kernel.
    assert not torch.equal(out["fp32"], out["fp32-ieee"])


@needs_triton
def test_backward_dx_dw_3xtf32():
    """The backward's dX (_fmm_bwd_da_kernel, reduction over N) and dW (_fmm_bwd_dw_kernel,
    reduction over M) in 3xTF32 against fp64, and >= 100x below tf32 on the same data."""
    kw = make_case(5, M=96, KX=40, N=72)
    g = torch.randn(96, 72, generator=torch.Generator().manual_seed(6))
    x64, w64, g64 = kw["x"].double(), kw["weight"].double(), g.double()
    exact = {"weight": (g64.t() @ x64, g64.abs().t() @ x64.abs(), 96),
             "x": (g64 @ w64, g64.abs() @ w64.abs(), 72)}
    dev = device_for("triton")
    got = {}
    for p in ("fp32", "tf32"):
        grads = run_poisoned(lambda p=p: torch.cat([t.flatten() for t in fmm_linear_backward(
            g.to(dev), kw["weight"].to(dev), kw["x"].to(dev), needs=("weight", "x"), precision=p,
            backend="triton")[:2]]))
        got[p] = {"weight": grads[:72 * 40].view(72, 40).cpu(), "x": grads[72 * 40:].view(96, 40).cpu()}
    for k, (y64, G, n) in exact.items():
        assert_within(got["fp32"][k], y64, _fp32_bound(G, 0.0, n), f"d{k}: 3xTF32 vs fp64")
        err = {p: ((got[p][k].double() - y64).abs() / G).max().item() for p in got}
        # Measured: dW 7.6e-8 vs tf32 1.8e-4, dX 1.2e-7 vs 2.1e-4 (max |err| / G).
        assert err["fp32"] * 100 < err["tf32"], (k, err)


# ---- tf32: the Triton kernel is the torch model -------------------------------------------------

@needs_triton
@pytest.mark.parametrize("case", list(FWD_CASES))
def test_tf32_triton_equals_torch_model(case):
    """Both backends multiply the very same TF32 operands (rounded to nearest in _mma and by
    tf32_round in the torch path), exact products in fp32; they differ only by fp32 summation
    order: each is within (K + 2) u G of the exact sum of those products, so they agree to
    2 (K + 2) u G (G of the unrounded operands; rounding changes it by <= 2^-10). Before _mma
    rounded, the interpreter multiplied the unrounded values (the fp32-ieee result): off by the
    TF32 rounding itself. Measured, max / G: now 1.4e-7 (x) and 1.3e-7 (emb), unrounded 1.4e-4
    and 1.5e-4: checked >= 100x apart."""
    kw = make_case(12, **FWD_CASES[case])
    K = kw["weight"].shape[1]
    dev = device_for("triton")
    tri = run_poisoned(lambda: fmm_linear(**to_device(kw, dev), out_dtype=torch.float32,
                                          precision="tf32", backend="triton")).cpu()
    ref = fmm_linear(**kw, precision="tf32", backend="torch")
    _, G, _ = _exact_forward(kw)
    tol = 2 * (K + 2) * U32 * G * (1 + 2.0 ** -10)
    assert_within(tri, ref, tol, f"{case}: tf32 Triton vs torch model")
    unrounded = fmm_linear(**to_device(kw, dev), precision="fp32-ieee", backend="triton").cpu()
    now, before = (((t.double() - ref.double()).abs() / G).max().item() for t in (tri, unrounded))
    assert now * 100 < before, (now, before)


# ---- fp32-ieee: the FMA dot; the torch backend runs it as fp32 ---------------------------------

@needs_triton
def test_fp32_ieee_is_the_exact_product_dot():
    """fp32-ieee on Triton is the kernel's old fp32 path: per K step one exact-product dot (the
    interpreter's fixed-order fp64 sum, rounded once) added into the fp32 accumulator. Emulated
    here step by step from the unrounded operands: bitwise equal."""
    kw = make_case(13, M=40, KX=96, N=24)
    x, W = kw["x"], kw["weight"]
    BK = _triton_config(96, 0, 24, "fp32-ieee")["BLOCK_K"]
    acc = torch.zeros(40, 24)
    for k0 in range(0, 96, BK):
        step = fixed_order_matmul(x[:, k0:k0 + BK].numpy(), W[:, k0:k0 + BK].t().numpy())
        acc = acc + torch.from_numpy(step)
    out = run_poisoned(lambda: fmm_linear(**to_device(kw, device_for("triton")), precision="fp32-ieee",
                                          backend="triton")).cpu()
    assert_bitwise_equal(out, acc, "fp32-ieee vs the exact-product dot, step by step")


def test_torch_backend_runs_fp32_ieee_as_fp32():
    backend = "torch"
    kw = make_case(14, E=8, F=2, h=3, w=5, KX=17, N=9, x_rows=20, pre=True, bias=True, act=True,
                   clamp=1.5)
    fwd = {p: fmm_linear(**kw, precision=p, backend=backend) for p in ("fp32", "fp32-ieee")}
    assert_bitwise_equal(fwd["fp32-ieee"], fwd["fp32"], "torch forward fp32-ieee vs fp32")
    g = torch.randn(fwd["fp32"].shape, generator=torch.Generator().manual_seed(15))
    args = dict(out=fwd["fp32"], x_index=kw["x_index"], emb_A=kw["emb_A"], emb_b=kw["emb_b"],
                xs=kw["xs"], ys=kw["ys"], pre_rows=kw["pre_add"].shape[0], has_bias=True, act=True,
                clamp=1.5, backend=backend)
    bwd = {p: fmm_linear_backward(g, kw["weight"], kw["x"], precision=p, **args)
           for p in ("fp32", "fp32-ieee")}
    for name, a, b in zip(bwd["fp32"]._fields, bwd["fp32-ieee"], bwd["fp32"]):
        if b is not None:
            assert_bitwise_equal(a, b, f"torch d{name} fp32-ieee vs fp32")


def test_measured_product_error_of_3xtf32():
    """The per-product model of _mma's docstring, on the host: a_hi b_hi + a_hi b_lo + a_lo b_hi
    in fp64 against the exact product, within 2^-21 |ab| (plus the 2^-46 of the lo roundings'
    cross term). Measured on 2^20 random pairs over 40 binades: max 2^-21.09 (the bound is
    nearly reached), mean 2^-24.2 (about one fp32 rounding)."""
    g = torch.Generator().manual_seed(16)
    a = torch.randn(1 << 20, generator=g) * 2.0 ** torch.randint(-20, 20, (1 << 20,), generator=g).float()
    b = torch.randn(1 << 20, generator=g)
    a_hi, b_hi = tf32_round(a), tf32_round(b)
    a_lo, b_lo = tf32_round(a - a_hi), tf32_round(b - b_hi)
    d = lambda t: t.double()                                          # noqa: E731
    approx = d(a_hi) * d(b_hi) + d(a_hi) * d(b_lo) + d(a_lo) * d(b_hi)
    rel = ((approx - d(a) * d(b)).abs() / (d(a) * d(b)).abs()).max().item()
    assert 0 < rel <= TF32X3_PRODUCT * (1 + 2.0 ** -20), rel
    assert np.log2(rel) > -22, rel     # the bound is not vacuous: it is nearly reached
