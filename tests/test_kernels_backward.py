"""Backward of fmm_linear and fmm_modulate (kernels/linear_backward.py, modulate_backward.py):
every gradient of both backends (Triton in the interpreter) against autograd through the plain
torch reference; the closed-form torch backwards against finite differences in fp64 (gradcheck);
poisoned outputs; determinism; the scatter; the custom ops and their autograd registration.

Tolerance (fp32): relative L2 error <= 1e-5 per gradient tensor, against autograd on the fp32
reference and against the fp64 reference. Each gradient entry is a sum of at most n products
(n <= 330 here: rows M for dW, d bias, d A, d b; output channels N for dX / dE) evaluated by both
sides in fp32 in different orders, each within gamma_n = n u / (1 - n u) of the exact sum of
absolute terms (u = 2^-24), so at worst 2 * 330 * 6e-8 = 4e-5 of the sum of absolute terms; the
errors of a summation are a random walk in practice (sqrt(n) u = 1e-6), and the inputs are
random, so the relative L2 error (an average over entries) stays near 1e-6: we measure <= 6e-7
for fmm_linear and <= 1.5e-6 for fmm_modulate (a 1 x 2 weight, whose demodulated gradient nearly
cancels). Triton's fp32 is 3xTF32 (each product within 2^-21 of the exact one, below the sums'
own error): against the fp64 reference 2.5e-7 at most over the cases below, fp32-ieee 2.8e-7.
The extra ingredients (sin / cos: 1 ulp apart between numpy and torch; the lrelu slope and gain
multiplications: 1 rounding each) are of order u. 1e-5 therefore has a 10x margin over typical
errors and still catches any wrong term (those are O(1) relative errors).
"""
import math
import sys

import pytest
import torch

from kernels import SQRT2, fmm_linear, fmm_modulate, nearest_index
from kernels.linear_backward import GRAD_NAMES, fmm_linear_autograd, fmm_linear_backward, scatter_rows
from kernels.modulate_backward import fmm_modulate_autograd, fmm_modulate_backward
from kernels.reference import (
    fmm_linear_backward_reference,
    fmm_linear_reference_autograd,
    fmm_modulate_backward_reference,
)
from tests.kernel_utils import BACKENDS, assert_bitwise_equal, device_for, needs_triton, run_poisoned
from tests.test_kernels_fmm_linear import make_case, to_device

lb_mod = sys.modules["kernels.linear_backward"]
mb_mod = sys.modules["kernels.modulate_backward"]

# Interpreter-mode tl.dot is a fixed-order sum (tests/conftest.fixed_order_dot): bitwise claims
# here are about the kernels, not the host BLAS behind numpy's matmul.
pytestmark = pytest.mark.usefixtures("fixed_order_dot")

REL = 1e-5


def rel_l2(a, b):
    a, b = a.detach().cpu().double(), b.detach().cpu().double()
    return ((a - b).norm() / b.norm()).item()


def assert_close(got, expect, what, bound=REL):
    assert got is not None, f"{what}: no gradient"
    assert got.shape == expect.shape, f"{what}: shape {tuple(got.shape)} vs {tuple(expect.shape)}"
    assert torch.isfinite(got).all(), f"{what}: non-finite gradient"
    assert expect.abs().sum() > 0, f"{what}: the reference gradient is zero (a vacuous test)"
    err = rel_l2(got, expect)
    if err > bound:
        d = (got.detach().cpu().double() - expect.detach().cpu().double()).abs()
        i = tuple(int(k) for k in torch.unravel_index(d.argmax(), d.shape))
        raise AssertionError(f"{what}: relative L2 error {err:.2e} > {bound:.0e}; worst at {i}: "
                             f"got {got[i].item()!r}, expected {expect[i].item()!r}")


# ---- fmm_linear: cases ---------------------------------------------------------------------------

