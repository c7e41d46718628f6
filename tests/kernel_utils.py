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
    """Compile, for sm_90 (Hopper), the Triton kernel variants that the real launchers of `which`
    ('linear', 'modulate', 'rgb', 'backward') launch, in a subprocess with TRITON_INTERPRET=0: no
    GPU is needed, only the triton wheel's compiler (kernels/compile_check.py's stand-in driver:
    the launchers run on CPU tensors, the binder specialises as on a GPU, nothing is launched).
    Returns {variant: {ptx instruction: count}} so tests can check the generated code (e.g. no
    tensor-core MMA in fp32-ieee mode, no approximate sin). Variants are named '<launch>' ('<precision>-<layer>'
    for 'linear'), or '<launch>:<kernel>' for 'backward' (one launch runs several kernels)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    code = ("import json, tests.kernel_utils as ku; "
            f"print('@@' + json.dumps(ku._launched_stats({which!r})))")
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    r = subprocess.run([sys.executable, "-c", code], env=env, cwd=Path(__file__).resolve().parents[1],
                       capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"compiling {which} for sm_90 failed:\n{r.stderr[-4000:]}"
    return json.loads(r.stdout.split("@@", 1)[1])


_PTX_COUNTS = ("wgmma", "mma.sync", "sin.approx", "cos.approx", "fma.rn", "div.rn", "sqrt.rn",
               "cvt.rn.bf16")


def _launches(which: str) -> dict:
    """{launch name: thunk} calling the real launchers the way the engine and the trainer do
    (engine/executor.py render_tile, digan/fast_synthesis.py), on uninitialised CPU tensors with
    the official 128x128 model's layer shapes (values never matter: nothing is launched)."""
    import torch

    from kernels._common import PRECISIONS
    e = torch.empty
    E, C, T, side = 128, 512, 2, 32                  # frequencies, channels, frames, tile side
    M = T * side * side
    emb = lambda: dict(emb_A=e(E, 2), emb_b=e(T, E), xs=e(side), ys=e(side))  # noqa: E731
    idx = lambda: torch.zeros(M, dtype=torch.int64)                           # noqa: E731
    out = {}
    if which == "linear":
        from kernels.linear import fmm_linear_triton as lin
        for p in PRECISIONS:
            dt = torch.bfloat16 if p == "bf16" else torch.float32
            act = dict(bias=e(C), act=True, clamp=256.0, precision=p, out_dtype=dt)
            out[f"{p}-emb"] = lambda act=act: lin(e(C, 2 * E).to(act["out_dtype"]), None, **emb(), **act)
            out[f"{p}-conv"] = lambda act=act, dt=dt: lin(e(C, C).to(dt), e(M, C).to(dt), **act)
            out[f"{p}-split-x"] = lambda p=p, dt=dt: lin(e(C, C).to(dt), e(M // 4, C).to(dt), precision=p,
                                                         out_dtype=torch.float32)
            out[f"{p}-split-emb"] = lambda act=act, dt=dt: lin(e(C, 2 * E).to(dt), None, **emb(),
                                                               pre_add=e(M // 4, C), pre_index=idx(), **act)
            out[f"{p}-torgb"] = lambda p=p, dt=dt: lin(e(3, C).to(dt), e(M, C).to(dt), bias=e(3), clamp=256.0,
                                                       post_add=e(M // 4, 3), post_index=idx(), precision=p,
                                                       out_dtype=torch.float32)
            out[f"{p}-torgb-u8"] = lambda p=p, dt=dt: lin(e(3, C).to(dt), e(M, C).to(dt), bias=e(3),
                                                          clamp=256.0, post_add=e(M // 4, 3),
                                                          post_index=idx(), precision=p, out_uint8=True)
    elif which == "modulate":
        from kernels.modulate import fmm_modulate_triton
        for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            out[name] = lambda dt=dt: fmm_modulate_triton(e(C, C), e(2, 2 * C * 10), 10, out_dtype=dt)
    elif which == "rgb":
        from kernels.rgb import rgb_to_yuv420_triton, to_uint8_triton
        out["to_uint8"] = lambda: to_uint8_triton(e(2, 3, 64, 64))
        out["yuv420"] = lambda: rgb_to_yuv420_triton(e((2, 64, 64, 3), dtype=torch.uint8))
    elif which == "backward":
        from kernels.linear_backward import fmm_linear_backward_triton as bwd
        from kernels.modulate_backward import fmm_modulate_backward_triton
        for p in PRECISIONS:
            g = lambda n=C: e(M, n)                                                 # noqa: E731
            out[f"{p}-emb"] = lambda p=p: bwd(g(), e(C, 2 * E), None, out=g(), **emb(), has_bias=True,
                                              act=True, clamp=256.0, precision=p)
            out[f"{p}-conv"] = lambda p=p: bwd(g(), e(C, C), e(M, C), out=g(), has_bias=True, act=True,
                                               clamp=256.0, precision=p)
            out[f"{p}-upconv"] = lambda p=p: bwd(g(), e(C, C), e(M // 4, C), out=g(), x_index=idx(),
                                                 has_bias=True, act=True, clamp=256.0, precision=p)
            out[f"{p}-torgb"] = lambda p=p: bwd(g(3), e(3, C), e(M, C), out=g(3), has_bias=True,
                                                clamp=256.0, post_rows=M // 4, post_index=idx(), precision=p)
        out["modulate"] = lambda: fmm_modulate_backward_triton(e(2, C, C), e(C, C), e(2, 2 * C * 10), 10)
    else:
        raise ValueError(f"unknown kernel family {which!r}")
    return out


def _launched_stats(which: str) -> dict:
    """Runs in the subprocess of gpu_compile_stats (TRITON_INTERPRET=0)."""
    from kernels import compile_check as C

    cap = C._Capture(90)
    with C.stand_in_gpu(cap):
        for name, launch in _launches(which).items():
            cap.scenario = C.Scenario(name, "test", 128, 1, "fp32", 1)
            launch()
    assert not cap.errors, cap.errors
    stats = {}
    for entry in cap.kernels.values():
        ptx = entry["kernel"].asm["ptx"]
        counts = {s: ptx.count(s) for s in _PTX_COUNTS}
        for name in entry["scenarios"]:
            key = f"{name}:{entry['kernel'].metadata.name}" if which == "backward" else name
            stats[key] = counts
    return stats
