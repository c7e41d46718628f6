"""fmm_linear (fused modulated GEMM): Triton (interpreter) and torch paths against the torch
reference and an independent fp64 numpy statement of the spec; bitwise determinism across tiles;
index helper; argument checks; custom-op registration."""
import math
import sys
import zlib

import numpy as np
import pytest
import torch

from kernels import SQRT2, fmm_linear, nearest_index
from kernels._common import interpreter_enabled
from kernels.reference import fmm_linear_reference
from tests.kernel_utils import (
    BACKENDS,
    DEVICE,
    U32,
    U_BF16,
    assert_bitwise_equal,
    assert_uint8_matches,
    assert_within,
    device_for,
    fixed_order_matmul,
    gpu_compile_stats,
    interpreter_dot_is_fixed_order,
    needs_triton,
    run_poisoned,
)

linear_mod = sys.modules["kernels.linear"]

# Interpreter-mode tl.dot is a fixed-order sum here (see tests/conftest.fixed_order_dot): these
# tests check the kernel, not the host BLAS behind numpy's matmul.
pytestmark = pytest.mark.usefixtures("fixed_order_dot")

PRECISIONS = ["fp32", "tf32", "bf16"]
# Relative error of one product from rounding its two operands (worst case, per precision):
# bf16 rounds each operand to 8 significant bits (unit roundoff 2^-8, so 2 * 2^-8); tf32 keeps
# 11 bits, rounded to nearest by both backends (kernels/_triton_common._mma rounds before the
# truncating tensor-core dot), 2^-11 per operand (2 * 2^-11); fp32 operands are exact.
OPERAND_ERR = {"fp32": 0.0, "fp32-ieee": 0.0, "tf32": 2.0 ** -10, "bf16": 2.0 ** -7}
# Triton's fp32 is 3xTF32 (_mma): per product <= 2^-21 off the exact one (the dropped lo * lo
# term and the rounding of the lo parts; tests/test_kernels_tf32x3.py measures 2^-21.09), and
# its accumulator takes three dots per K step: 3K products, the lo ones <= 2^-10 |ab| together.
TF32X3_OPERAND_ERR = 2.0 ** -21


# ---- inputs and the fp64 formula ----------------------------------------------------------------

def make_case(seed, *, N, KX=0, E=0, F=1, h=1, w=1, M=None, x_rows=None, pre_rows=None,
              post_rows=None, bias=False, act=False, clamp=None, pre=False, post=False,
              x_dtype=torch.float32, w_dtype=torch.float32):
    """Random non-zero inputs of one call, as a kwargs dict for fmm_linear (CPU tensors)."""
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=g)                       # noqa: E731
    kw = {}
    if E:
        M = F * h * w
        kw.update(emb_A=rnd(E, 2) * 3.0, emb_b=rnd(F, E), xs=torch.rand(w, generator=g) * 3 - 1.5,
                  ys=torch.rand(h, generator=g) * 3 - 1.5)
    if KX:
        rows = x_rows or M
        kw["x"] = rnd(rows, KX).to(x_dtype)
        if x_rows:
            kw["x_index"] = torch.randint(0, x_rows, (M,), generator=g)
    K = KX + 2 * E
    kw["weight"] = (rnd(N, K) / math.sqrt(max(K, 1))).to(w_dtype)
    if pre:
        kw["pre_add"] = rnd(pre_rows or M, N)
        if pre_rows:
            kw["pre_index"] = torch.randint(0, pre_rows, (M,), generator=g)
    if post:
        kw["post_add"] = rnd(post_rows or M, N) * 0.5
        if post_rows:
            kw["post_index"] = torch.randint(0, post_rows, (M,), generator=g)
    if bias:
        kw["bias"] = rnd(N) * 0.5
    kw.update(act=act, clamp=clamp)
    return kw


def to_device(kw, device):
    return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}


def _gathered(kw, which):
    """kw['<which>_add'] in fp64, gathered by kw['<which>_index'] when there is one (which: 'pre', 'post')."""
    a = kw[f"{which}_add"].double().numpy()
    return a if kw.get(f"{which}_index") is None else a[kw[f"{which}_index"].numpy()]


