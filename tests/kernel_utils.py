"""Shared helpers of the kernel tests (tests/test_kernels_*.py).

Triton's interpreter (TRITON_INTERPRET=1) is turned on once, in `tests/conftest.py`'s
`pytest_configure`, unless the environment already says otherwise, before any test module imports
Triton's kernels (Triton decides between compiling and interpreting when a `@triton.jit` decorator
runs). Tensors then live on the CPU. With TRITON_INTERPRET=0 on a CUDA machine the same tests run
the compiled kernels on the GPU. Importing this module sets nothing.
"""
import contextlib
import os

import numpy as np
import pytest
import torch

from kernels._common import interpreter_enabled, triton_available

if interpreter_enabled():
    DEVICE = torch.device("cpu")
elif torch.cuda.is_available():
    DEVICE = torch.device("cuda")
else:
    DEVICE = None

U32 = 2.0 ** -24          # fp32 unit roundoff
U_BF16 = 2.0 ** -8        # bf16 unit roundoff (8 significant bits)
U_TF32 = 2.0 ** -11       # tf32 unit roundoff (11 significant bits), round to nearest

# Backends under test: torch always; triton when it imports and can run here.
BACKENDS = ["torch"] + (["triton"] if triton_available() and DEVICE is not None else [])
needs_triton = pytest.mark.skipif("triton" not in BACKENDS,
                                  reason="triton not installed, or neither interpreter nor CUDA")


def device_for(backend: str) -> torch.device:
    return DEVICE if backend == "triton" else torch.device("cpu")


# ---- a tl.dot whose rows do not depend on their place in the block (interpreter only) -----------

def fixed_order_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(..., M, K) @ (..., K, N) for fp32/fp16 operands: every product exact in fp64, summed over k
    = 0, 1, ..., K-1 in that order in fp64, rounded once to fp32. Each output element is the same
    sequence of elementwise IEEE operations wherever its row and column sit, so its bits depend
    only on its own row of `a` and column of `b` (numpy's matmul does not promise that: on
    OpenBLAS's Haswell kernel a row's bits change with its position in the block). The fp64 sum is
    at least as accurate as any fp32 accumulation order, so the kernels' error bounds still hold."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    acc = np.zeros(np.broadcast_shapes(a.shape[:-1] + (1,), b.shape[:-2] + (1, b.shape[-1])))
    for k in range(a.shape[-1]):
        acc += a64[..., :, k, None] * b64[..., None, k, :]        # (..., M, 1) * (..., 1, N)
    return acc.astype(np.float32)


def patch_interpreter_dot(monkeypatch) -> bool:
    """Under TRITON_INTERPRET=1, make the interpreter's tl.dot use `fixed_order_matmul` (for fp32
    or fp16 operands with an fp32 accumulator; anything else keeps the interpreter's own dot) for
    the rest of the test. The kernel tests assert properties of the kernels (a row's bits do not
    depend on the tile), not of the host's BLAS; compiled kernels keep their own dot and are held
    to the same claims by the `gpu` tests. Returns whether the patch is active."""
    if not interpreter_enabled() or not triton_available():
        return False
    from triton.runtime.interpreter import InterpreterBuilder, TensorHandle

    numpy_dot = InterpreterBuilder.create_dot
    exact = (np.float32, np.float16)

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        # As the interpreter's own dot, input_precision is not emulated (tf32 runs as fp32).
        if a.data.dtype not in exact or b.data.dtype not in exact or d.data.dtype != np.float32:
            return numpy_dot(self, a, b, d, input_precision, max_num_imprecise_acc)
        return TensorHandle(fixed_order_matmul(a.data, b.data) + d.data, d.dtype.scalar)

    create_dot.fixed_order = True
    monkeypatch.setattr(InterpreterBuilder, "create_dot", create_dot)
    return True


def interpreter_dot_is_fixed_order() -> bool:
    """True when the interpreter's tl.dot is the fixed-order one (inside `fixed_order_dot`)."""
    from triton.runtime.interpreter import InterpreterBuilder
    return getattr(InterpreterBuilder.create_dot, "fixed_order", False)