CASES = {
    # conv1 / extra conv: x only, bias, lrelu
    "conv": dict(M=37, KX=17, N=3, bias=True, act=True),
    # one row, one channel, nothing fused
    "one_row": dict(M=1, KX=5, N=1),
    # gathered x (x_index) and the clamp
    "gather_clamp": dict(M=53, KX=19, N=7, x_rows=23, bias=True, act=True, clamp=0.9),
    # b4: the embedding only (odd tile 4 x 3, 2 frames)
    "b4_embedding": dict(E=5, F=2, h=4, w=3, N=19, bias=True, act=True),
    # split conv0 child: embedding + pre_add gathered by index (some parent rows never read)
    "split_conv0": dict(E=4, F=3, h=6, w=5, N=9, pre=True, pre_rows=31, bias=True, act=True),
    # ToRGB with the skip: linear, post_add gathered by index
    "torgb_skip": dict(M=70, KX=16, N=3, bias=True, post=True, post_rows=20),
    # everything at once, E > BLOCK_K / KX > BLOCK_K tiles with remainders
    "all": dict(E=37, F=3, h=3, w=5, KX=41, N=5, x_rows=20, pre=True, pre_rows=9, bias=True,
                act=True, clamp=1.5, post=True, post_rows=11),
    # post_add without index after act (the Function keeps the pre-post output)
    "act_post": dict(E=3, F=1, h=11, w=6, N=17, bias=True, act=True, post=True),
}


def _case(name, seed=0):
    kw = make_case(seed, **CASES[name])
    kw["act"] = bool(kw.get("act"))
    if kw.get("clamp") is None:
        kw.pop("clamp", None)
    return kw


def _rows(kw):
    if kw.get("emb_b") is not None:
        return kw["emb_b"].shape[0] * len(kw["ys"]) * len(kw["xs"])
    if kw.get("x_index") is not None:
        return len(kw["x_index"])
    return kw["x"].shape[0]


def _grad_out(kw, seed=1):
    return torch.randn(_rows(kw), kw["weight"].shape[0], generator=torch.Generator().manual_seed(seed))


def _autograd_grads(kw, g, backend, dev, precision="fp32", fn=None):
    """Gradients of every differentiable input through fmm_linear_autograd (or `fn`)."""
    kw = to_device(kw, dev)
    leaves = {k: kw[k].clone().requires_grad_(True) for k in GRAD_NAMES if kw.get(k) is not None}
    y = (fn or fmm_linear_autograd)(**{**kw, **leaves}, precision=precision, backend=backend)
    names = list(leaves)
    grads = torch.autograd.grad(y, [leaves[k] for k in names], g.to(dev))
    return dict(zip(names, (t.cpu() for t in grads))), y.detach().cpu()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(CASES))
def test_fmm_linear_grads_match_autograd_reference(name, backend):
    kw = _case(name)
    g = _grad_out(kw)
    ref = fmm_linear_backward_reference(g, **kw)
    ref64 = fmm_linear_backward_reference(
        g.double(), **{k: (v.double() if isinstance(v, torch.Tensor) and v.is_floating_point() else v)
                       for k, v in kw.items()})
    dev = device_for(backend)

    def run():
        grads, _ = _autograd_grads(kw, g, backend, dev)
        return torch.cat([grads[k].flatten() for k in sorted(grads)])

    run_poisoned(run)                                   # every element of every gradient written
    grads, y = _autograd_grads(kw, g, backend, dev)
    assert set(grads) == {k for k in GRAD_NAMES if kw.get(k) is not None}
    for k, t in grads.items():
        assert t.dtype == torch.float32
        assert_close(t, getattr(ref, k), f"{name}/{backend} d{k} vs fp32 autograd")
        assert_close(t, getattr(ref64, k), f"{name}/{backend} d{k} vs fp64 autograd")
    # The forward of the differentiable op is fmm_linear's (bitwise, fp32 output).
    kw_dev = to_device(kw, dev)
    assert_bitwise_equal(y, fmm_linear(**kw_dev, out_dtype=torch.float32, backend=backend).cpu(),
                         f"{name}/{backend} forward")


def _all_case_forward(backend):
    """The 'all' case, its output gradient and the fp64 reference backward, the inputs on the
    backend's device and the forward output y that the backward takes (without post_add)."""
    kw = _case("all")
    g = _grad_out(kw)
    ref = fmm_linear_backward_reference(g, **kw)
    dev = device_for(backend)
    d = to_device(kw, dev)
    y = fmm_linear(**{**d, "post_add": None, "post_index": None}, out_dtype=torch.float32,
                   backend=backend)
    return kw, g, ref, dev, d, y


