"""Renderer: a request and a generator -> the frame stream (video, frame, uint8 (H, W, 3)).

It owns the plan (engine/plan.py), the per-video weights (built once, cached; engine/executor.py
prepare_video) and the tile loop (executor.render_tile), and on CUDA double-buffers chunks through
pinned host memory on a side stream."""
from __future__ import annotations

import copy
import dataclasses
import functools
from collections import OrderedDict
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import torch

from digan.networks import Generator
from kernels._common import interpreter_enabled

from .executor import BlockWeights, _program_and_geometry, prepare_video, render_tile
from .graphs import ChunkGraphs, GraphOps
from .plan import FrameChunk, Plan, make_plan
from .precision import resolve_precision
from .request import RenderRequest

CPU_TILE_BYTES = 128 << 20
# Per-video weights kept between frames() calls (one per segment in `digan render`); at least one
# video is always kept, and every video of a grid (each chunk needs all of them). digan-128 needs
# ~20 MiB per video.
WEIGHT_CACHE_BYTES = 512 << 20


def _tensors(module: torch.nn.Module):
    yield from module.parameters()
    yield from module.buffers()


def _block_tensors(bw: BlockWeights):
    for lw in bw.layers:
        yield from (t for t in (lw.W, lw.W_e, lw.bias) if t is not None)
    if bw.A is not None:
        yield bw.A
    if bw.b is not None:                              # the FrameBias's style and motion code
        yield from (bw.b.w, bw.b.z_motion)


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


