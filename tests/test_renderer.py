"""The Renderer's frame stream: grids tiled by the Renderer itself (weights once per video), the
explicit-codes seam of the request, and a caller's G that is neither moved nor changed."""
import dataclasses

import pytest
import torch

import engine.renderer as renderer_mod
from engine.plan import make_plan
from engine.renderer import Renderer
from engine.request import RenderRequest
from tests.conftest import perturbed_generator


@pytest.fixture(scope="module")
def tiny():
    return perturbed_generator("tiny-32", 11).requires_grad_(False)


def _req(**kw):
    return RenderRequest(**{**dict(seeds=[3, 4, 5], frames=5, backend="torch", device="cpu"), **kw})


def _stack(items):
    return torch.stack([f for _, _, f in items])


def _small_chunks(G, req):
    """Chunks of 2 frames (the last one shorter): several chunks per call, both buffer slots reused."""
    plan = make_plan(G.cfg, req.view, req.num_frames, req.memory_budget, max_frames_per_chunk=2)
    assert plan.num_chunks >= 3
    return plan


def test_grid_tiles_the_videos_and_leaves_empty_cells_black(tiny):
    req = _req()
    r = Renderer(tiny, req, plan=_small_chunks(tiny, req))
    singles = [_stack(r.frames(videos=[k])) for k in range(3)]                 # 3 x (5, 32, 32, 3)
    items = list(r.frames(grid=(2, 2)))
    assert [(k, f) for k, f, _ in items] == [(0, f) for f in range(5)]      # one video, frames in order
    g = _stack(items)
    assert g.shape == (5, 64, 64, 3) and r.frame_size((2, 2)) == (64, 64)
    assert torch.equal(g[:, :32, :32], singles[0]) and torch.equal(g[:, :32, 32:], singles[1])
    assert torch.equal(g[:, 32:, :32], singles[2])
    assert g[:, 32:, 32:].max() == 0 and all(s.max() > 0 for s in singles)  # black empty cell, real videos
    # Segments of a grid are the same frames as one call.
    assert torch.equal(torch.cat([_stack(r.frames(s, min(s + 2, 5), grid=(2, 2))) for s in (0, 2, 4)]), g)
    row = _stack(r.frames(1, 3, grid=(1, 3)))
    assert row.shape == (2, 32, 96, 3) and torch.equal(row[:, :, 64:], singles[2][1:3])


def test_grid_prepares_each_videos_weights_once(tiny, monkeypatch):
    # A cache too small for one video still keeps every video of a grid: each chunk needs them all.
    monkeypatch.setattr(renderer_mod, "WEIGHT_CACHE_BYTES", 1)
    r = Renderer(tiny, _req(frames=9))
    calls = []
    build = r.build_video_weights
    monkeypatch.setattr(r, "build_video_weights", lambda k: calls.append(k) or build(k))
    for s in range(0, 9, 2):                                                # five segments
        for _ in r.frames(s, min(s + 2, 9), grid=(1, 3)):
            pass
    assert calls == [0, 1, 2]


def test_grid_weights_must_fit_the_memory_budget(tiny):
    per_video = Renderer(tiny, _req()).video_weight_bytes()
    assert per_video == sum(b.nbytes() + sum(lw.bias.numel() * 4 for lw in b.layers)
                            + (b.A.numel() * 4 if b.A is not None else 0)
                            for b in Renderer(tiny, _req()).video_weights(0))
    r = Renderer(tiny, _req())
    budget = r.plan.tile_bytes + 4 * r.plan.chunk_bytes + 3 * per_video     # room for exactly 3 videos
    fits = Renderer(tiny, dataclasses.replace(_req(), memory_budget=budget), plan=r.plan)
    assert fits.frame_size((2, 2)) == (2 * r.H, 2 * r.W)
    tight = Renderer(tiny, dataclasses.replace(_req(), memory_budget=budget - 1), plan=r.plan)
    with pytest.raises(ValueError, match=r"keeps every video's weights .*\(at most 2\)"):
        tight.frame_size((2, 2))
    with pytest.raises(ValueError, match="keeps every video's weights"):
        next(tight.frames(grid=(2, 2)))


def test_bad_grids_are_refused(tiny):
    r = Renderer(tiny, _req())
    with pytest.raises(ValueError, match="cannot hold 3 videos"):
        r.frame_size((1, 2))
    with pytest.raises(ValueError, match="cannot hold 3 videos"):
        next(r.frames(grid=(0, 4)))
    with pytest.raises(ValueError, match="videos or grid, not both"):
        next(r.frames(videos=[0], grid=(2, 2)))