@pytest.mark.parametrize("backend", BACKENDS)
def test_fmm_linear_backward_direct_api(backend):
    """fmm_linear_backward called directly: `needs` restricts the work, absent inputs give None,
    the deterministic result is the same twice (bitwise)."""
    kw, g, ref, dev, d, y = _all_case_forward(backend)
    args = dict(out=y, x_index=d["x_index"], emb_A=d["emb_A"], emb_b=d["emb_b"], xs=d["xs"],
                ys=d["ys"], pre_rows=d["pre_add"].shape[0], pre_index=d["pre_index"],
                has_bias=True, act=True, clamp=d["clamp"], post_rows=d["post_add"].shape[0],
                post_index=d["post_index"], backend=backend)
    full = fmm_linear_backward(g.to(dev), d["weight"], d["x"], **args)
    again = fmm_linear_backward(g.to(dev), d["weight"], d["x"], **args)
    for k in GRAD_NAMES:
        assert_close(getattr(full, k), getattr(ref, k), f"{backend} d{k}")
        assert_bitwise_equal(getattr(full, k), getattr(again, k), f"{backend} d{k} twice")
    only = fmm_linear_backward(g.to(dev), d["weight"], d["x"], needs=("emb_b", "bias"), **args)
    assert only.weight is None and only.x is None and only.emb_A is None and only.pre_add is None
    assert_bitwise_equal(only.emb_b, full.emb_b, "emb_b alone")
    assert_bitwise_equal(only.bias, full.bias, "bias alone")


@needs_triton
def test_triton_dw_split_rows(monkeypatch):
    """dW over many rows is split into row ranges summed in order: same gradient (to rounding)."""
    kw = make_case(4, E=6, F=2, h=9, w=8, KX=10, N=6, x_rows=50, bias=True, act=True)  # M = 144
    kw["act"] = True
    g = _grad_out(kw)
    ref = fmm_linear_backward_reference(g, **kw)
    monkeypatch.setattr(lb_mod, "_DW_SPLIT_ROWS", 40)                    # 3 splits of 64 rows
    assert lb_mod._triton_bwd_config(10, 6, 6, 144, "fp32")["split"] == 3
    grads, _ = _autograd_grads(kw, g, "triton", device_for("triton"))
    assert_close(grads["weight"], ref.weight, "split dW")


