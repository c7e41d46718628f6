"""Launch configs never depend on the number of rows M.

A pixel's bits are the same in every tile only if its reduction order is: every block size,
warp count, stage count and constexpr a launcher passes must come from the layer shape and
precision, never from M (tile size). Only the grid may grow with M. The launchers are called with
their kernels replaced by recorders, so nothing runs: cheap, and it checks the compiled-kernel
path's configs too (they are the same launchers). The backward's dW row split does depend on M by
design (its partial sums are added in a fixed order, and a weight gradient is not a per-pixel
result); that split travels in the grid and a positional argument, so it is not compared here.
"""
import math

import pytest
import torch

from kernels import fmm_linear, rgb_to_yuv420, to_uint8
from kernels._common import load_triton_module
from kernels.linear_backward import fmm_linear_backward
from tests.kernel_utils import device_for, needs_triton

pytestmark = needs_triton

ROWS = [1, 7, 63, 64, 130, 1000]         # M: 1, primes, around a block, several blocks


class _Recorder:
    """Stands in for a @triton.jit kernel: `kernel[grid](*args, **kwargs)` records the kwargs."""

    def __init__(self, name, log):
        self.name, self.log = name, log

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.log.append((self.name, tuple(grid), kwargs))
        return launch


@pytest.fixture
def launches(monkeypatch):
    """Replace every kernel of the Triton modules by a recorder; returns the list of launches."""
    log = []
    for name in ("_linear_triton", "_linear_backward_triton", "_rgb_triton"):
        mod = load_triton_module(name)
        for attr in dir(mod):
            if attr.startswith("_") and attr.endswith("_kernel"):
                monkeypatch.setattr(mod, attr, _Recorder(attr, log))
    return log


def _configs(log):
    """{kernel: its launch kwargs} of the recorded launches (one set per kernel)."""
    out = {}
    for name, _grid, kwargs in log:
        assert out.setdefault(name, kwargs) == kwargs, f"{name} launched with two configs in one call"
    return out


def _linear_inputs(M, KX, E, N, dev, g):
    """Inputs of one fmm_linear call with M output rows (embedding rows as M = 1 x 1 x M)."""
    kw = dict(weight=torch.randn(N, KX + 2 * E, generator=g).to(dev))
    if KX:
        kw["x"] = torch.randn(M, KX, generator=g).to(dev)
    if E:
        kw.update(emb_A=torch.randn(E, 2, generator=g).to(dev), emb_b=torch.randn(1, E, generator=g).to(dev),
                  xs=torch.rand(M, generator=g).to(dev), ys=torch.rand(1, generator=g).to(dev))
    return kw


@pytest.mark.parametrize("precision", ["fp32", "tf32", "bf16"])
@pytest.mark.parametrize("KX,E,N,out_uint8", [(48, 0, 17, False), (0, 8, 512, False), (5, 4, 3, True),
                                              (512, 128, 256, False)])
def test_forward_configs_independent_of_rows(KX, E, N, out_uint8, precision, launches):
    dev, g = device_for("triton"), torch.Generator().manual_seed(KX + E + N)
    seen = []
    for M in ROWS:
        launches.clear()
        fmm_linear(**_linear_inputs(M, KX, E, N, dev, g), bias=torch.randn(N, generator=g).to(dev),
                   act=not out_uint8, out_uint8=out_uint8, precision=precision, backend="triton")
        cfg = _configs(launches)
        assert list(cfg) == ["_fmm_linear_kernel"]
        seen.append(cfg)
        grid = launches[0][1]
        assert grid[0] == math.ceil(M / cfg["_fmm_linear_kernel"]["BLOCK_M"])   # only the grid grows
    assert all(c == seen[0] for c in seen), [(M, c) for M, c in zip(ROWS, seen) if c != seen[0]]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("KX,E,N", [(48, 0, 17), (5, 4, 3), (32, 8, 64)])
def test_backward_configs_independent_of_rows(KX, E, N, precision, launches):
    dev, g = device_for("triton"), torch.Generator().manual_seed(KX + E + N)
    seen = []
    for M in ROWS:
        launches.clear()
        kw = _linear_inputs(M, KX, E, N, dev, g)
        grad = torch.randn(M, N, generator=g).to(dev)
        out = torch.randn(M, N, generator=g).to(dev)
        fmm_linear_backward(grad, kw.pop("weight"), kw.pop("x", None), out=out, has_bias=True, act=True,
                            precision=precision, backend="triton", **kw)
        seen.append(_configs(launches))
    assert set(seen[0]) >= {"_fmm_bwd_dy_kernel", "_fmm_bwd_dw_kernel"}, seen[0]
    assert all(c == seen[0] for c in seen), [(M, c) for M, c in zip(ROWS, seen) if c != seen[0]]


def test_colour_configs_independent_of_size(launches):
    dev, seen = device_for("triton"), []
    for M in ROWS:
        launches.clear()
        to_uint8(torch.rand(M, 3).to(dev) * 2 - 1, backend="triton")
        rgb_to_yuv420(torch.randint(0, 256, (2, 2 * M % 30 + 2, 2 * M % 14 + 2, 3), dtype=torch.uint8).to(dev),
                      backend="triton")
        seen.append(_configs(launches))
    assert set(seen[0]) == {"_to_uint8_kernel", "_rgb_to_yuv420_kernel"}, seen[0]
    assert all(c == seen[0] for c in seen), seen
