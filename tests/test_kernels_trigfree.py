"""The trig-free coordinate embedding (kernels/linear.py, DESIGN §7): tables, angle-addition
operand and folded per-frame weights against fp64, fmm_linear in both backends (Triton in the
interpreter) against the exact fp64 statement at phases up to ~30, chunking invariance of the torch
path, bf16 vs fp32 PSNR, and no sin/cos left in the GEMM kernels.

"Exact statement": sin/cos of A0*x + A1*y + b evaluated in fp64 from the fp32 inputs (the products
are exact in fp64), everything else in fp64. The old direct formulation (sin/cos of the phase
rounded in fp32) is off by up to ulp(phase) ~ 16 u at |phase| ~ 10, 32 u at ~30 (u = 2^-24): the
elementwise bounds below are tight enough that it fails them, which a test checks (teeth); the
GEMM-level bounds are worst-case sums, which random rounding errors never approach.
"""
import inspect
import math
import sys

import numpy as np
import pytest
import torch

from kernels import fmm_linear
from kernels.linear import emb_tables, fold_frame_weights, trig_operand_
from kernels.reference import fmm_linear_reference
from tests.kernel_utils import BACKENDS, U32, U_BF16, assert_bitwise_equal, assert_within, device_for, run_poisoned
from tests.test_kernels_fmm_linear import OPERAND_ERR, make_case, to_device

linear_mod = sys.modules["kernels.linear"]
pytestmark = pytest.mark.usefixtures("fixed_order_dot")

SQRT2 = math.sqrt(2.0)
# Error bounds derived in kernels/linear.py's docstring, in units of u = 2^-24 (a rounding of a
# value below 1 in magnitude is at most u/2 absolute, of any other value x at most u |x|):
TABLE_ERR = 0.5                  # fp64 sin/cos of the exact term, rounded once to fp32
OPERAND_ERR_U = SQRT2 + 2.0      # sin/cos(X+Y): table errors x (|s|+|c| <= sqrt2) + u/2 + u/2 for
#                                  the products + u for the sum (it may round to just above 1)
FOLD_ERR_U = 2.5                 # W' per unit of |W_sin| + |W_cos|: tables u/2, 2 products and
#                                  the sum u each (relative)
EMB_ERR_U = (OPERAND_ERR_U + FOLD_ERR_U) * SQRT2   # one frequency, per unit |W_sin| + |W_cos|: 8.4


def _phase_inputs(seed, E, F, h, w, amp=12.0, bamp=6.0):
    """emb_A uniform in [-amp, amp]^2, b in [-bamp, bamp], coordinates in [-1, 1): phases up to
    about 2 * amp + bamp (the official 64px weights reach 10.9; `amp` 12 gives ~30)."""
    g = torch.Generator().manual_seed(seed)
    A = torch.rand(E, 2, generator=g) * (2 * amp) - amp
    b = torch.rand(F, E, generator=g) * (2 * bamp) - bamp
    xs = torch.arange(w, dtype=torch.float32) / w * 2 - 1
    ys = (h - 1 - torch.arange(h, dtype=torch.float32)) / h * 2 - 1
    return A, b, xs, ys


def _exact_phase(A, b, xs, ys):
    """(F, h, w, E) fp64 phase of the fp32 inputs, exact but for fp64's own rounding (1e-16)."""
    A, b = A.double(), b.double()
    return (A[:, 0] * xs.double()[None, None, :, None] + A[:, 1] * ys.double()[None, :, None, None]
            + b[:, None, None, :])


def _fp32_phase(A, b, xs, ys):
    """The old statement's phase, rounded in fp32 in the spec's order (A0*x + A1*y) + b."""
    return (A[:, 0] * xs[None, None, :, None] + A[:, 1] * ys[None, :, None, None]) + b[:, None, None, :]


# ---- the three pieces -----------------------------------------------------------------------------

