"""CPU benchmark (pytest-benchmark): the engine's CPU path vs the eager reference, 128x128 x 16
frames of the official 128 architecture. Run: `pytest bench/ --benchmark-only --benchmark-enable`.
No timing assertions: pytest-benchmark prints the table; ratios come from the same run."""
import pytest
import torch

from digan.default import untrained_generator
from engine.renderer import Renderer
from engine.request import RenderRequest

FRAMES = 16


@pytest.fixture(scope="module")
def G():
    return untrained_generator()


def test_eager_reference_fp32(benchmark, G):
    z, zm = torch.randn(1, G.z_dim), torch.randn(1, G.w_dim)
    Ts = torch.linspace(0, 1, FRAMES)
    with torch.no_grad():
        ws = G.mapping(z, None)
        benchmark.pedantic(lambda: G.synthesis(ws, Ts, zm), rounds=2, warmup_rounds=1)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_engine_cpu(benchmark, G, precision):
    r = Renderer(G, RenderRequest(seeds=[0], frames=FRAMES, precision=precision, backend="torch", device="cpu"))
    benchmark.pedantic(lambda: sum(1 for _ in r.frames()), rounds=3, warmup_rounds=1)