@pytest.mark.parametrize("backend", BACKENDS)
def test_split_conv0_with_nearest_index(backend):
    """The synthesis pattern: parent GEMM, then the child's embedding GEMM adding it by
    nearest_index, then ToRGB with the upsampled skip; gradients of the whole chain."""
    g0 = torch.Generator().manual_seed(3)
    rnd = lambda *s: torch.randn(*s, generator=g0)                      # noqa: E731
    F, E, C, N = 2, 5, 7, 6
    child, parent = (0, 6, 0, 10), (0, 3, 0, 5)
    idx = nearest_index(F, child, parent)
    Mp = F * 3 * 5
    P = dict(h=rnd(Mp, C), W_h=rnd(N, C) / 3, W_e=rnd(N, 2 * E) / 3, A=rnd(E, 2) * 2, b=rnd(F, E),
             bias=rnd(N) * 0.1, W_rgb=rnd(3, N), rgb_bias=rnd(3) * 0.1, img=rnd(Mp, 3))
    xs, ys = torch.arange(10) / 10 * 2 - 1, (5 - torch.arange(6)) / 6 * 2 - 1
    R = rnd(F * 60, 3)

    def chain(fn, T, extra):
        y = fn(T["W_h"], T["h"], **extra)
        x = fn(T["W_e"], None, emb_A=T["A"], emb_b=T["b"], xs=xs, ys=ys, pre_add=y,
               pre_index=idx, bias=T["bias"], act=True, **extra)
        return fn(T["W_rgb"], x, bias=T["rgb_bias"], post_add=T["img"], post_index=idx, **extra)

    leaves = {k: v.clone().requires_grad_(True) for k, v in P.items()}
    ref = torch.autograd.grad((chain(fmm_linear_reference_autograd, leaves, {}) * R).sum(),
                              list(leaves.values()))
    dev = device_for(backend)
    xs, ys, idx = xs.to(dev), ys.to(dev), idx.to(dev)
    leaves = {k: v.to(dev).clone().requires_grad_(True) for k, v in P.items()}
    out = chain(fmm_linear_autograd, leaves, dict(backend=backend))
    got = torch.autograd.grad((out * R.to(dev)).sum(), list(leaves.values()))
    for k, a, b in zip(P, got, ref):
        assert_close(a, b, f"{backend} chain d{k}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("precision", ["tf32", "bf16"])
def test_reduced_precision_grads(precision, backend):
    """tf32 / bf16 operands in the backward GEMMs (masks from the fp32 forward, so that only the
    backward's rounding is measured): each product has 2 rounded operands (relative error
    <= 2 * 2^-11 / 2 * 2^-8), bounding the relative L2 error of every gradient by that (x 2 for
    the regenerated sin / cos feeding a second GEMM in d A, d b)."""
    kw, g, ref, dev, d, y = _all_case_forward(backend)
    got = fmm_linear_backward(
        g.to(dev), d["weight"], d["x"], out=y, x_index=d["x_index"], emb_A=d["emb_A"],
        emb_b=d["emb_b"], xs=d["xs"], ys=d["ys"], pre_rows=d["pre_add"].shape[0],
        pre_index=d["pre_index"], has_bias=True, act=True, clamp=d["clamp"],
        post_rows=d["post_add"].shape[0], post_index=d["post_index"], precision=precision,
        backend=backend)
    bound = {"tf32": 2 * 2.0 ** -11, "bf16": 2 * 2.0 ** -8}[precision] * 2
    for k in GRAD_NAMES:
        assert_close(getattr(got, k), getattr(ref, k), f"{precision}/{backend} d{k}", bound=bound)
        # A GEMM with rounded operands is not the fp32 result: both backends round, also Triton's
        # interpreter for tf32 (kernels/_triton_common._mma rounds the operands itself).
        if k in ("weight", "x"):
            assert rel_l2(getattr(got, k), getattr(ref, k)) > 1e-6, f"{precision} d{k} not rounded"


# ---- fmm_linear: the closed form against finite differences (fp64) -------------------------------

class _Fp64Linear(torch.autograd.Function):
    """Forward: the reference formula in fp64; backward: the torch backend's closed form in fp64
    (linear_backward._backward_torch), so gradcheck tests the derivation itself."""

    @staticmethod
    def forward(ctx, weight, x, emb_A, emb_b, pre_add, bias, post_add, static):
        kw = dict(static)
        y = fmm_linear_reference_autograd(weight, x, emb_A=emb_A, emb_b=emb_b, pre_add=pre_add,
                                          bias=bias, x_index=kw["x_index"], xs=kw["xs"],
                                          ys=kw["ys"], pre_index=kw["pre_index"], act=kw["act"],
                                          clamp=kw["clamp"])
        out = y if post_add is None else y + (post_add if kw["post_index"] is None
                                              else post_add[kw["post_index"]])
        ctx.save_for_backward(weight, x, emb_A, emb_b, y)
        ctx.kw = kw
        ctx.rows = [None if t is None else t.shape[0] for t in (pre_add, post_add)]
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    def backward(ctx, g):
        weight, x, emb_A, emb_b, y = ctx.saved_tensors
        kw = ctx.kw
        E = 0 if emb_A is None else emb_A.shape[0]
        M = g.shape[0]
        F = 1 if emb_b is None else emb_b.shape[0]
        d = lb_mod._Dims(M, g.shape[1], 0 if x is None else x.shape[1], E, F,
                         1 if E == 0 else len(kw["ys"]), 1 if E == 0 else len(kw["xs"]),
                         torch.float64)
        a = lb_mod.FmmLinearBwdArgs(g, weight, x, y, kw["x_index"], emb_A, emb_b, kw["xs"], kw["ys"],
                                    ctx.rows[0], kw["pre_index"], ctx.has_bias, kw["act"], SQRT2,
                                    kw["clamp"], ctx.rows[1], kw["post_index"],
                                    (True,) * len(lb_mod.GRAD_NAMES), "fp32")
        r = lb_mod._backward_torch(a, d, lb_mod._needs(a))
        return r.weight, r.x, r.emb_A, r.emb_b, r.pre_add, r.bias, r.post_add, None


@pytest.mark.parametrize("name", ["gather_clamp", "b4_embedding", "split_conv0", "all", "act_post"])
def test_closed_form_backward_gradcheck_fp64(name):
    """torch.autograd.gradcheck (fp64, central differences) of the closed-form backward, and of
    the reference formula the fp32 tests compare with, at tiny shapes."""
    spec = dict(CASES[name])
    for k, v in (("M", 7), ("x_rows", 5), ("h", 3), ("w", 2), ("F", 2), ("E", 3), ("KX", 4),
                 ("N", 3), ("pre_rows", 4), ("post_rows", 5)):
        if k in spec:
            spec[k] = v
    kw = make_case(9, **spec)
    static = {"x_index": kw.get("x_index"), "xs": kw.get("xs"), "ys": kw.get("ys"),
              "pre_index": kw.get("pre_index"), "post_index": kw.get("post_index"),
              "act": bool(kw.get("act")), "clamp": kw.get("clamp")}
    if static["xs"] is not None:
        static["xs"], static["ys"] = static["xs"].double(), static["ys"].double()
    inputs = [None if kw.get(k) is None else kw[k].double().requires_grad_(True)
              for k in ("weight", "x", "emb_A", "emb_b", "pre_add", "bias", "post_add")]
    # Keep every pre-activation away from the lrelu kink and the clamp edges (finite differences
    # of size 1e-6 must not cross them).
    with torch.no_grad():
        y = fmm_linear_reference_autograd(*inputs[:2], emb_A=inputs[2], emb_b=inputs[3],
                                          pre_add=inputs[4], bias=inputs[5],
                                          **{k: static[k] for k in ("x_index", "xs", "ys",
                                                                    "pre_index")})
        assert y.abs().min() > 1e-4
        if static["clamp"] is not None:
            act = torch.nn.functional.leaky_relu(y, 0.2) * SQRT2
            assert (act.abs() - static["clamp"]).abs().min() > 1e-4
    assert torch.autograd.gradcheck(lambda *t: _Fp64Linear.apply(*t, static), inputs,
                                    eps=1e-6, atol=1e-7, rtol=1e-6)
    assert torch.autograd.gradcheck(
        lambda w, x, a, b, p, c, q: fmm_linear_reference_autograd(
            w, x, emb_A=a, emb_b=b, pre_add=p, bias=c, post_add=q, **static),
        inputs, eps=1e-6, atol=1e-7, rtol=1e-6)


# ---- scatter_rows --------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_scatter_rows(backend):
    """Sums of the rows sent to each destination, zero rows for destinations nobody reads;
    bitwise equal to a sequential fp32 sum in source order."""
    g = torch.Generator().manual_seed(2)
    src = torch.randn(97, 13, generator=g)
    index = torch.randint(0, 40, (97,), generator=g)
    index[index == 7] = 8                                               # row 7 receives nothing
    dev = device_for(backend)
    out = run_poisoned(lambda: scatter_rows(src.to(dev), index.to(dev), 41, backend=backend)).cpu()
    expect = torch.zeros(41, 13)
    for m in range(97):
        expect[index[m]] += src[m]
    assert_bitwise_equal(out, expect, f"{backend} scatter")
    assert (out[7] == 0).all() and (out[40] == 0).all()


# ---- fmm_modulate --------------------------------------------------------------------------------

MOD_SHAPES = [(1, 1, 2, 1), (3, 37, 70, 10), (2, 5, 130, 3), (2, 33, 7, 4)]
# (Cin = 1 with demodulation would be vacuous: W' = sign(U) has a zero gradient.)


def _mod_inputs(B, Cout, Cin, rank, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(Cout, Cin, generator=g), torch.randn(B, (Cin + Cout) * rank, generator=g) * 0.5,
            torch.randn(B, Cout, Cin, generator=g))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("demodulate", [True, False])
@pytest.mark.parametrize("shape", MOD_SHAPES, ids=lambda s: "B{}_Cout{}_Cin{}_r{}".format(*s))
def test_fmm_modulate_grads_match_autograd_reference(shape, demodulate, backend):
    """d weight and d styles of both backends, through fmm_modulate_autograd, against autograd on
    fmm_modulate_reference (fp32) and on the fp64 formula. Reduction lengths: Cin (norm, dL),
    Cout (dR), B (d weight), r: the same 1e-5 argument as for fmm_linear."""
    B, Cout, Cin, rank = shape
    W, s, G = _mod_inputs(*shape)
    ref = fmm_modulate_backward_reference(G, W, s, rank, demodulate)
    w64, s64 = W.double().requires_grad_(True), s.double().requires_grad_(True)
    L = s64[:, :Cout * rank].reshape(B, Cout, rank)
    R = s64[:, Cout * rank:].reshape(B, rank, Cin)
    U = w64 * (L @ R / math.sqrt(rank) + 1)
    out64 = U / (U.norm(dim=2, keepdim=True) + 1e-8) if demodulate else U
    ref64 = torch.autograd.grad(out64, (w64, s64), G.double())
    dev = device_for(backend)

    def run():
        w, st = W.to(dev).requires_grad_(True), s.to(dev).requires_grad_(True)
        out = fmm_modulate_autograd(w, st, rank, demodulate, backend=backend)
        dw, ds = torch.autograd.grad(out, (w, st), G.to(dev))
        return torch.cat([dw.flatten(), ds.flatten()]).cpu()

    flat = run_poisoned(run)
    dw, ds = flat[:W.numel()].view_as(W), flat[W.numel():].view_as(s)
    for what, got, a, b in (("d weight", dw, ref[0], ref64[0]), ("d styles", ds, ref[1], ref64[1])):
        assert_close(got, a, f"{backend} {shape} {what} vs fp32 autograd")
        assert_close(got, b, f"{backend} {shape} {what} vs fp64 autograd")


class _Fp64Modulate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight, styles, rank, demodulate):
        ctx.save_for_backward(weight, styles)
        ctx.cfg = (rank, demodulate)
        B, (Cout, Cin) = styles.shape[0], weight.shape
        L = styles[:, :Cout * rank].reshape(B, Cout, rank)
        R = styles[:, Cout * rank:].reshape(B, rank, Cin)
        U = weight * (L @ R / math.sqrt(rank) + 1)
        return U / (U.norm(dim=2, keepdim=True) + 1e-8) if demodulate else U

    @staticmethod
    def backward(ctx, g):
        weight, styles = ctx.saved_tensors
        dw, ds = mb_mod._backward_torch(g, weight, styles, *ctx.cfg)
        return dw, ds, None, None