def test_tables_are_correctly_rounded():
    A, b, xs, ys = _phase_inputs(1, E=37, F=5, h=19, w=23)
    tx, ty, tb = emb_tables(A, xs, ys, b)
    assert tx.shape == (23, 74) and ty.shape == (19, 74) and tb.shape == (5, 74)
    assert tx.dtype == ty.dtype == tb.dtype == torch.float32
    for t, term in ((tx, xs.double()[:, None] * A[:, 0].double()),
                    (ty, ys.double()[:, None] * A[:, 1].double()), (tb, b.double())):
        want = torch.cat([term.sin(), term.cos()], 1)
        # half an ulp of a value in [-1, 1] is at most u/2, plus fp64's sin error (~1e-16)
        assert_within(t, want, TABLE_ERR * U32 + 1e-15, "table")


def test_operand_within_bound_and_old_formula_is_not():
    A, b, xs, ys = _phase_inputs(2, E=64, F=3, h=32, w=32)
    tx, ty, _ = emb_tables(A, xs, ys, b)
    h, w, E = 32, 32, 64
    s, c = torch.empty(h * w, E), torch.empty(h * w, E)
    trig_operand_(tx, ty, s, c, torch.empty(2, h * w, E))
    P = _exact_phase(A, torch.zeros(1, E), xs, ys)[0].reshape(h * w, E)       # X + Y
    bound = OPERAND_ERR_U * U32
    assert_within(s, P.sin(), bound, "sin(X+Y)")
    assert_within(c, P.cos(), bound, "cos(X+Y)")
    # The full phase by a second angle addition (the backward's operand): operand error times
    # |sin B| + |cos B| <= sqrt2, tb's u/2 times |s| + |c| <= sqrt2, and the roundings u/2 + u/2 + u.
    _, _, tb = emb_tables(A, xs, ys, b)
    sb, cb = tb[:, None, :E], tb[:, None, E:]
    s3, c3 = s[None] * cb + c[None] * sb, c[None] * cb - s[None] * sb
    full = _exact_phase(A, b, xs, ys).reshape(3, h * w, E)
    bound3 = (OPERAND_ERR_U * SQRT2 + TABLE_ERR * SQRT2 + 2.0) * U32
    assert_within(s3, full.sin(), bound3, "sin(X+Y+B)")
    assert_within(c3, full.cos(), bound3, "cos(X+Y+B)")
    # The old formula exceeds that bound at these phases (|phase| up to ~30).
    assert full.abs().max() > 25
    old = _fp32_phase(A, b, xs, ys).reshape(3, h * w, E).sin().double()
    assert (old - full.sin()).abs().max() > 4 * bound3


def test_folded_weights_identity():
    """sum_e sin(P) W'_sin + cos(P) W'_cos = sum_e sin(P+B) W_sin + cos(P+B) W_cos."""
    A, b, xs, ys = _phase_inputs(3, E=40, F=4, h=6, w=7)
    g = torch.Generator().manual_seed(3)
    W = torch.randn(9, 80, generator=g)
    tx, ty, tb = emb_tables(A, xs, ys, b)
    wf = fold_frame_weights(W, tb)                                           # (F, N, 2E)
    assert wf.shape == (4, 9, 80) and wf.dtype == torch.float32
    # fp64 reference of the folding from the exact B
    B = b.double()
    ws, wc = W.double()[None, :, :40], W.double()[None, :, 40:]
    sB, cB = B.sin()[:, None], B.cos()[:, None]
    want = torch.cat([ws * cB - wc * sB, ws * sB + wc * cB], 2)
    scale = (W[:, :40].abs() + W[:, 40:].abs()).double().repeat(1, 2)[None]  # |W_sin| + |W_cos|
    assert_within(wf, want, FOLD_ERR_U * U32 * scale + 1e-30, "folded weights")
    # The identity itself, in fp64 from the exact phase (it is exact in real arithmetic).
    P = _exact_phase(A, torch.zeros(1, 40), xs, ys)[0].reshape(-1, 40)       # (hw, E)
    full = _exact_phase(A, b, xs, ys).reshape(4, -1, 40)
    lhs = torch.einsum("me,fne->fmn", P.sin(), want[:, :, :40]) + torch.einsum(
        "me,fne->fmn", P.cos(), want[:, :, 40:])
    rhs = full.sin() @ W.double()[:, :40].t() + full.cos() @ W.double()[:, 40:].t()
    assert (lhs - rhs).abs().max() < 1e-12