# ---- what the torch (CPU) path assumes of the host's BLAS and vector math ------------------------

def host_matmul_row_problems(K: int, N: int, dtype: torch.dtype) -> list:
    """The host property the torch path's tile identity rests on: CPU matmul (MKL / oneDNN) of
    64-byte aligned rows gives each row the same bits for any M >= MIN_GEMM_ROWS and any offset of
    the row. Returns descriptions of the violations (empty: the property holds here)."""
    from kernels import MIN_GEMM_ROWS
    g = torch.Generator().manual_seed(K + N)
    a = torch.randn(700, K, generator=g).to(dtype)
    w = torch.randn(N, K, generator=g).to(dtype)
    whole = a @ w.t()
    bits = torch.int16 if whole.element_size() == 2 else torch.int32     # compare bits, not values
    bad = []
    for off, m in [(0, MIN_GEMM_ROWS), (1, MIN_GEMM_ROWS), (13, 100), (64, 333)]:
        part = a[off:off + m].clone() @ w.t()
        if not torch.equal(part.view(bits), whole[off:off + m].view(bits)):
            bad.append(f"{dtype} matmul K={K} N={N}: rows {off}:{off + m} alone differ from the same rows in M=700")
    return bad


def host_sin_cos_problems() -> list:
    """The torch path's other assumption: torch.sin/cos (SLEEF's vectorised body vs the scalar
    tail) give an element the same bits wherever it sits in the tensor."""
    x = torch.randn(4099, generator=torch.Generator().manual_seed(0)) * 40
    whole = {"sin": torch.sin(x), "cos": torch.cos(x)}
    bad = []
    for off, n in [(0, 1), (1, 3), (5, 17), (7, 100), (3, 4096)]:
        part = x[off:off + n].clone()
        for name, fn in (("sin", torch.sin), ("cos", torch.cos)):
            if not torch.equal(fn(part).view(torch.int32), whole[name][off:off + n].view(torch.int32)):
                bad.append(f"torch.{name} of elements {off}:{off + n} alone differs from the same elements in 4099")
    return bad


HOST_MATMUL_SHAPES = [(32, 3), (256, 5), (512, 512)]


def host_math_problems() -> list:
    """All violations of the torch path's host assumptions (see test_platform_canary.py)."""
    bad = host_sin_cos_problems()
    for K, N in HOST_MATMUL_SHAPES:
        for dtype in (torch.float32, torch.bfloat16):
            bad += host_matmul_row_problems(K, N, dtype)
    return bad


@contextlib.contextmanager
def poisoned_empty(float_value: float, int_value: int):
    """While active, torch.empty / torch.empty_like / Tensor.new_empty return memory filled with a
    poison value (outputs are allocated with them), so that an element a kernel forgot to write
    is seen: run twice with two poisons and compare (see `run_poisoned`)."""
    orig_empty, orig_like, orig_new = torch.empty, torch.empty_like, torch.Tensor.new_empty

    def fill(t):
        if t.is_floating_point():
            t.fill_(float_value)
        elif t.dtype == torch.uint8:
            t.fill_(int_value)
        return t

    torch.empty = lambda *a, **k: fill(orig_empty(*a, **k))
    torch.empty_like = lambda *a, **k: fill(orig_like(*a, **k))
    torch.Tensor.new_empty = lambda self, *a, **k: fill(orig_new(self, *a, **k))
    try:
        yield
    finally:
        torch.empty, torch.empty_like, torch.Tensor.new_empty = orig_empty, orig_like, orig_new


def run_poisoned(fn):
    """fn() under two different poisons; the outputs must be bitwise equal (every element was
    written). Returns the output."""
    with poisoned_empty(float("nan"), 0x55):
        a = fn()
    with poisoned_empty(-1.0e30, 0xAA):
        b = fn()
    assert_bitwise_equal(a, b, "output depends on the poison: an element was not written")
    return a


