"""Long renders (issue 8): the request, its hash and its time grid are O(1) in the frame count, a
video's weights are built once, frames do not depend on the request's length; and bf16 on CPUs
without native bf16 falls back to fp32 with a warning. Structural checks only, no timing."""
import dataclasses
import json
import resource
import tracemalloc
import warnings

import pytest
import torch

import engine.precision as ex
from engine.executor import BIAS_BLOCK
from engine.plan import make_plan
from engine.renderer import Renderer
from engine.request import RenderRequest, TimeGrid
from tests.conftest import perturbed_generator

BILLION = 10 ** 9


@pytest.fixture(scope="module")
def tiny():
    return perturbed_generator("tiny-32", 7).requires_grad_(False)


def _req(**kw):
    return RenderRequest(**{**dict(seeds=[5], backend="torch", device="cpu"), **kw})


def _frames(r, start, end):
    return torch.stack([f for _, _, f in r.frames(start=start, end=end)])


def test_request_hash_and_grid_are_constant_size():
    short, long = _req(frames=16), _req(frames=BILLION)
    # Parameters, not values: a few dozen bytes for 16 or 10^9 frames (only the digits differ).
    assert len(json.dumps(long.grid().describe())) <= len(json.dumps(short.grid().describe())) + 8 < 80
    tracemalloc.start()
    h = long.content_hash("model")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # The old hash built a Python list and JSON of 10^9 floats (tens of GB); 1 MiB is far above
    # what hashing a few parameters needs and far below one value per frame.
    assert peak < 1 << 20, peak
    assert h != short.content_hash("model") and h == _req(frames=BILLION).content_hash("model")
    # Same times, other parameters -> same frames -> same hash (interpolation is a denser grid).
    assert _req(frames=9, interpolate=2).content_hash("m") == _req(frames=17).content_hash("m")
    # The grid holds parameters only; slices are computed on demand, even at the far end.
    grid = long.grid()
    assert not any(isinstance(getattr(grid, f.name), torch.Tensor) for f in dataclasses.fields(grid))
    tail = grid.slice(BILLION - 3, BILLION)
    assert tail.shape == (3,) and tail[-1].item() == 1.0


@pytest.mark.parametrize("start,end,count", [(0.0, 1.0, 16), (-0.5, 2.0, 17), (0.3, -1.7, 1001), (2.0, 2.0, 5),
                                             (0.25, 9.0, 1), (-3.0, 7.0, 20001)])