def naive_fp64(kw, gain=SQRT2):
    """fp64 numpy statement of the spec. The phase is formed in fp32 exactly as the spec orders it
    (A0*x + A1*y + b, separate operations), then everything is fp64. Returns (y, bound terms):
    G = sum_k |a_k w_k| per output, Wtrig = sum of |w| over the sin/cos columns, and the
    magnitudes of the addends."""
    W = kw["weight"].double().numpy()
    N = W.shape[0]
    cols = []
    if kw.get("emb_A") is not None:
        A, b = kw["emb_A"].numpy(), kw["emb_b"].numpy()                  # float32
        xs, ys = kw["xs"].numpy(), kw["ys"].numpy()
        F, E = b.shape
        h, w = len(ys), len(xs)
        m = np.arange(F * h * w)
        f, r = np.divmod(m, h * w)
        i, j = np.divmod(r, w)
        phase = A[None, :, 0] * xs[j][:, None]                          # float32 products
        phase = phase + A[None, :, 1] * ys[i][:, None]
        phase = (phase + b[f]).astype(np.float64)
        trig = np.concatenate([np.sin(phase), np.cos(phase)], axis=1)
    else:
        E, trig = 0, None
    if kw.get("x") is not None:
        x = kw["x"].double().numpy()
        if kw.get("x_index") is not None:
            x = x[kw["x_index"].numpy()]
        cols.append(x)
    if trig is not None:
        cols.append(trig)
    if cols:
        a = np.concatenate(cols, axis=1)
        y = a @ W.T
        G = np.abs(a) @ np.abs(W).T
        Wtrig = np.broadcast_to(np.abs(W[:, W.shape[1] - 2 * E:]).sum(1), y.shape)
    else:
        M = kw["pre_add"].shape[0] if kw.get("pre_index") is None else len(kw["pre_index"])
        y = np.zeros((M, N))
        G = np.zeros_like(y)
        Wtrig = np.zeros_like(y)
    pre_abs = np.zeros_like(y)
    if kw.get("pre_add") is not None:
        p = _gathered(kw, "pre")
        y = y + p
        pre_abs = np.abs(p)
    if kw.get("bias") is not None:
        y = y + kw["bias"].double().numpy()
        pre_abs = pre_abs + np.abs(kw["bias"].double().numpy())
    scale = 1.0
    if kw.get("act"):
        y = np.where(y > 0, y, 0.2 * y) * gain
        scale = gain
    if kw.get("clamp") is not None:
        y = np.clip(y, -kw["clamp"], kw["clamp"])
    post_abs = np.zeros_like(y)
    if kw.get("post_add") is not None:
        q = _gathered(kw, "post")
        y = y + q
        post_abs = np.abs(q)
    return y, dict(G=G, Wtrig=Wtrig, pre_abs=pre_abs, post_abs=post_abs, scale=scale, K=W.shape[1])


def error_bound(y, t, precision, out_dtype, backend="torch"):
    """Worst-case |computed - exact| from the rounding model (unit roundoffs in kernel_utils):
      GEMM: operand rounding OPERAND_ERR * G; fp32 accumulation of K products (K + 2) u G
        (the standard gamma_K bound); Triton fp32 (3xTF32): 2^-21 G per product and 3K
        products accumulated, (3K + 2) u (1 + 2^-9) G; sin/cos within 2 ulp of 1: 4 u per |w|
        of the trig columns; bf16 torch path: GEMM result rounded to bf16 once, u_bf16 G.
      Epilogue: 2 fp32 roundings on the pre/bias adds, scaled by the gain; 3 more on the gain
        product, the post add and the store; the store's own rounding (fp32 or bf16) of |y|."""
    G, K = t["G"], t["K"]
    if backend == "triton" and precision == "fp32":
        gemm = (TF32X3_OPERAND_ERR + (3 * K + 2) * U32 * (1 + 2.0 ** -9)) * G + 4 * U32 * t["Wtrig"]
    else:
        gemm = (OPERAND_ERR[precision] + (K + 2) * U32) * G + 4 * U32 * t["Wtrig"]
    if precision == "bf16":
        gemm = gemm + U_BF16 * G
    out_u = U_BF16 if out_dtype == torch.bfloat16 else U32
    ay = np.abs(y)
    return (t["scale"] * (gemm + 2 * U32 * (G + t["pre_abs"])) + 3 * U32 * (ay + t["post_abs"])
            + out_u * ay + 1e-30)