def assert_bitwise_equal(a: torch.Tensor, b: torch.Tensor, what: str = ""):
    """Same shape, dtype and bytes; on failure report the number and first places of mismatches."""
    assert a.shape == b.shape and a.dtype == b.dtype, f"{what}: {a.shape}/{a.dtype} vs {b.shape}/{b.dtype}"
    a, b = a.detach().cpu(), b.detach().cpu()
    if a.dtype.is_floating_point:
        ia = a.contiguous().view(torch.int16 if a.element_size() == 2 else torch.int32)
        ib = b.contiguous().view(ia.dtype)
    else:
        ia, ib = a, b
    bad = (ia != ib).nonzero()
    if len(bad):
        first = [tuple(i.tolist()) for i in bad[:5]]
        vals = [(a[i].item(), b[i].item()) for i in first]
        raise AssertionError(f"{what}: {len(bad)} of {a.numel()} elements differ, first at {first}: {vals}")


def assert_within(actual: torch.Tensor, expected: torch.Tensor, bound: torch.Tensor, what: str = ""):
    """|actual - expected| <= bound elementwise (fp64), reporting the worst offender."""
    actual = actual.detach().cpu().double()
    expected = expected.detach().cpu().double()
    bound = torch.as_tensor(bound, dtype=torch.float64).expand_as(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} vs {expected.shape}"
    assert torch.isfinite(actual).all(), f"{what}: non-finite values in the output"
    err = (actual - expected).abs()
    ratio = err / bound.clamp_min(1e-300)
    worst = int(ratio.argmax())
    idx = tuple(int(i) for i in torch.unravel_index(torch.tensor(worst), ratio.shape))
    assert bool((err <= bound).all()), (
        f"{what}: {int((err > bound).sum())} of {err.numel()} elements out of bound; worst at {idx}: "
        f"got {actual[idx].item()!r}, expected {expected[idx].item()!r}, |err| {err[idx].item():.3e} "
        f"> bound {bound[idx].item():.3e}")


def assert_uint8_matches(actual: torch.Tensor, exact_value, slack):
    """uint8 `actual` against fp64 values before rounding (`exact_value`, clamped to [0, 255])
    known to within `slack`: equal to rint(value) wherever the value is farther than `slack`
    from a .5 rounding boundary, and within slack + 0.5 of it everywhere. Returns the number of
    elements checked exactly."""
    actual = actual.detach().cpu().double()
    v = torch.as_tensor(exact_value, dtype=torch.float64).clamp(0, 255)
    slack = torch.as_tensor(slack, dtype=torch.float64).expand_as(v)
    far = ((v - v.floor()) - 0.5).abs() > slack
    wrong = far & (actual != torch.round(v))
    assert not wrong.any(), (
        f"{int(wrong.sum())} uint8 values differ from rint away from rounding boundaries; first "
        f"(got, value): {list(zip(actual[wrong][:5].tolist(), v[wrong][:5].tolist()))}")
    off = (actual - v).abs() > slack + 0.5
    first = list(zip(actual[off][:5].tolist(), v[off][:5].tolist(), slack[off][:5].tolist()))
    assert not off.any(), (f"{int(off.sum())} uint8 values farther than slack + 0.5 from the value; "
                           f"first (got, value, slack): {first}")
    return int(far.sum())


# ---- compiling the kernels for a GPU without one ------------------------------------------------