# ---- fmm_linear against the exact statement -----------------------------------------------------

def _exact_y(kw):
    """fp64 y of the whole op with the exact phase, and G = sum |a||w| over the x part."""
    W = kw["weight"].double()
    phase = _exact_phase(kw["emb_A"], kw["emb_b"], kw["xs"], kw["ys"])
    E = phase.shape[-1]
    trig = torch.cat([phase.sin(), phase.cos()], -1).reshape(-1, 2 * E)
    parts = [trig]
    if kw.get("x") is not None:
        x = kw["x"].double()
        parts.insert(0, x if kw.get("x_index") is None else x[kw["x_index"]])
    a = torch.cat(parts, 1)
    y = a @ W.t()
    Gx = (a[:, :-2 * E].abs() @ W[:, :-2 * E].abs().t()) if len(parts) == 2 else torch.zeros_like(y)
    Wtrig = W[:, -2 * E:].abs().sum(1).expand_as(y)
    if kw.get("pre_add") is not None:
        p = kw["pre_add"].double()
        y = y + (p if kw.get("pre_index") is None else p[kw["pre_index"]])
    if kw.get("bias") is not None:
        y = y + kw["bias"].double()
    gain = 1.0
    if kw.get("act"):
        y = torch.where(y > 0, y, 0.2 * y) * SQRT2
        gain = SQRT2
    return y, Gx, Wtrig, gain


def _bound(y, Gx, Wtrig, gain, K, precision, pre_abs):
    """|computed - exact|: GEMM over operands whose abs sum is <= G = Gx + sqrt2 Wtrig (the folded
    products: (|sin P| + |cos P|)(|W'_sin| + |W'_cos|) <= sqrt2 (|W_sin| + |W_cos|) per frequency, the
    direct ones <= that too), rounding of the operands (OPERAND_ERR per product), fp32 accumulation
    gamma_K ~ (K + 2) u, the embedding's own EMB_ERR_U u per unit trig weight, and for the bf16
    torch path the GEMM result rounded to bf16; then 2 roundings of the pre/bias adds, the gain
    product and the store (bf16 or fp32)."""
    G = Gx + SQRT2 * Wtrig
    gemm = (OPERAND_ERR[precision] + (K + 2) * U32) * G + EMB_ERR_U * U32 * Wtrig
    if precision == "bf16":
        gemm = gemm + U_BF16 * G
    out_u = U_BF16 if precision == "bf16" else U32
    return gain * (gemm + 2 * U32 * (G + pre_abs)) + 2 * U32 * y.abs() + out_u * y.abs() + 1e-30