# ---- accuracy against the fp64 formula ----------------------------------------------------------

CASES = {
    "x_M1_K3_N5": dict(M=1, KX=3, N=5),
    "x_M7_K17_N3_bias_act": dict(M=7, KX=17, N=3, bias=True, act=True),
    "x_M130_K48_N17_gather_pre_clamp": dict(M=130, KX=48, N=17, x_rows=40, pre=True, pre_rows=50,
                                            bias=True, act=True, clamp=0.7),
    "emb_M1_E4_N48": dict(E=4, F=1, h=1, w=1, N=48),
    "emb_M33_E8_N5_F3_pre_act": dict(E=8, F=3, h=1, w=11, N=5, pre=True, pre_rows=7, bias=True,
                                     act=True),
    "x_emb_M130_K5_E4_N17": dict(E=4, F=1, h=10, w=13, KX=5, N=17, x_rows=30, bias=True, act=True,
                                 clamp=1.1),
    "torgb_M33_K48_N3_post": dict(M=33, KX=48, N=3, bias=True, clamp=0.9, post=True, post_rows=9),
    "epilogue_only_M7_N5": dict(M=7, N=5, pre=True, bias=True, act=True, post=True),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("case", list(CASES))
def test_matches_fp64_formula(case, precision, backend):
    kw = make_case(zlib.crc32(case.encode()), **CASES[case])
    y64, terms = naive_fp64(kw)
    out_dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    dev = device_for(backend)
    out = run_poisoned(lambda: fmm_linear(**to_device(kw, dev), precision=precision, backend=backend))
    assert out.dtype == out_dtype and out.shape == y64.shape
    bound = error_bound(y64, terms, precision, out_dtype, backend)
    assert_within(out, torch.from_numpy(y64), torch.from_numpy(bound), f"{backend} vs fp64")
    # The reference obeys the torch bound (it is what the engine's parity tests trust).
    bound = error_bound(y64, terms, precision, out_dtype)
    ref = fmm_linear_reference(**kw, precision=precision)
    assert_within(ref, torch.from_numpy(y64), torch.from_numpy(bound), "reference vs fp64")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtypes", [(torch.bfloat16, torch.float32), (torch.float32, torch.bfloat16)])
def test_bf16_storage_inputs(dtypes, backend):
    """bf16 activations or a bf16 prepared weight in fp32 mode: upcast exactly, fp32 math."""
    x_dtype, w_dtype = dtypes
    kw = make_case(3, M=33, KX=17, N=5, bias=True, act=True, x_dtype=x_dtype, w_dtype=w_dtype)
    y64, terms = naive_fp64(kw)
    out = fmm_linear(**to_device(kw, device_for(backend)), precision="fp32", backend=backend)
    bound = error_bound(y64, terms, "fp32", torch.float32, backend)
    assert_within(out, torch.from_numpy(y64), torch.from_numpy(bound), f"{backend} bf16 storage")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_uint8_output(precision, backend):
    """ToRGB with out_uint8: rint((y + 1) * 127.5) in [0, 255], exact wherever y is farther from
    a rounding boundary than its error bound (127.5 * bound, plus the two fp32 ops)."""
    kw = make_case(11, E=4, F=3, h=3, w=11, KX=48, N=3, x_rows=20, bias=True, clamp=1.2, post=True,
                   post_rows=25)
    kw["weight"] = kw["weight"] * 2.0                    # spread y over [-1.x, 1.x]: clamps too
    y64, terms = naive_fp64(kw)
    v = (y64 + 1.0) * 127.5
    assert (v < 0).any() and (v > 255).any(), "test inputs should exercise the clamp"
    slack = (127.5 * error_bound(y64, terms, precision, torch.float32, backend)
             + 4 * U32 * (np.abs(v) + 127.5))
    out = run_poisoned(lambda: fmm_linear(**to_device(kw, device_for(backend)), out_uint8=True,
                                          precision=precision, backend=backend))
    assert out.dtype == torch.uint8
    exact = assert_uint8_matches(out, torch.from_numpy(v), torch.from_numpy(slack))
    if precision == "fp32":
        assert exact > 0.95 * out.numel()
    # Same as converting the float output with the same epilogue.
    flt = fmm_linear(**to_device(kw, device_for(backend)), out_dtype=torch.float32,
                     precision=precision, backend=backend)
    assert_bitwise_equal(out.cpu(), ((flt.cpu() + 1.0) * 127.5).clamp(0, 255).round().to(torch.uint8),
                         "uint8 epilogue vs float output converted")


def test_round_half_to_even():
    """Exact halves round to even, like torch.round (the documented rule), in both backends."""
    # (y + 1) * 127.5 can land exactly on k + 0.5 only for y >= 0 (below, y + 1 is too coarse).
    targets = torch.tensor([127.5, 128.5, 129.5, 130.5, 200.5, 201.5, 253.5, 254.5])
    ys = []
    for v in targets:                  # fp32 y within 256 ulps of v / 127.5 - 1, exact product
        base = (v / 127.5 - 1.0).reshape(1).view(torch.int32)
        cand = (base + torch.arange(-256, 257, dtype=torch.int32)).view(torch.float32)
        hit = cand[(cand + 1.0) * 127.5 == v]
        if len(hit):
            ys.append(hit[:1])
    ys = torch.cat(ys)
    assert len(ys) == len(targets), "could not build inputs landing exactly on .5"
    expect = torch.round((ys + 1.0) * 127.5)
    assert torch.equal(expect % 2, torch.zeros_like(expect)), "torch.round must give even values"
    kw = dict(weight=torch.ones(1, 0), pre_add=ys[:, None].clone(), out_uint8=True)   # no GEMM
    for backend in BACKENDS:
        out = fmm_linear(**to_device(kw, device_for(backend)), backend=backend).cpu()[:, 0]
        assert out.tolist() == expect.to(torch.uint8).tolist(), backend


# ---- determinism: rows do not depend on the tile ------------------------------------------------

def _tile_rows(frames, rect, full_rect, H, W):
    """Row numbers of a tile (frames x rect) inside the full tile (all frames x full_rect)."""
    i0, i1, j0, j1 = rect
    f = torch.arange(*frames)[:, None, None]
    i = torch.arange(i0, i1)[None, :, None] - full_rect[0]
    j = torch.arange(j0, j1)[None, None, :] - full_rect[2]
    return ((f * H + i) * W + j).reshape(-1)


def _parent_rect(rect):
    i0, i1, j0, j1 = rect
    return (i0 // 2, (i1 - 1) // 2 + 1, j0 // 2, (j1 - 1) // 2 + 1)


def _render(backend, precision, frames, rect, P):
    """Split conv0 + conv1 + ToRGB (float and uint8) for the child tile `rect` x `frames`,
    everything computed from the tile's own rows (as the engine does)."""
    dev = device_for(backend)
    full, pfull = P["rect"], _parent_rect(P["rect"])
    prect = _parent_rect(rect)
    ph, pw = pfull[1] - pfull[0], pfull[3] - pfull[2]
    prows = _tile_rows(frames, prect, pfull, ph, pw)
    h_par = P["h_par"][prows].contiguous()                             # parent features of the tile
    img_par = P["img_par"][prows].contiguous()
    idx = nearest_index(frames[1] - frames[0], rect, prect)
    i0, i1, j0, j1 = rect
    emb = dict(emb_A=P["A"], emb_b=P["b"][frames[0]:frames[1]],
               xs=P["xs"][j0 - full[2]:j1 - full[2]], ys=P["ys"][i0 - full[0]:i1 - full[0]])
    d = lambda t: t.to(dev)                                            # noqa: E731
    kw = dict(precision=precision, backend=backend)
    y_par = fmm_linear(d(P["W_h"]), d(h_par), out_dtype=torch.float32, **kw)
    x = fmm_linear(d(P["W_e"]), None, **{k: d(v) for k, v in emb.items()}, pre_add=y_par,
                   pre_index=d(idx), bias=d(P["bias"]), act=True, clamp=2.0, **kw)
    x = fmm_linear(d(P["W_1"]), x, bias=d(P["bias"]), act=True, **kw)
    rgb = dict(bias=d(P["rgb_bias"]), clamp=1.5, post_add=d(img_par), post_index=d(idx), **kw)
    img = fmm_linear(d(P["W_rgb"]), x, **rgb)
    u8 = fmm_linear(d(P["W_rgb"]), x, out_uint8=True, **rgb)
    return [t.cpu() for t in (y_par, x, img, u8)], prows


def _problem():
    """Child level 12 x 10 pixels at absolute rows -4..8, cols -2..8 (a zoom-out view: negative
    indices), 3 frames; parent features at half resolution; C = 17 channels, E = 8, N = 5."""
    g = torch.Generator().manual_seed(5)
    rnd = lambda *s: torch.randn(*s, generator=g)                      # noqa: E731
    F, rect, C, E, N = 3, (-4, 8, -2, 8), 17, 8, 5
    pr = _parent_rect(rect)
    Mp = F * (pr[1] - pr[0]) * (pr[3] - pr[2])
    return dict(rect=rect, F=F,
                A=rnd(E, 2) * 3, b=rnd(F, E), xs=torch.arange(-2, 8) / 10 * 2 - 1,
                ys=(9 - torch.arange(-4, 8)) / 12 * 2 - 1,
                h_par=rnd(Mp, C), img_par=rnd(Mp, 3) * 0.5,
                W_h=rnd(N, C) / 4, W_e=rnd(N, 2 * E) / 4, W_1=rnd(N, N) / 2, W_rgb=rnd(3, N),
                bias=rnd(N) * 0.1, rgb_bias=rnd(3) * 0.1)


TILES = [
    ((1, 2), (-3, -2, 5, 6)),       # one pixel of one frame: M = 1 (parent M = 1)
    ((0, 3), (-4, 3, -2, 1)),       # 7 x 3 at the negative corner: M = 63
    ((2, 3), (1, 8, 0, 8)),         # 7 x 8, last frame: M = 56
    ((0, 2), (-1, 8, -1, 7)),       # odd offsets: M = 144
]


def _check_tiles_bitwise_identical(backend, precision):
    P = _problem()
    F, rect = P["F"], P["rect"]
    H, W = rect[1] - rect[0], rect[3] - rect[2]
    full, _ = _render(backend, precision, (0, F), rect, P)
    for frames, sub in TILES:
        outs, prows = _render(backend, precision, frames, sub, P)
        rows = _tile_rows(frames, sub, rect, H, W)
        names = ["parent GEMM", "conv0 (emb + pre_add)", "conv1", "torgb + skip", "torgb uint8"]
        for name, t, f in zip(names, outs, full):
            assert_bitwise_equal(t, f[prows] if name == "parent GEMM" else f[rows],
                                 f"{backend}/{precision} {name}, tile {frames} {sub}")


# Interpreted Triton (its tl.dot made fixed-order) and the torch path (which rests on the host
# properties of test_platform_canary.py); compiled kernels in the gpu test below.
INTERPRETED_BACKENDS = ["torch"] + (["triton"] if "triton" in BACKENDS and interpreter_enabled() else [])


@pytest.mark.parametrize("backend", INTERPRETED_BACKENDS)
@pytest.mark.parametrize("precision", PRECISIONS)
def test_tiles_bitwise_identical(precision, backend, request):
    if backend == "triton":
        assert interpreter_dot_is_fixed_order(), "the fixed_order_dot fixture is not active"
    else:
        request.getfixturevalue("position_independent_host_math")
    _check_tiles_bitwise_identical(backend, precision)


@pytest.mark.gpu
@pytest.mark.parametrize("precision", PRECISIONS)
def test_tiles_bitwise_identical_compiled(precision):
    """The claim the engine's tiling rests on, for the compiled kernel and its own tl.dot: a
    row's reduction order, hence its bits, does not depend on the tile (configs never use M)."""
    assert DEVICE is not None and DEVICE.type == "cuda"
    _check_tiles_bitwise_identical("triton", precision)


def test_fixed_order_matmul_rows_independent_of_position():
    """The interpreter's replacement dot: a row's bits depend only on that row (any position, any
    number of rows), and it is within fp32 rounding of the fp64 product (|err| <= 2 u |a||b| +
    u |ab|: the fp64 sum of exact products errs by K 2^-53 |a||b|, far below one fp32 rounding)."""
    rng = np.random.default_rng(3)
    a = rng.standard_normal((130, 48)).astype(np.float32)
    b = rng.standard_normal((48, 17)).astype(np.float32)
    whole = fixed_order_matmul(a, b)
    for off, m in [(0, 1), (5, 3), (7, 64), (1, 129)]:
        assert np.array_equal(fixed_order_matmul(a[off:off + m], b).view(np.int32),
                              whole[off:off + m].view(np.int32)), (off, m)
    assert np.array_equal(fixed_order_matmul(a, b[:, 3:4]).view(np.int32), whole[:, 3:4].view(np.int32))
    exact = a.astype(np.float64) @ b.astype(np.float64)
    bound = 2 * U32 * (np.abs(a).astype(np.float64) @ np.abs(b)) + U32 * np.abs(exact)
    assert (np.abs(whole - exact) <= bound).all()


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("case", [
    # 270 rows in chunks of 6 and then 3 tile rows of 10 (60, 30: the last one padded)
    dict(E=8, F=3, h=9, w=10, KX=17, N=5, x_rows=100, pre=True, bias=True, act=True),
    # 84 rows in chunks of 5 and then 2 whole frames of 3 x 4 (60, 24: the last one padded)
    dict(E=4, F=7, h=3, w=4, N=17, pre=True, bias=True, act=True),
    # 270 rows of aligned x (used in place), chunks of 64 and a padded remainder of 14
    dict(M=270, KX=32, N=5, bias=True, act=True),
], ids=["emb_rows", "emb_frames", "x_direct"])
def test_torch_chunking_bitwise_identical(case, precision, monkeypatch, position_independent_host_math):
    """The torch path's row chunks (size and remainder) do not change any bit."""
    kw = make_case(7, **case)
    whole = fmm_linear(**kw, precision=precision, backend="torch")
    monkeypatch.setattr(linear_mod, "_TORCH_MAX_CHUNK_ROWS", 64)
    monkeypatch.setattr(linear_mod, "_TORCH_MIN_CHUNK_ROWS", 64)
    chunked = fmm_linear(**kw, precision=precision, backend="torch")
    assert_bitwise_equal(chunked, whole, "chunked vs whole")


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("K", [17, 512])
def test_torch_rows_independent_of_slice(K, precision, position_independent_host_math):
    """Rows of x sliced anywhere (unaligned starts, M = 1 ... 100) give the bits of the whole."""
    g = torch.Generator().manual_seed(K)
    x = torch.randn(300, K, generator=g)
    W = torch.randn(5, K, generator=g) / math.sqrt(K)
    whole = fmm_linear(W, x, precision=precision, backend="torch")
    for off, m in [(0, 1), (1, 1), (3, 7), (5, 15), (1, 64), (7, 100), (0, 300)]:
        part = fmm_linear(W, x[off:off + m], precision=precision, backend="torch")
        assert_bitwise_equal(part, whole[off:off + m], f"K={K} rows {off}:{off + m}")


# ---- nearest_index ------------------------------------------------------------------------------

@pytest.mark.parametrize("child,parent", [
    ((0, 4, 0, 6), (0, 2, 0, 3)),
    ((-5, 3, -2, 1), (-3, 2, -1, 1)),        # negative (zoom-out) rects
    ((3, 4, -1, 0), (0, 4, -2, 2)),          # parent rect larger than needed
])
def test_nearest_index(child, parent):
    F = 2
    idx = nearest_index(F, child, parent)
    ph, pw = parent[1] - parent[0], parent[3] - parent[2]
    expect = [f * ph * pw + (math.floor(i / 2) - parent[0]) * pw + (math.floor(j / 2) - parent[2])
              for f in range(F) for i in range(child[0], child[1]) for j in range(child[2], child[3])]
    assert idx.dtype == torch.int64 and idx.tolist() == expect


def test_nearest_index_errors():
    with pytest.raises(ValueError, match="does not contain"):
        nearest_index(1, (-5, 3, 0, 2), (-2, 2, 0, 1))
    with pytest.raises(ValueError, match="empty"):
        nearest_index(1, (0, 0, 0, 2), (0, 1, 0, 1))
    with pytest.raises(ValueError, match="ints"):
        nearest_index(1, (0, 2.0, 0, 2), (0, 1, 0, 1))


# ---- argument checks ----------------------------------------------------------------------------

def _good():
    return make_case(1, E=4, F=1, h=2, w=3, KX=5, N=3, pre=True, pre_rows=4, bias=True)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("change,match", [
    (dict(weight=torch.randn(3, 12)), "columns"),
    (dict(x=torch.randn(6, 5).double()), "dtype"),
    (dict(x=torch.randn(7, 5)), "rows"),
    (dict(x=torch.randn(6, 5, device="meta")), "device"),
    (dict(emb_b=None), "needs all of"),
    (dict(emb_A=torch.randn(4, 3)), "shape"),
    (dict(pre_index=torch.tensor([0, 1, 2, 3, 4, 0])), "outside"),
    (dict(pre_index=torch.zeros(6, dtype=torch.int32)), "dtype"),
    (dict(bias=torch.randn(4)), "shape"),
    (dict(clamp=-1.0), "clamp"),
    (dict(precision="fp16"), "precision"),
    (dict(out_dtype=torch.float16), "out_dtype"),
    (dict(x=torch.randn(5, 6).t()), "stride"),
    (dict(backend="cuda"), "backend"),
])
def test_value_errors(change, match, backend):
    kw = _good()
    kw.update(change)
    kw.setdefault("backend", backend)
    with pytest.raises(ValueError, match=match):
        fmm_linear(**kw)


def test_triton_backend_needs_cuda_or_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="CUDA"):
        fmm_linear(**_good(), backend="triton")


def test_auto_backend_on_cpu_is_torch():
    kw = _good()
    assert_bitwise_equal(fmm_linear(**kw), fmm_linear(**kw, backend="torch"), "auto on CPU")


# ---- custom op ----------------------------------------------------------------------------------

def _op_args(kw):
    g = kw.get
    return (g("weight"), g("x"), g("x_index"), g("emb_A"), g("emb_b"), g("xs"), g("ys"), g("pre_add"),
            g("pre_index"), g("bias"), bool(g("act")), SQRT2, g("clamp"), g("post_add"),
            g("post_index"), torch.float32, "fp32")


def test_custom_op_fake_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode
    assert hasattr(torch.ops.digan, "fmm_linear")
    with FakeTensorMode():
        kw = _good()
        out = torch.ops.digan.fmm_linear(*_op_args(kw))
    assert out.shape == (6, 3) and out.dtype == torch.float32


@pytest.mark.slow   # ~5 s: torch.library.opcheck / torch.compile tracing, not the kernel math
@needs_triton
def test_custom_op_opcheck():
    kw = to_device(_good(), device_for("triton"))
    torch.library.opcheck(torch.ops.digan.fmm_linear.default, _op_args(kw))


@pytest.mark.slow   # ~5 s: torch.library.opcheck / torch.compile tracing, not the kernel math
@needs_triton
def test_torch_compile_traces_the_op():
    """torch.compile(fullgraph=True) traces through the dispatch and the custom ops (fake impls)."""
    from kernels import to_uint8
    kw = to_device(make_case(2, M=33, KX=17, N=3, pre=True, pre_rows=10, bias=True, act=True),
                   device_for("triton"))

    def render(kw):
        return to_uint8(fmm_linear(**kw, backend="triton"), backend="triton")

    compiled = torch.compile(render, fullgraph=True, backend="aot_eager")
    assert_bitwise_equal(compiled(kw), render(kw), "compiled vs eager")


@pytest.mark.slow
@needs_triton
def test_compiles_for_hopper():
    """The kernel compiles for sm_90 (no GPU needed). fp32-ieee mode must not use tensor cores
    (fp32 tl.dot defaults to TF32 on NVIDIA unless input_precision="ieee"); fp32 (3xTF32), tf32
    and bf16 do use them; no approximate sin.approx/cos.approx."""
    stats = gpu_compile_stats("linear")
    for variant, counts in stats.items():
        assert counts["sin.approx"] == 0 and counts["cos.approx"] == 0, variant
        tensor_cores = counts["wgmma"] + counts["mma.sync"]
        assert (tensor_cores == 0) == variant.startswith("fp32-ieee"), (variant, counts)