def gpu_compile_stats(which: str, timeout: float = 600.0) -> dict:
    """Compile the Triton kernels of `which` ('linear', 'modulate', 'rgb') for sm_90 (Hopper) in a
    subprocess with TRITON_INTERPRET=0: no GPU is needed, only the triton wheel's compiler. Returns
    {variant: {ptx instruction: count}} so tests can check the generated code (e.g. no TF32 MMA in
    fp32 mode, no approximate sin)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    code = ("import json, tests.kernel_utils as ku; "
            f"print('@@' + json.dumps(ku._compile_stats({which!r})))")
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    r = subprocess.run([sys.executable, "-c", code], env=env, cwd=Path(__file__).resolve().parents[1],
                       capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"compiling {which} for sm_90 failed:\n{r.stderr[-4000:]}"
    return json.loads(r.stdout.split("@@", 1)[1])


_PTX_COUNTS = ("wgmma", "mma.sync", "sin.approx", "cos.approx", "fma.rn", "div.rn", "sqrt.rn",
               "cvt.rn.bf16")


def _compile(kernel, types: dict, constexprs: dict, **options) -> dict:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    names = kernel.arg_names
    sig = {n: ("constexpr" if n in constexprs else types[n]) for n in names}
    src = ASTSource(fn=kernel, signature=sig,
                    constexprs={(names.index(k),): v for k, v in constexprs.items()})
    ptx = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options).asm["ptx"]
    return {s: ptx.count(s) for s in _PTX_COUNTS}


def _compile_stats(which: str) -> dict:
    """Runs in the subprocess of gpu_compile_stats (TRITON_INTERPRET=0)."""
    stats = {}
    if which == "linear":
        from kernels import _linear_triton as L
        from kernels.linear import _triton_config
        ptr = dict(x_ptr="*fp32", x_index_ptr="*i64", w_ptr="*fp32", emb_a_ptr="*fp32",
                   emb_b_ptr="*fp32", xs_ptr="*fp32", ys_ptr="*fp32", pre_ptr="*fp32",
                   pre_index_ptr="*i64", bias_ptr="*fp32", post_ptr="*fp32", post_index_ptr="*i64",
                   out_ptr="*fp32", gain="fp32", clamp="fp32")
        ints = {n: "i32" for n in ("M", "N", "KX", "E", "TH", "TW", "stride_xm", "stride_wn",
                                   "stride_pre", "stride_post", "stride_om")}
        for precision, out, x in [("fp32", "*fp32", "*fp32"), ("tf32", "*fp32", "*fp32"),
                                  ("bf16", "*bf16", "*bf16"), ("fp32", "*u8", "*fp32")]:
            N = 3 if out == "*u8" else 512
            cfg = _triton_config(512, 128, N, precision)
            flags = dict(HAS_X=True, HAS_X_INDEX=True, HAS_EMB=True, HAS_PRE=True, HAS_PRE_INDEX=True,
                         HAS_BIAS=True, ACT=True, HAS_CLAMP=True, HAS_POST=True, HAS_POST_INDEX=True,
                         OUT_UINT8=out == "*u8", DOT_PRECISION="tf32" if precision == "tf32" else "ieee",
                         BF16_OPERANDS=precision == "bf16", INTERPRETER=False, ROUND_BF16_STORE=False,
                         BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"])
            stats[f"{precision}-{out[1:]}"] = _compile(
                L._fmm_linear_kernel, {**ptr, **ints, "out_ptr": out, "x_ptr": x}, flags,
                num_warps=cfg["num_warps"], num_stages=cfg["num_stages"], enable_fp_fusion=False)
    elif which == "modulate":
        from kernels import _modulate_triton as Mo
        stats["bf16"] = _compile(
            Mo._fmm_modulate_kernel,
            dict(weight_ptr="*fp32", styles_ptr="*fp32", out_ptr="*bf16", COUT="i32", CIN="i32",
                 stride_wo="i32", stride_sb="i32", sqrt_rank="fp32"),
            dict(RANK=10, RANK_PAD=16, DEMODULATE=True, ROUND_BF16_STORE=False, BLOCK_O=32, BLOCK_I=64),
            num_warps=4, enable_fp_fusion=False)
    elif which == "rgb":
        from kernels import _rgb_triton as R
        from kernels.rgb import YUV_COEFFS
        stats["to_uint8"] = _compile(R._to_uint8_kernel, dict(x_ptr="*fp32", out_ptr="*u8", NUMEL="i32"),
                                     dict(BLOCK=1024), num_warps=4, enable_fp_fusion=False)
        coeffs = {f"{p}_{c}": v for p in "YUV" for c, v in zip("RGB", YUV_COEFFS[p])}
        stats["yuv420"] = _compile(R._rgb_to_yuv420_kernel,
                                   dict(rgb_ptr="*u8", out_ptr="*u8", H="i32", W="i32"),
                                   dict(coeffs, BLOCK=256), num_warps=4, enable_fp_fusion=False)
    else:
        raise ValueError(which)
    return stats
