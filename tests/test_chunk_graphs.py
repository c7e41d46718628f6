"""Chunk graphs (engine/graphs.py, issue 10) and the prefetch of the next video's weights.

On the CPU the capture/replay primitives are a recorder: "capture" runs the chunk once (the
warm-up, as on CUDA) and keeps the function; "replay" runs it again. The function reads only the
graph's static inputs, so frames come out right only if every replay refilled them: the weights
when the video changes, the embedding bias for the chunk's frames. Compared with eager renders
bit for bit (the same kernels in the same order: the same bits). On a GPU, the gpu-marked test
compares real torch.cuda graphs with eager launches."""
import dataclasses

import pytest
import torch

from digan.view import View
from engine.plan import make_plan
from engine.renderer import Renderer
from engine.request import RenderRequest
from tests.conftest import perturbed_generator


class Recorder:
    def __init__(self, fail: bool = False):
        self.fail, self.captured = fail, 0

    def capture(self, fn):
        if self.fail:
            raise RuntimeError("operation not permitted when stream is capturing")
        fn()                        # warm-up
        self.captured += 1
        return fn

    @staticmethod
    def replay(graph):
        graph()


@pytest.fixture(scope="module")
def tiny():
    return perturbed_generator("tiny-32", 7).requires_grad_(False)


def _request(**kw):
    base = dict(seeds=[4, 9, 2], frames=5, t_end=1.7, view=View(top=2, height=27, left=3, width=26),
                backend="torch", device="cpu")
    base.update(kw)
    return RenderRequest(**base)


def _plan(G, req):
    # three row bands and 2-frame chunks (the last has 1): several tiles and two chunk shapes
    plan = make_plan(G.cfg, req.view, req.num_frames, 1 << 30, max_frames_per_chunk=1, max_tile_rows=512)
    return dataclasses.replace(plan, frames_per_chunk=2)


def test_replays_equal_eager_chunks_across_videos_and_buffers(tiny):
    req = _request()
    plan = _plan(tiny, req)
    eager = Renderer(tiny, req, plan=plan)
    ops = Recorder()
    r = Renderer(tiny, req, plan=plan, graph_ops=ops)
    shape = (plan.frames_per_chunk, r.H, r.W, 3)
    slots = [torch.full(shape, 0xAB, dtype=torch.uint8) for _ in range(2)]
    chunks = list(plan.chunks())
    assert len(chunks) == 3 and len(chunks[0].tiles) > 1
    n = 0
    for k in (0, 1, 0, 2):                        # back to a video already loaded once
        for chunk in chunks:
            F = chunk.frames[1] - chunk.frames[0]
            buf = slots[n % 2][:F]
            buf.fill_(0xAB)
            r.render_chunk(r.video_weights(k), chunk, buffer=buf)
            want = eager.render_chunk(eager.video_weights(k), chunk)
            assert torch.equal(buf, want), (k, chunk.frames)
            n += 1
    # keys: (frames, tiles, buffer): 2 slots x 2-frame chunks, and the 1-frame chunk in each slot
    assert r.graphs.captures == ops.captured == 4
    assert r.graphs.replays == n


def test_grid_and_stream_through_graphs(tiny):
    req = _request(seeds=[4, 9, 2])
    plan = _plan(tiny, req)
    want = list(Renderer(tiny, req, plan=plan).frames(grid=(2, 2)))
    r = Renderer(tiny, req, plan=plan, graph_ops=Recorder())
    got = list(r.frames(grid=(2, 2)))
    assert [(k, f) for k, f, _ in got] == [(k, f) for k, f, _ in want]
    assert all(torch.equal(a, b) for (_, _, a), (_, _, b) in zip(got, want))
    assert r.graphs.replays == 3 * len(list(plan.chunks()))      # every cell of every chunk


def test_failed_capture_falls_back_to_eager_with_a_warning(tiny):
    req = _request(seeds=[4])
    plan = _plan(tiny, req)
    want = list(Renderer(tiny, req, plan=plan).frames())
    r = Renderer(tiny, req, plan=plan, graph_ops=Recorder(fail=True))
    chunk = next(iter(plan.chunks()))
    buf = torch.empty((chunk.frames[1] - chunk.frames[0], r.H, r.W, 3), dtype=torch.uint8)
    with pytest.warns(RuntimeWarning, match="graph capture failed"):
        r.render_chunk(r.video_weights(0), chunk, buffer=buf)
    assert not r.graphs.enabled
    assert all(torch.equal(buf[i], want[i][2]) for i in range(buf.shape[0]))


def test_next_videos_weights_are_prepared_before_the_last_chunk(tiny, monkeypatch):
    """The frame stream asks for video k+1's weights before it hands out video k's last chunk
    (on CUDA they are enqueued on a side stream then, so the GPU overlaps the two)."""
    req = _request()
    plan = _plan(tiny, req)
    r = Renderer(tiny, req, plan=plan)
    events = []
    real_build, real_chunk = r.build_video_weights, r.render_chunk
    monkeypatch.setattr(r, "build_video_weights", lambda k: events.append(("build", k)) or real_build(k))
    monkeypatch.setattr(r, "render_chunk", lambda blocks, chunk, **kw: (
        events.append(("chunk", chunk.frames)) or real_chunk(blocks, chunk, **kw)))
    frames = list(r.frames())
    assert len(frames) == 3 * 5
    assert events == [("build", 0), ("chunk", (0, 2)), ("chunk", (2, 4)), ("build", 1), ("chunk", (4, 5)),
                      ("chunk", (0, 2)), ("chunk", (2, 4)), ("build", 2), ("chunk", (4, 5)),
                      ("chunk", (0, 2)), ("chunk", (2, 4)), ("chunk", (4, 5))]
    want = list(Renderer(tiny, req, plan=plan).frames())
    assert all(torch.equal(a[2], b[2]) for a, b in zip(frames, want))


@pytest.mark.gpu
def test_cuda_graphs_equal_eager_launches(tiny):
    req = _request(backend="triton", device="cuda", precision="bf16")
    plan = _plan(tiny, req)
    eager = list(Renderer(tiny, req, plan=plan, cuda_graphs=False).frames())
    r = Renderer(tiny, req, plan=plan)
    got = list(r.frames())
    assert r.graphs is not None and r.graphs.enabled and r.graphs.replays == 3 * 3
    assert all(torch.equal(a[2], b[2]) for a, b in zip(got, eager))