def test_time_grid_slices_are_index_local_and_match_linspace(start, end, count):
    """Any slice equals the same indices of the whole grid (times depend on the index only); the
    ends are exact; and the grid is torch.linspace(float64).float() to within one float32 ulp
    (linspace's SIMD kernel rounds differently per vector, see TimeGrid)."""
    grid = TimeGrid(start, end, count)
    whole = grid.tensor()
    for a, b in [(0, 1), (count // 2 - 1, count // 2 + 2), (count // 3, count // 3 + 7), (count - 1, count)]:
        a, b = max(a, 0), min(b, count)
        assert torch.equal(grid.slice(a, b), whole[a:b])
    assert whole[0].item() == torch.tensor(start).float().item()
    assert whole[-1].item() == torch.tensor(end if count > 1 else start).float().item()
    ref = torch.linspace(start, end, count, dtype=torch.float64).float()
    # The float64 formulas differ by a few ulps of the grid's magnitude (~1e-16 * |t|max); after
    # rounding to float32 that is at most one float32 ulp of the value, or, for times crossing
    # zero, one float32 ulp at the grid's magnitude at most.
    mag = torch.tensor(max(abs(start), abs(end))).float()
    ulp = torch.maximum(torch.nextafter(ref.abs(), torch.tensor(float("inf"))) - ref.abs(),
                        torch.nextafter(mag, torch.tensor(float("inf"))) - mag)
    assert ((whole - ref).abs() <= ulp).all()


def test_time_grid_rejects_bad_input():
    with pytest.raises(ValueError, match="finite"):
        _req(t_end=float("inf")).grid()
    with pytest.raises(ValueError, match="finite"):
        _req(times=[0.0, float("nan")]).grid()
    with pytest.raises(ValueError, match=">= 1"):
        TimeGrid(0.0, 1.0, 0)


def test_billion_frame_request_renders_its_first_and_last_frames(tiny):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    r = Renderer(tiny, _req(frames=BILLION))
    assert r.plan.num_frames == BILLION
    assert r.plan.num_tiles == -(-BILLION // r.plan.frames_per_chunk) * len(r.plan.rects)
    first = _frames(r, 0, 3)
    last = _frames(r, BILLION - 2, BILLION)
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    assert first.shape == (3, 32, 32, 3) and last.shape == (2, 32, 32, 3)
    assert first.float().std() > 10 and last.float().std() > 10  # real content
    assert r.Ts.slice(BILLION - 1, BILLION).item() == 1.0          # the grid ends at t_end
    # One byte per frame would be 1 GB; the old engine built 8 GB of float64 times first.
    assert grown < 256 << 20, grown


def test_long_request_frames_equal_short_request_with_same_spacing(tiny):
    """Spacing 1/64 (exact in binary), so frame k has the same time in both grids; frames equal bit
    for bit, at the start and (aligned to the bias block) deep inside the long grid."""
    n = 10 ** 6
    long = Renderer(tiny, _req(frames=n, t_end=(n - 1) / 64))
    short = Renderer(tiny, _req(frames=40, t_end=39 / 64))
    assert torch.equal(_frames(long, 0, 40), _frames(short, 0, 40))
    k0 = 700_000 // BIAS_BLOCK * BIAS_BLOCK          # a bias-block boundary past the halfway point
    inner = Renderer(tiny, _req(frames=80, t_start=k0 / 64, t_end=(k0 + 79) / 64))
    assert torch.equal(long.Ts.slice(k0 + 30, k0 + 45), inner.Ts.slice(30, 45))
    assert torch.equal(_frames(long, k0 + 30, k0 + 45), _frames(inner, 30, 45))


def test_segments_reuse_the_video_weights_and_equal_one_call(tiny, monkeypatch):
    r = Renderer(tiny, _req(frames=150, t_end=3.0))
    calls = []
    build = r.build_video_weights
    monkeypatch.setattr(r, "build_video_weights", lambda k: calls.append(k) or build(k))
    segs = torch.cat([_frames(r, s, min(s + 37, 150)) for s in range(0, 150, 37)])  # odd segments
    assert calls == [0]                  # weights once per video, not per segment
    assert torch.equal(segs, _frames(Renderer(tiny, _req(frames=150, t_end=3.0)), 0, 150))


def test_renderer_leaves_the_callers_generator_untouched():
    """Issue 10: no eval() switch, no w_avg update from the training-mode mapping, no move."""
    G = perturbed_generator("tiny-32", 8).train()
    before = {k: v.clone() for k, v in G.state_dict().items()}
    r = Renderer(G, _req(frames=3))
    frames = _frames(r, 0, 3)
    assert G.training and all(m.training for m in G.modules())
    after = G.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert torch.equal(frames, _frames(Renderer(perturbed_generator("tiny-32", 8).eval(), _req(frames=3)), 0, 3))


def test_plan_chunks_are_lazy():
    from digan.config import generator_preset
    from digan.view import View
    plan = make_plan(generator_preset("tiny-32"), View(), BILLION, 1 << 30)
    chunks = plan.chunks(BILLION - 100)
    first = next(iter(chunks))
    assert first.frames == (BILLION - 100, BILLION - 100 + plan.frames_per_chunk)
    with pytest.raises(ValueError, match="outside"):
        plan.chunks(5, BILLION + 1)      # checked when asked, not when iterated


# ---- bf16 on CPUs without native bf16 -----------------------------------------------------------

def test_bf16_falls_back_to_fp32_on_a_cpu_without_bf16(tiny, monkeypatch):
    monkeypatch.setattr(ex, "cpu_bf16_support", lambda: (False, "no bf16 here (test)"))
    monkeypatch.setattr(ex, "_warned", set())
    req = _req(frames=4, precision="bf16")
    with pytest.warns(RuntimeWarning, match=r"no bf16 here \(test\).*fp32 instead"):
        r = Renderer(tiny, req)
    assert r.precision == "fp32" and req.precision == "bf16"   # the caller's request is untouched
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # once per reason, not per renderer
        r2 = Renderer(tiny, req)
    fp32 = Renderer(tiny, dataclasses.replace(req, precision="fp32"))
    assert torch.equal(_frames(r2, 0, 4), _frames(fp32, 0, 4))
    assert r.content_hash("m") == fp32.content_hash("m") != req.content_hash("m")


def test_bf16_kept_on_a_cpu_with_bf16(tiny, monkeypatch):
    monkeypatch.setattr(ex, "cpu_bf16_support", lambda: (True, "has bf16 (test)"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = Renderer(tiny, _req(frames=2, precision="bf16"))
    assert r.precision == "bf16" and r.content_hash("m") == r.request.content_hash("m")
    f = _frames(r, 0, 2)
    ref = _frames(Renderer(tiny, _req(frames=2, precision="fp32")), 0, 2)
    # bf16 weights and activations (8-bit mantissa, ~0.4% relative) move some pixels by a few LSB;
    # the frames stay the same picture: mean error well under 2 LSB of 255.
    assert (f.float() - ref.float()).abs().mean() < 2.0


@pytest.mark.parametrize("machine,flags,ratio,native", [
    ("x86_64", {"avx2", "fma"}, None, False),
    ("x86_64", {"avx2", "avx512f", "avx512_bf16"}, None, True),
    ("x86_64", {"avx2", "amx_bf16", "amx_tile"}, None, True),
    ("aarch64", {"fp", "asimd", "bf16"}, None, True),
    ("aarch64", {"fp", "asimd"}, None, False),
    ("x86_64", None, 0.014, False),     # flags unknown: measured, AVX2-like (1.3 vs 94 GFLOP/s)
    ("arm64", None, 2.5, True),         # flags unknown: measured, native bf16
])
def test_bf16_detector(monkeypatch, machine, flags, ratio, native):
    monkeypatch.setattr(ex, "_cpu_flags", lambda: flags)
    monkeypatch.setattr(ex.os, "uname", lambda: type("U", (), {"machine": machine})())
    measured = []
    monkeypatch.setattr(ex, "_bf16_matmul_ratio", lambda: measured.append(1) or ratio)
    ex.cpu_bf16_support.cache_clear()
    try:
        ok, why = ex.cpu_bf16_support()
    finally:
        ex.cpu_bf16_support.cache_clear()
    assert ok is native and why
    assert bool(measured) == (flags is None)   # no measurement where the flags tell