CASES = {
    # b4 at phases ~30: E > BLOCK_K with a remainder, 3 frames of an odd 5 x 7 tile
    "emb_only": dict(E=40, F=3, h=5, w=7, N=9, bias=True, act=True),
    # split conv0's child: embedding + gathered pre_add, one frame of 9 x 8 (more than a block)
    "emb_pre": dict(E=16, F=1, h=9, w=8, N=17, pre=True, pre_rows=30, bias=True),
    # x and the embedding in one GEMM (unsplit conv0), 2 frames
    "x_emb": dict(E=8, F=2, h=4, w=6, KX=19, N=5, x_rows=20, bias=True, act=True),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("precision", ["fp32", "tf32", "bf16"])
@pytest.mark.parametrize("case", list(CASES))
def test_fmm_linear_matches_exact_statement(case, precision, backend):
    cfg = CASES[case]
    kw = make_case(sum(map(ord, case)), **cfg)
    kw["emb_A"], kw["emb_b"], kw["xs"], kw["ys"] = _phase_inputs(
        len(case), cfg["E"], cfg["F"], cfg["h"], cfg["w"])
    y64, Gx, Wtrig, gain = _exact_y(kw)
    pre_abs = torch.zeros_like(y64)
    if kw.get("pre_add") is not None:
        p = kw["pre_add"].double().abs()
        pre_abs = p if kw.get("pre_index") is None else p[kw["pre_index"]]
    if kw.get("bias") is not None:
        pre_abs = pre_abs + kw["bias"].double().abs()
    K = kw["weight"].shape[1]
    bound = _bound(y64, Gx, Wtrig, gain, K, precision, pre_abs)
    dev = device_for(backend)
    out = run_poisoned(lambda: fmm_linear(**to_device(kw, dev), precision=precision, backend=backend))
    assert_within(out, y64, bound, f"{backend}/{precision} vs exact fp64")
    ref = fmm_linear_reference(**kw, precision=precision)
    assert_within(ref, y64, bound, f"reference/{precision} vs exact fp64")


@pytest.mark.parametrize("precision", ["fp32", "tf32", "bf16"])
def test_torch_fold_groups_and_blocks_bitwise_identical(precision, monkeypatch):
    """The torch path's frame groups (folded weights held at once) and blocks of tile rows do not
    change a bit: 7 frames of 9 x 10 with x, whole vs 1-frame groups and 2-row blocks."""
    kw = make_case(5, E=12, F=7, h=9, w=10, KX=6, N=5, x_rows=50, pre=True, bias=True, act=True)
    whole = fmm_linear(**kw, precision=precision, backend="torch")
    monkeypatch.setattr(linear_mod, "_TORCH_FOLD_BYTES", 1)
    monkeypatch.setattr(linear_mod, "_TORCH_MAX_CHUNK_ROWS", 20)
    monkeypatch.setattr(linear_mod, "_TORCH_MIN_CHUNK_ROWS", 20)
    parts = fmm_linear(**kw, precision=precision, backend="torch")
    assert_bitwise_equal(parts, whole, "fold groups / row blocks vs whole")


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradients_at_large_phases_match_fp64(backend):
    """Every gradient of the training op (fmm_linear_autograd: the trig-free forward and backward
    kernels) at phases up to ~30 against autograd through the plain statement in fp64 (exact
    phase). Relative L2 <= 1e-5 per tensor, the bar of tests/test_kernels_backward.py (sums of
    <= 105 fp32 terms: ~sqrt(n) u = 6e-7 typical; the embedding adds ~8 u per unit weight)."""
    from kernels.linear_backward import fmm_linear_autograd
    from kernels.reference import fmm_linear_backward_reference
    from tests.test_kernels_backward import assert_close
    kw = make_case(12, E=37, F=3, h=5, w=7, KX=9, N=6, x_rows=40, pre=True, pre_rows=20,
                   bias=True, act=True)
    kw["emb_A"], kw["emb_b"], kw["xs"], kw["ys"] = _phase_inputs(12, 37, 3, 5, 7)
    assert _exact_phase(kw["emb_A"], kw["emb_b"], kw["xs"], kw["ys"]).abs().max() > 25
    g = torch.randn(105, 6, generator=torch.Generator().manual_seed(2))
    names = ("weight", "x", "emb_A", "emb_b", "pre_add", "bias")
    ref = fmm_linear_backward_reference(
        g.double(), **{k: (v.double() if isinstance(v, torch.Tensor) and v.is_floating_point()
                           else v) for k, v in kw.items()})
    dev = device_for(backend)
    kd = to_device(kw, dev)
    leaves = {k: kd[k].clone().requires_grad_(True) for k in names}
    y = fmm_linear_autograd(**{**kd, **leaves}, backend=backend)
    grads = torch.autograd.grad(y, [leaves[k] for k in names], g.to(dev))
    for k, got in zip(names, grads):
        assert_close(got.cpu(), getattr(ref, k), f"{backend} d{k}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_bf16_psnr_vs_fp32(backend):
    """A b4-like chain at the official phase range: embedding layer (E = 64 -> 32 channels, lrelu),
    a 32 -> 32 layer, ToRGB to uint8, 2 frames of 32 x 32. bf16 vs fp32 uint8 PSNR >= 40 dB."""
    g = torch.Generator().manual_seed(8)
    A, b, xs, ys = _phase_inputs(8, E=64, F=2, h=32, w=32, amp=5.0, bamp=3.0)
    W_e = torch.randn(32, 128, generator=g) / math.sqrt(128)
    W_1 = torch.randn(32, 32, generator=g) / math.sqrt(32)
    W_rgb = torch.randn(3, 32, generator=g) / math.sqrt(32) * 0.5
    bias = torch.randn(32, generator=g) * 0.1
    dev = device_for(backend)
    d = lambda t: t.to(dev)                                              # noqa: E731
    frames = {}
    for precision in ("fp32", "bf16"):
        kw = dict(precision=precision, backend=backend)
        x = fmm_linear(d(W_e), None, emb_A=d(A), emb_b=d(b), xs=d(xs), ys=d(ys), bias=d(bias),
                       act=True, **kw)
        x = fmm_linear(d(W_1), x, bias=d(bias), act=True, **kw)
        frames[precision] = fmm_linear(d(W_rgb), x, out_uint8=True, **kw).cpu().double()
    f32 = frames["fp32"]
    assert f32.std() > 20                                                # real content
    mse = (frames["bf16"] - f32).square().mean().item()
    psnr = 10 * math.log10(255.0 ** 2 / max(mse, 1e-12))
    print(f"{backend}: bf16 vs fp32 uint8 PSNR {psnr:.1f} dB")
    assert psnr >= 40.0


def test_no_sin_cos_in_the_gemm_kernel_source():
    """The forward and backward GEMM kernels evaluate no sin/cos (the compiled PTX is checked by
    kernels/compile_check.py; this is the cheap source-level guard)."""
    from kernels import _linear_backward_triton as B
    from kernels import _linear_triton as L
    from kernels import _triton_common as C
    for kernel in (L._fmm_linear_kernel, C._angle_add, C._trig_xy, C._emb_mma, B._fmm_bwd_da_kernel,
                   B._fmm_bwd_dw_kernel):
        assert not _trig_calls(kernel), kernel.fn.__name__


def _trig_calls(kernel):
    """sin/cos calls (tl.sin, libdevice.sin, _sin_cos, ...) in a @triton.jit function's code,
    comments and strings left out."""
    import io
    import tokenize
    src = inspect.getsource(kernel.fn)
    toks = [t for t in tokenize.generate_tokens(io.StringIO(src).readline)
            if t.type not in (tokenize.COMMENT, tokenize.STRING)]
    return [f"{a.string}{b.string}" for a, b in zip(toks, toks[1:])
            if a.type == tokenize.NAME and b.string == "("
            and a.string in ("sin", "cos", "sinf", "cosf", "_sin_cos", "sincos")]


def test_tables_cost_is_per_column_row_frame():
    """The embedding of F frames of h x w needs (w + h + F) * 2E sin/cos values, not F*h*w*2E."""
    A, b, xs, ys = _phase_inputs(9, E=5, F=3, h=4, w=6)
    tx, ty, tb = emb_tables(A, xs, ys, b)
    assert tx.numel() + ty.numel() + tb.numel() == (6 + 4 + 3) * 10
    assert np.isfinite(torch.cat([tx, ty, tb]).numpy()).all()