def test_explicit_codes_replace_the_seed_draws(tiny):
    cfg = tiny.cfg
    seeded = _req(seeds=[3, 4], frames=3)
    z, zm, _ = seeded.codes(cfg.z_dim, cfg.w_dim, cfg.c_dim)
    # Other seeds, the same codes given explicitly: the same frames (the seeds only count videos).
    explicit = _req(seeds=[0, 1], frames=3, z=z.clone(), z_motion=zm.clone())
    assert torch.equal(_stack(Renderer(tiny, explicit).frames()), _stack(Renderer(tiny, seeded).frames()))
    # Only z_motion given: content from the seeds, the two motions swapped -> other frames.
    swapped = _stack(Renderer(tiny, _req(seeds=[3, 4], frames=3, z_motion=zm.flip(0).clone())).frames())
    assert not torch.equal(swapped, _stack(Renderer(tiny, seeded).frames()))
    # The codes are part of the frames' identity; a request without them hashes as before.
    assert explicit.content_hash("m") != dataclasses.replace(explicit, z=z + 1).content_hash("m")
    assert explicit.content_hash("m") != _req(seeds=[0, 1], frames=3).content_hash("m")


@pytest.mark.parametrize("kw,msg", [
    (dict(z=torch.randn(3, 8)), "one row per seed"),
    (dict(z=torch.randn(8)), "one row per seed"),
    (dict(z_motion=torch.full((2, 8), float("nan"))), "finite"),
    (dict(z_motion=torch.randn(2, 8), motion_seeds=[1, 2]), "not both"),
])
def test_bad_explicit_codes_are_refused(kw, msg):
    with pytest.raises(ValueError, match=msg):
        RenderRequest(seeds=[0, 1], **kw)


def test_explicit_codes_of_the_wrong_size_for_the_model(tiny):
    req = RenderRequest(seeds=[0], z=torch.randn(1, tiny.cfg.z_dim + 1))
    with pytest.raises(ValueError, match=f"this model takes {tiny.cfg.z_dim}"):
        req.codes(tiny.cfg.z_dim, tiny.cfg.w_dim, tiny.cfg.c_dim)


def test_the_callers_generator_is_not_moved_or_switched(monkeypatch):
    """Nothing on the caller's G may move it, cast it or change its mode (grids included)."""
    G = perturbed_generator("tiny-32", 12).train()
    before = {k: v.clone() for k, v in G.state_dict().items()}

    def refuse(*a, **k):
        raise AssertionError("the Renderer called a method that moves or switches the caller's G")

    for name in ("to", "cpu", "cuda", "half", "float", "double", "eval", "train", "requires_grad_"):
        monkeypatch.setattr(G, name, refuse)
    r = Renderer(G, _req(frames=2))
    assert r.G is G                                           # already on the render device: used, not copied
    _stack(r.frames(grid=(2, 2)))
    _stack(r.frames())
    assert G.training and all(m.training for m in G.modules())
    assert all(torch.equal(before[k], v) for k, v in G.state_dict().items())
    assert all(t.device.type == "cpu" for t in G.parameters())


class _Event:
    """Stand-in for torch.cuda.Event on the CPU, where every copy is done when it returns."""

    def record(self, stream=None):
        pass

    def synchronize(self):
        pass


class _Stream:
    def __init__(self, device=None):
        pass

    def wait_event(self, event):
        pass


def test_double_buffer_order_with_stand_in_streams(tiny, monkeypatch):
    """The CUDA path's bookkeeping (two slots, the copy of chunk k drained after chunk k+1 is
    started, the last chunk shorter) run on the CPU with stand-in streams and events: the same
    frames, in the same order, as the CPU path, for videos and for a grid."""
    import contextlib
    empty = torch.empty
    monkeypatch.setattr(torch, "empty", lambda *a, pin_memory=False, **k: empty(*a, **k))  # no pinned memory here
    monkeypatch.setattr(torch.cuda, "Stream", _Stream)
    monkeypatch.setattr(torch.cuda, "Event", _Event)
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: _Stream())
    req = _req()
    r = Renderer(tiny, req, plan=_small_chunks(tiny, req))
    for grid in (None, (2, 2)):
        want = list(r.frames(grid=grid))
        units = r._grid_units(grid, 0, None) if grid else r._video_units(range(3), 0, None)
        got = list(r._frames_cuda(units, r.frame_size(grid) + (3,), black=grid is not None))
        assert [(k, f) for k, f, _ in got] == [(k, f) for k, f, _ in want]
        assert all(torch.equal(a, b) for (_, _, a), (_, _, b) in zip(got, want))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the double-buffered CUDA path needs a GPU")
def test_cuda_grid_equals_tiled_cuda_videos():
    """The grid goes through the same double buffer as single videos (two slots, several chunks):
    the same kernels on the same tiles, so the cells are bit-identical to the videos alone."""
    G = perturbed_generator("tiny-32", 13)
    req = _req(frames=9, device="cuda")
    r = Renderer(G, req, plan=_small_chunks(G, req))
    singles = [_stack(r.frames(videos=[k])) for k in range(3)]
    g = _stack(r.frames(grid=(2, 2)))
    assert g.device.type == "cpu" and g.shape == (9, 64, 64, 3)
    assert torch.equal(g[:, :32, :32], singles[0]) and torch.equal(g[:, :32, 32:], singles[1])
    assert torch.equal(g[:, 32:, :32], singles[2]) and g[:, 32:, 32:].max() == 0
