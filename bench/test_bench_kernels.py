"""Kernel microbenchmarks for pytest-benchmark: one parametrised benchmark per op of kernels/.

    pytest bench/ --benchmark-only --benchmark-enable      # timed, pytest-benchmark's table
    pytest bench/test_bench_kernels.py -q                  # (benchmarks disabled) each runs once

The cases, shapes and the plain-PyTorch baselines are bench/bench_kernels.py's (`make_cases`),
which also has the sweeps, TFLOP/s / GB/s, fractions of the measured peaks and the RESULTS.md
table. Here: on CPU one small shape (a 32x32 tile, 1024 rows; B = 1 video for modulate) with our
torch backend and, for the fmm_linear ops, the unfused torch equivalent; with CUDA the model's
full shapes (a 16-frame 128^2 tile and a 1024^2 frame; B = 8 videos) with the Triton backend and
the unfused baseline. CUDA cases skip elsewhere, and CPU bf16 cases on a CPU without native
bf16 matmul (engine/precision.py: the engine renders fp32 there; bf16 matmuls ran ~70x slower).
Each benchmark's FLOPs and bytes go to `extra_info` (saved by --benchmark-json and bench/conftest's
--bench-out), and its group names the shape, so a case's rows sit together (bench/conftest.py
prints their ratios). Nothing runs at import; no timing assertions.
"""
import pytest
import torch

from bench.bench_kernels import make_cases, matmul_mode, sync
from engine.precision import cpu_bf16_support
from kernels._common import triton_available

CPU_ROWS = "1x32x32"                        # one 32x32 tile: the b4..b32 level of digan-128
CUDA_ROWS = ("16x128x128", "1x1024x1024")   # 256K rows (16 frames at 128^2), 1M rows (one 1024^2 frame)
CPU_VIDEOS, CUDA_VIDEOS = "B1", "B8"
ALL_PRECISIONS = ("fp32", "tf32", "bf16")


def _params(precisions, fused_baseline: bool, sizes=None):
    """pytest params (device, backend, size, precision). `fused_baseline`: the op has an unfused
    torch equivalent apart from its torch backend (the fmm_linear ops); elsewhere the torch
    backend is the plain formula and is benchmarked as the baseline on CUDA."""
    cpu_size, cuda_sizes = sizes or (CPU_ROWS, CUDA_ROWS)
    out = []
    for p in precisions:
        if p != "tf32":                                    # CPU has no TF32
            for be in (("torch", "unfused") if fused_baseline else ("torch",)):
                out.append(pytest.param("cpu", be, cpu_size, p, id=f"cpu-{be}-{cpu_size}-{p}"))
        for size in cuda_sizes:
            for be in ("triton", "unfused" if fused_baseline else "torch"):
                out.append(pytest.param("cuda", be, size, p, id=f"cuda-{be}-{size}-{p}", marks=pytest.mark.gpu))
    return out


def _bench(benchmark, op: str, device: str, backend: str, size: str, precision: str) -> None:
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    if backend == "triton" and not triton_available():
        pytest.skip("triton does not import")
    if device == "cpu" and precision == "bf16":
        native, why = cpu_bf16_support()
        if not native:
            pytest.skip(f"bf16: {why} (the product never runs bf16 there)")
    dev = torch.device(device)
    sizes = dict(videos=(int(size[1:]),)) if op == "modulate" else dict(rows=(size,))
    # The first case of the op: the model's first layer shape of that kind (e.g. 512 -> 512).
    case = next(make_cases(op, dev, precisions=(precision,), backends=(backend,), **sizes))
    fn = case.impls[backend]
    benchmark.group = f"{op} {case.shape} {precision}"
    benchmark.extra_info.update(op=op, shape=case.shape, precision=precision, backend=backend, impl=backend,
                                baseline=case.baseline, flops=case.flops, bytes=case.nbytes,
                                unit=case.unit, device=device)

    def call():
        fn()
        sync(dev)

    with matmul_mode(dev, precision):
        benchmark.pedantic(call, rounds=20 if device == "cuda" else 5, warmup_rounds=2)


@pytest.mark.parametrize("device,backend,size,precision",
                         _params(("fp32", "bf16"), False, (CPU_VIDEOS, (CUDA_VIDEOS,))))
def test_fmm_modulate(benchmark, device, backend, size, precision):
    """Weight preparation W' (B, Cout, Cin), first layer shape of digan-128 (512 x 256)."""
    _bench(benchmark, "modulate", device, backend, size, precision)


# The fmm_linear layers of the chain:
#   conv   plain conv 512 -> 512: lrelu(x @ W^T + bias) * sqrt2
#   emb    embedding-only layer 2E = 256 -> 512 (sin/cos generated in the prologue)
#   split  split conv0 child call 2E = 256 -> 512 with pre_add gathered from the parent tile
#   torgb  ToRGB 512 -> 3 with the skip (parent image by index) and the uint8 epilogue
@pytest.mark.parametrize("op", ["conv", "emb", "split", "torgb"])
@pytest.mark.parametrize("device,backend,size,precision", _params(ALL_PRECISIONS, True))
def test_fmm_linear(benchmark, op, device, backend, size, precision):
    _bench(benchmark, op, device, backend, size, precision)


@pytest.mark.parametrize("device,backend,size,precision", _params(("fp32", "bf16"), False))
def test_to_uint8(benchmark, device, backend, size, precision):
    """Float frames (F, H, W, 3) -> uint8."""
    _bench(benchmark, "to_uint8", device, backend, size, precision)


@pytest.mark.parametrize("device,backend,size,precision", _params(("u8",), False))
def test_rgb_to_yuv420(benchmark, device, backend, size, precision):
    """uint8 RGB frames (F, H, W, 3) -> I420."""
    _bench(benchmark, "yuv420", device, backend, size, precision)