@pytest.mark.parametrize("demodulate", [True, False])
def test_modulate_closed_form_gradcheck_fp64(demodulate):
    W, s, _ = _mod_inputs(2, 3, 5, 2, seed=4)
    inputs = (W.double().requires_grad_(True), s.double().requires_grad_(True))
    assert torch.autograd.gradcheck(lambda w, st: _Fp64Modulate.apply(w, st, 2, demodulate), inputs,
                                    eps=1e-6, atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_modulate_zero_row_is_finite(backend):
    """A weight row of zeros (|U_o| = 0): finite gradients (autograd on the formula gives NaN)."""
    W, s, G = _mod_inputs(2, 4, 6, 2)
    W[1] = 0
    dev = device_for(backend)
    dw, ds = fmm_modulate_backward(G.to(dev), W.to(dev), s.to(dev), 2, True, backend=backend)
    assert torch.isfinite(dw).all() and torch.isfinite(ds).all()


# ---- custom ops: autograd of the Triton forward ops, opcheck --------------------------------------

@needs_triton
@pytest.mark.parametrize("name", ["all", "act_post", "torgb_skip"])
def test_triton_forward_op_is_differentiable(name):
    """torch.ops.digan.fmm_linear has a registered autograd formula (the Triton backward)."""
    kw = _case(name)
    g = _grad_out(kw)
    ref = fmm_linear_backward_reference(g, **kw)

    def op(weight, x=None, *, precision, backend, **k):
        return torch.ops.digan.fmm_linear(
            weight, x, k.get("x_index"), k.get("emb_A"), k.get("emb_b"), k.get("xs"), k.get("ys"),
            k.get("pre_add"), k.get("pre_index"), k.get("bias"), k["act"], SQRT2, k.get("clamp"),
            k.get("post_add"), k.get("post_index"), torch.float32, precision)

    grads, _ = _autograd_grads(kw, g, "triton", device_for("triton"), fn=op)
    for k, t in grads.items():
        assert_close(t, getattr(ref, k), f"op {name} d{k}")


@needs_triton
def test_triton_modulate_op_is_differentiable():
    W, s, G = _mod_inputs(2, 5, 9, 3)
    ref = fmm_modulate_backward_reference(G, W, s, 3)
    dev = device_for("triton")
    w, st = W.to(dev).requires_grad_(True), s.to(dev).requires_grad_(True)
    out = torch.ops.digan.fmm_modulate(w, st, 3, True, torch.float32)
    dw, ds = torch.autograd.grad(out, (w, st), G.to(dev))
    assert_close(dw, ref[0], "op d weight")
    assert_close(ds, ref[1], "op d styles")


@needs_triton
def test_backward_ops_opcheck():
    dev = device_for("triton")
    kw = to_device(_case("split_conv0"), dev)
    g = _grad_out(kw).to(dev)
    y = fmm_linear(**kw, out_dtype=torch.float32, backend="triton")
    args = (g, kw["weight"], None, y, None, kw["emb_A"], kw["emb_b"], kw["xs"], kw["ys"],
            kw["pre_add"].shape[0], kw["pre_index"], True, True, SQRT2, None, -1, None,
            [True, False, True, True, True, True, False], "fp32")
    torch.library.opcheck(torch.ops.digan.fmm_linear_backward.default, args,
                          test_utils=("test_schema", "test_faketensor"))
    W, s, G = (t.to(dev) for t in _mod_inputs(2, 5, 9, 3))
    torch.library.opcheck(torch.ops.digan.fmm_modulate_backward.default, (G, W, s, 3, True),
                          test_utils=("test_schema", "test_faketensor"))


# ---- argument checks ----------------------------------------------------------------------------

def _bwd_args():
    kw = _case("conv")
    g = _grad_out(kw)
    y = fmm_linear(**kw, out_dtype=torch.float32)
    return g, kw, y


@pytest.mark.parametrize("change,match", [
    (dict(out=None), "needs `out`"),
    (dict(gain=0.0), "gain"),
    (dict(pre_rows=5), "pre_rows"),
    (dict(pre_index=torch.zeros(37, dtype=torch.int64)), "pre_index given without"),
    (dict(needs=("weight", "nope")), "unknown gradient"),
    (dict(grad_out=torch.randn(36, 3)), "rows"),
    (dict(precision="fp16"), "precision"),
])
def test_backward_value_errors(change, match):
    g, kw, y = _bwd_args()
    args = dict(grad_out=g, weight=kw["weight"], x=kw["x"], out=y, has_bias=True, act=True)
    args.update(change)
    with pytest.raises(ValueError, match=match):
        fmm_linear_backward(**args)


@needs_triton
def test_uint8_output_is_not_differentiable():
    kw = to_device(_case("torgb_skip"), device_for("triton"))
    w = kw["weight"].clone().requires_grad_(True)
    out = torch.ops.digan.fmm_linear(w, kw["x"], None, None, None, None, None, None, None,
                                     kw["bias"], False, SQRT2, None, kw["post_add"],
                                     kw["post_index"], torch.uint8, "fp32")
    with pytest.raises(RuntimeError):
        out.float().sum().backward()


def test_fmm_modulate_forward_is_unchanged():
    """The differentiable op's forward is fmm_modulate's (bitwise)."""
    W, s, _ = _mod_inputs(2, 5, 9, 3)
    assert_bitwise_equal(fmm_modulate_autograd(W, s, 3), fmm_modulate(W, s, 3), "forward")


# ---- compiling the backward kernels for a GPU without one ---------------------------------------

@pytest.mark.slow
@needs_triton
def test_backward_kernels_compile_for_hopper():
    """Every backward kernel variant the launchers launch (embedding, conv, upsampled conv with a
    gathered x, ToRGB with a scattered skip; every precision; the modulate backward) compiles
    for sm_90 (no GPU needed; see tests/kernel_utils.gpu_compile_stats). fp32-ieee GEMMs must not
    use tensor cores (tl.dot defaults to TF32 unless input_precision="ieee"); fp32 (3xTF32),
    tf32 and bf16 do;
    sin / cos come from libdevice, never sin.approx / cos.approx."""
    from tests.kernel_utils import gpu_compile_stats

    stats = gpu_compile_stats("backward", timeout=900)
    assert any(k.endswith(":_fmm_bwd_dw_kernel") for k in stats), sorted(stats)
    for name, counts in stats.items():
        assert counts["sin.approx"] == 0 and counts["cos.approx"] == 0, (name, counts)
        tensor_cores = counts["wgmma"] + counts["mma.sync"]
        if name.endswith((":_fmm_bwd_da_kernel", ":_fmm_bwd_dw_kernel")):
            assert (tensor_cores == 0) == name.startswith("fp32-ieee"), (name, counts)
        else:
            assert tensor_cores == 0, (name, counts)
