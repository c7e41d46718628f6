"""CPU render benchmark (pytest-benchmark): the engine's CPU path vs the eager reference on the
official 128 architecture (random weights) at 128x128, CPU-sized: 4 frames (the eager reference
renders ~2 frames/s on 2 cores, so 16 frames x 3 runs alone took ~25 s of `make bench`).
Run: `make bench` (or `pytest bench/ --benchmark-only --benchmark-enable`). No timing assertions:
pytest-benchmark prints its table, bench/conftest.py the ratios (x eager) from the same run.
bf16 runs only on a CPU with native bf16 matmul (engine/precision.py): elsewhere the Renderer
would render fp32 under a bf16 label, so the case is skipped with the reason."""
import pytest
import torch

from digan.default import untrained_generator
from engine.precision import cpu_bf16_support
from engine.renderer import Renderer
from engine.request import RenderRequest

FRAMES = 4
SIDE = 128          # the architecture's native size: no view, as the official code renders it
GROUP = f"render {SIDE}x{FRAMES}x1 (digan-128, CPU)"


@pytest.fixture(scope="module")
def G():
    return untrained_generator()


def _info(benchmark, impl: str) -> None:
    benchmark.group = GROUP
    benchmark.extra_info.update(impl=impl, baseline="eager", frames=FRAMES, size=f"{SIDE}x{FRAMES}x1", device="cpu")


def test_eager_reference_fp32(benchmark, G):
    z, zm = torch.randn(1, G.z_dim), torch.randn(1, G.w_dim)
    Ts = torch.linspace(0, 1, FRAMES)
    _info(benchmark, "eager")
    with torch.no_grad():
        ws = G.mapping(z, None)
        benchmark.pedantic(lambda: G.synthesis(ws, Ts, zm), rounds=2, warmup_rounds=1)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_engine_cpu(benchmark, G, precision):
    if precision == "bf16":
        native, why = cpu_bf16_support()
        if not native:
            pytest.skip(f"bf16: {why}; the engine renders fp32 there")
    r = Renderer(G, RenderRequest(seeds=[0], frames=FRAMES, precision=precision, backend="torch", device="cpu"))
    assert r.precision == precision     # what is timed is what the row says
    _info(benchmark, f"engine-{precision}")
    benchmark.pedantic(lambda: sum(1 for _ in r.frames()), rounds=3, warmup_rounds=1)