def pick_device(request: RenderRequest) -> torch.device:
    if request.device is not None:
        return torch.device(request.device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pick_backend(request: RenderRequest, device: torch.device) -> str:
    if request.backend == "auto":
        return "triton" if device.type == "cuda" else "torch"
    if request.backend == "triton" and device.type != "cuda" and not interpreter_enabled():
        raise ValueError("backend 'triton' needs a CUDA device (or TRITON_INTERPRET=1 for testing)")
    return request.backend


class Renderer:
    """Renders a request with a generator: `frames()` yields (video, frame, uint8 (H, W, 3)).

    The caller's G is never modified: not moved (a G on another device is copied to the render
    device), not switched to eval mode (the mapping runs without its training-mode w_avg update).
    Codes and labels go to the device once per request; times are made on the device per bias
    block (FrameBias)."""

    def __init__(self, G: Generator, request: RenderRequest, plan: Optional[Plan] = None,
                 graph_ops: Optional[object] = None, cuda_graphs: bool = True):
        """graph_ops: capture/replay primitives for chunk graphs (engine/graphs.py); default
        torch.cuda graphs on CUDA with the Triton backend (cuda_graphs=False: eager launches)."""
        self.G, self.request = G, request
        self.device = pick_device(request)
        self.backend = pick_backend(request, self.device)
        self.precision = resolve_precision(request.precision, self.device)  # what really runs
        self.Ts = request.grid()                 # TimeGrid: parameters, O(1) in the frame count
        self._weights: "OrderedDict[int, List[BlockWeights]]" = OrderedDict()
        self._keep = 1   # videos the cache never evicts below (a grid's cells: all of its videos)
        act_bytes = 2 if self.precision == "bf16" else 4
        # CPU: tiles of <= ~128 MiB working set (one 128x128 frame of the official model) keep
        # each layer's activations near the cache: 9.1 fps vs 6.1 with 16-frame tiles (fp32,
        # 128x128, 2 cores). Small models get proportionally more rows. The bits are the same.
        cap = CPU_TILE_BYTES if self.device.type == "cpu" else None
        self.plan = plan or make_plan(G.cfg, request.view, len(self.Ts), request.memory_budget, act_bytes=act_bytes,
                                      max_tile_bytes=cap)
        self.H, self.W = request.view.output_size(G.cfg.img_resolution)
        self.G = G if all(t.device == self.device for t in _tensors(G)) else copy.deepcopy(G).to(self.device)
        cfg = G.cfg
        z, zm, c = request.codes(cfg.z_dim, cfg.w_dim, cfg.c_dim)   # (B, z_dim), (B, w_dim), (B, c_dim)
        self._codes = (z.to(self.device), zm.to(self.device), None if c is None else c.to(self.device))
        if graph_ops is None and cuda_graphs and self.device.type == "cuda" and self.backend == "triton":
            graph_ops = GraphOps(self.device)
        # Chunk graphs (uint8 chunks into a given buffer: the frame stream's); None: eager.
        self.graphs = (ChunkGraphs(self._render_chunk_eager, _program_and_geometry(self.G)[1], graph_ops)
                       if graph_ops is not None else None)
        # Video k+1's weights are prepared on this stream while video k's last chunk renders (CUDA).
        self._prep_stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None

    @property
    def num_videos(self) -> int:
        return len(self.request.seeds)

    @property
    def num_frames(self) -> int:
        """Frames of each video (of the grid too)."""
        return self.plan.num_frames

    def describe(self) -> str:
        """How the frames are made: backend, device, precision really used, plan."""
        return f"{self.backend} backend on {self.device}, {self.precision}; plan: {self.plan.describe()}"

    def content_hash(self, model_id: str) -> str:
        """The request's content hash with the precision really used (bf16 that fell back to fp32
        renders the frames of an fp32 request)."""
        return dataclasses.replace(self.request, precision=self.precision).content_hash(model_id)

    def video_weights(self, k: int) -> List[BlockWeights]:
        """Video k's prepared weights, built once and kept (up to WEIGHT_CACHE_BYTES of videos)."""
        if k in self._weights:
            self._weights.move_to_end(k)
            return self._weights[k]
        blocks = self.build_video_weights(k)
        self._weights[k] = blocks
        while (len(self._weights) > self._keep
               and sum(b.nbytes() for bl in self._weights.values() for b in bl) > WEIGHT_CACHE_BYTES):
            self._weights.popitem(last=False)
        return blocks

    @torch.no_grad()
    def build_video_weights(self, k: int) -> List[BlockWeights]:
        z, zm, c = self._codes
        z, zm = z[k:k + 1], zm[k:k + 1]
        c = c[k:k + 1] if c is not None else None
        ws = self.G.mapping(z, c, truncation_psi=self.request.psi, skip_w_avg_update=True)[0]
        return prepare_video(self.G, ws, zm[0], self.Ts, self.precision, self.backend)

    def render_chunk(self, blocks: List[BlockWeights], chunk: FrameChunk, out: str = "uint8",
                     buffer: Optional[torch.Tensor] = None) -> torch.Tensor:
        """All tiles of a frame chunk assembled: (F, H, W, 3) uint8 (or fp32 for out='float').
        A uint8 chunk into a given buffer replays the chunk's graph when graphs are on."""
        if self.graphs is not None and out == "uint8" and buffer is not None:
            return self.graphs(blocks, chunk, buffer)
        return self._render_chunk_eager(blocks, chunk, out, buffer)

    def _render_chunk_eager(self, blocks: List[BlockWeights], chunk: FrameChunk, out: str = "uint8",
                            buffer: Optional[torch.Tensor] = None, geometry=None) -> torch.Tensor:
        f0, f1 = chunk.frames
        top, _, left, _ = self.request.view.final_rect(self.G.cfg.img_resolution)
        if buffer is None:
            dtype = torch.uint8 if out == "uint8" else torch.float32
            buffer = torch.empty((f1 - f0, self.H, self.W, 3), dtype=dtype, device=self.device)
        for tile in chunk.tiles:
            r0, r1, c0, c1 = tile.rect
            # the last ToRGB stores the tile into its place in the buffer (no copy afterwards)
            render_tile(self.G, blocks, tile, self.request.view.scale, self.precision, self.backend, self.device,
                        out, geometry=geometry, into=buffer[:, r0 - top:r1 - top, c0 - left:c1 - left])
        return buffer

    def frame_size(self, grid: Optional[Tuple[int, int]] = None) -> Tuple[int, int]:
        """(height, width) of the frames `frames(grid=grid)` yields: one video's, or the grid's."""
        rows, cols = self._check_grid(grid) if grid is not None else (1, 1)
        return self.H * rows, self.W * cols

    def frames(self, start: int = 0, end: Optional[int] = None, videos: Optional[Sequence[int]] = None,
               grid: Optional[Tuple[int, int]] = None) -> Iterator[Tuple[int, int, torch.Tensor]]:
        """Yields (video index, frame index, uint8 (H, W, 3) CPU tensor) for frames [start, end)
        of each video (all of them, or `videos`), video by video.

        grid=(rows, cols): the request's videos tiled into one video, video k in cell
        divmod(k, cols), cells without a video black; yields (0, frame index, uint8
        (rows*H, cols*W, 3)). A grid keeps the weights of all its videos (every chunk needs them).

        On CUDA, chunk k+1 is computed while chunk k is copied to pinned host memory on a side
        stream (double-buffered), so the GPU never waits for the host copy; grids the same."""
        if grid is not None:
            if videos is not None:
                raise ValueError("a grid holds every video of the request: give videos or grid, not both")
            self._keep = max(self._keep, self.num_videos)
            units = self._grid_units(self._check_grid(grid), start, end)
        else:
            videos = range(self.num_videos) if videos is None else videos
            units = self._video_units(videos, start, end)
        shape = self.frame_size(grid) + (3,)
        if self.device.type == "cuda":
            yield from self._frames_cuda(units, shape, black=grid is not None)
            return
        for k, chunk, fill in units:
            F = chunk.frames[1] - chunk.frames[0]
            # a fresh buffer per chunk: the frames yielded are views of it, kept by the caller
            buf = (torch.zeros if grid is not None else torch.empty)((F,) + shape, dtype=torch.uint8)
            fill(buffer=buf)
            for i in range(F):
                yield k, chunk.frames[0] + i, buf[i]

    def video_weight_bytes(self) -> int:
        """Bytes of one video's prepared weights (every layer's modulated weight in the compute
        dtype, fp32 biases and embedding frequencies), from the program alone."""
        act = 2 if self.precision == "bf16" else 4
        prog = _program_and_geometry(self.G)[0]
        return sum(layer.c_out * layer.c_in * act + layer.c_out * 4 + (layer.emb // 2) * 2 * 4
                   for layer in prog.layers)

    def _check_grid(self, grid: Tuple[int, int]) -> Tuple[int, int]:
        rows, cols = grid
        if rows < 1 or cols < 1 or rows * cols < self.num_videos:
            raise ValueError(f"a {rows}x{cols} grid (rows x columns) cannot hold {self.num_videos} videos")
        # Every chunk of a grid needs every cell's weights, so they are all kept: they must fit
        # in the memory budget beside the plan's tiles and chunk (checked before anything runs).
        per_video = self.video_weight_bytes()
        need = self.num_videos * per_video
        room = self.request.memory_budget - self.plan.tile_bytes - self.plan.chunk_bytes * rows * cols
        if need > room:
            raise ValueError(
                f"a grid of {self.num_videos} videos keeps every video's weights ({_mib(need)}), more than the "
                f"memory budget leaves beside the tiles ({_mib(max(room, 0))} of {_mib(self.request.memory_budget)}):"
                f" put fewer seeds in one grid (at most {max(0, room) // per_video}) or raise "
                "--memory-budget")
        return rows, cols

    def _video_units(self, videos, start, end) -> Iterator[Tuple[int, FrameChunk, Callable]]:
        """(video, chunk, fill(buffer=(F, H, W, 3))) for each chunk of each video. Video k+1's
        weights are prepared (enqueued, on CUDA on a side stream) before video k's last chunk is
        handed out, so that on a GPU the two overlap; the bits are the same either way."""
        videos = list(videos)
        nxt = self._prefetch(videos[0]) if videos else None
        for n, k in enumerate(videos):
            blocks = self._ready(nxt)
            chunks = self.plan.chunks(start, end)
            chunk = next(chunks)
            for following in chunks:
                yield k, chunk, functools.partial(self.render_chunk, blocks, chunk)
                chunk = following
            nxt = self._prefetch(videos[n + 1]) if n + 1 < len(videos) else None
            yield k, chunk, functools.partial(self.render_chunk, blocks, chunk)

    def _prefetch(self, k: int):
        """Video k's weights, prepared on the side stream on CUDA: (blocks, event or None)."""
        if self._prep_stream is None or k in self._weights:
            return self.video_weights(k), None
        main = torch.cuda.current_stream(self.device)
        self._prep_stream.wait_stream(main)           # the codes and G were made on the main stream
        with torch.cuda.stream(self._prep_stream):
            blocks = self.video_weights(k)
            done = torch.cuda.Event()
            done.record(self._prep_stream)
        for bw in blocks:                             # made on the side stream, read on the main one
            for t in _block_tensors(bw):
                t.record_stream(main)
        return blocks, done

    def _ready(self, prefetched) -> List[BlockWeights]:
        blocks, done = prefetched
        if done is not None:
            torch.cuda.current_stream(self.device).wait_event(done)
        return blocks

    def _grid_units(self, grid, start, end) -> Iterator[Tuple[int, FrameChunk, Callable]]:
        """(0, chunk, fill(buffer=(F, rows*H, cols*W, 3))): every video into its cell; the empty
        cells are never written (the canvas starts black)."""
        _, cols = grid
        H, W = self.H, self.W

        def fill(chunk, buffer):
            for k in range(self.num_videos):
                r, c = divmod(k, cols)
                self.render_chunk(self.video_weights(k), chunk, buffer=buffer[:, r * H:(r + 1) * H, c * W:(c + 1) * W])

        for chunk in self.plan.chunks(start, end):
            yield 0, chunk, functools.partial(fill, chunk)

    def _frames_cuda(self, units, shape, black: bool) -> Iterator[Tuple[int, int, torch.Tensor]]:
        copy_stream = torch.cuda.Stream(self.device)
        n = self.plan.frames_per_chunk
        host = [torch.empty((n,) + shape, dtype=torch.uint8, pin_memory=True) for _ in range(2)]
        # grids: cells without a video are never written, so they stay as black as allocated
        alloc = torch.zeros if black else torch.empty
        dev = [alloc((n,) + shape, dtype=torch.uint8, device=self.device) for _ in range(2)]
        events = [None, None]
        pending = None  # (slot, video, chunk) whose copy is in flight
        slot = 0
        for k, chunk, fill in units:
            F = chunk.frames[1] - chunk.frames[0]
            if events[slot] is not None:
                events[slot].synchronize()        # host[slot] was consumed before reuse below
            fill(buffer=dev[slot][:F])
            done = torch.cuda.Event()
            done.record(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(copy_stream):
                copy_stream.wait_event(done)
                host[slot][:F].copy_(dev[slot][:F], non_blocking=True)
                ev = torch.cuda.Event()
                ev.record(copy_stream)
            events[slot] = ev
            if pending is not None:
                yield from self._drain(host, events, pending)
            pending = (slot, k, chunk)
            slot ^= 1
        if pending is not None:
            yield from self._drain(host, events, pending)

    @staticmethod
    def _drain(host, events, pending):
        slot, k, chunk = pending
        events[slot].synchronize()
        F = chunk.frames[1] - chunk.frames[0]
        for i in range(F):  # cloned: the pinned slot is refilled two chunks later
            yield k, chunk.frames[0] + i, host[slot][i].clone()

    @torch.no_grad()
    def render_float(self) -> torch.Tensor:
        """All videos, fp32 unclipped, (B*T, 3, H, W) video-major: the layout of G.synthesis."""
        out = []
        for k in range(self.num_videos):
            blocks = self.video_weights(k)
            for chunk in self.plan.chunks():
                out.append(self.render_chunk(blocks, chunk, out="float").permute(0, 3, 1, 2).cpu())
        return torch.cat(out)
