"""CUDA graphs of whole frame chunks (issue 10): a chunk's launch sequence is captured once and
replayed for every later chunk of the same shape, so the host issues one replay and a few small
copies per chunk instead of ~13 launches (and their Python) per tile.

What a chunk's launches depend on, and how each is kept fixed for a replay:
  - the frame buffer it writes (the CUDA double buffer's slot, a grid cell's view of it): part
    of the graph's key, with the chunk's frame count and its tiles' rectangles;
  - the video's prepared weights: one static copy (StaticInputs), refilled with `copy_` when
    another video's chunk is replayed (~20 MiB for digan-128, ~5 us of HBM time);
  - the embedding bias b(t) of the chunk's frames: a static (F, E) tensor per embedding layer,
    refilled per chunk (F * E values each);
  - parent indices and level coordinates: the tensors of engine.executor.TileGeometry, built by
    the warm-up run and referenced by the graph (kept alive even if the LRU cache drops them).
Everything else a tile allocates (activations, the launchers' tables and folded weights) comes
from the graphs' shared memory pool: replays run one at a time on one stream and no graph's
tensors outlive its replay, so they may share it.

The capture and replay primitives are injected (`GraphOps`): CUDA uses torch.cuda.CUDAGraph; the
CPU tests use a recorder whose "replay" calls the captured function again, which reads only the
static inputs: a missed refill or a stale reference gives wrong frames there as on a GPU.
A capture that fails (an op that synchronises, say) switches the renderer to eager launches with
one warning: frames are never lost to it.
"""
from __future__ import annotations

import dataclasses
import warnings
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from .executor import BlockWeights, TileGeometry

# Tiles per captured chunk: the coordinate cache must hold every rectangle of a chunk between
# the warm-up and the capture (engine.executor.COORD_CACHE_RECTS = 4096); larger chunks replay
# eagerly (their tiles are large, so launches are a small part of their time).
MAX_GRAPH_TILES = 1024


class GraphOps:
    """torch.cuda graphs on `device`: capture(fn) -> a replayable graph."""

    def __init__(self, device: torch.device):
        self.device = device
        self.pool = None

    def capture(self, fn: Callable[[], None]):
        torch.cuda.synchronize(self.device)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            fn()          # warm-up on a side stream (as torch.cuda.graph asks): compiles, fills caches
        torch.cuda.current_stream(self.device).wait_stream(side)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g, pool=self.pool):
            fn()
        self.pool = g.pool()
        return g

    @staticmethod
    def replay(graph) -> None:
        graph.replay()


class StaticBias:
    """Stands for a block's FrameBias inside a graph: `b[f0:f1]` is always the static (F, E)
    tensor that `load` fills with the chunk's frames."""

    def __init__(self, like: torch.Tensor):
        self.buf = torch.empty_like(like)                     # (F, E)

    def load(self, b: torch.Tensor) -> None:
        self.buf.copy_(b)

    def __getitem__(self, frames: slice) -> torch.Tensor:
        f0, f1, _ = frames.indices(frames.stop)
        if f1 - f0 != self.buf.shape[0]:
            raise RuntimeError(f"a graph of {self.buf.shape[0]} frames asked for {f1 - f0}")
        return self.buf


class StaticInputs:
    """One static copy of a video's weights and of its blocks' embedding bias for F frames."""

    def __init__(self, blocks: Sequence[BlockWeights], frames: Tuple[int, int]):
        def clone(t):
            return None if t is None else torch.empty_like(t)
        self.blocks: List[BlockWeights] = []
        self.bias: List[Optional[StaticBias]] = []
        for bw in blocks:
            layers = [dataclasses.replace(lw, W=clone(lw.W), W_e=clone(lw.W_e), bias=clone(lw.bias))
                      for lw in bw.layers]
            sb = StaticBias(bw.b[frames[0]:frames[1]]) if bw.b is not None else None
            self.blocks.append(BlockWeights(layers, A=clone(bw.A), b=sb))
            self.bias.append(sb)
        self.source: Optional[Sequence[BlockWeights]] = None  # the video whose weights are loaded

    def load(self, blocks: Sequence[BlockWeights], frames: Tuple[int, int]) -> None:
        if blocks is not self.source:    # `is`: the cache's list, kept referenced here while loaded
            for st, bw in zip(self.blocks, blocks):
                for s_lw, lw in zip(st.layers, bw.layers):
                    for name in ("W", "W_e", "bias"):
                        if getattr(s_lw, name) is not None:
                            getattr(s_lw, name).copy_(getattr(lw, name))
                if st.A is not None:
                    st.A.copy_(bw.A)
            self.source = blocks
        for sb, bw in zip(self.bias, blocks):
            if sb is not None:
                sb.load(bw.b[frames[0]:frames[1]])


class _Pinned:
    """A TileGeometry seen through the graph: answers from the real one and keeps every tensor
    it handed out, so that the captured launches' inputs outlive any cache eviction."""

    def __init__(self, geometry: TileGeometry):
        self.geometry = geometry
        self.kept: list = []

    def index(self, *a, **k):
        out = self.geometry.index(*a, **k)
        self.kept.append(out)
        return out

    def coords(self, *a, **k):
        out = self.geometry.coords(*a, **k)
        self.kept.append(out)
        return out


class ChunkGraphs:
    """Per chunk shape and buffer: capture on first use, replay afterwards (see the module
    docstring). render(blocks, chunk, buffer, geometry) is the renderer's eager chunk."""

    def __init__(self, render: Callable, geometry: TileGeometry, ops, max_tiles: int = MAX_GRAPH_TILES):
        self._render, self._geometry, self.ops, self.max_tiles = render, geometry, ops, max_tiles
        self._graphs: Dict[tuple, tuple] = {}
        self._static: Dict[int, StaticInputs] = {}            # per frame count
        self.enabled = True
        self.captures = self.replays = 0

    def __call__(self, blocks: Sequence[BlockWeights], chunk, buffer: torch.Tensor) -> torch.Tensor:
        F = chunk.frames[1] - chunk.frames[0]
        if not self.enabled or len(chunk.tiles) > self.max_tiles:
            return self._render(blocks, chunk, buffer=buffer)
        key = (F, tuple(t.rect for t in chunk.tiles), buffer.data_ptr(), tuple(buffer.shape), buffer.stride())
        static = self._static.get(F)
        if static is None:
            static = self._static[F] = StaticInputs(blocks, chunk.frames)
        static.load(blocks, chunk.frames)
        hit = self._graphs.get(key)
        if hit is None:
            pinned = _Pinned(self._geometry)
            try:
                graph = self.ops.capture(lambda: self._render(static.blocks, chunk, buffer=buffer, geometry=pinned))
            except Exception as e:       # never lose frames to a capture: run eagerly from now on
                self.enabled = False
                warnings.warn(f"CUDA graph capture failed ({type(e).__name__}: {e}); rendering with "
                              "eager launches", RuntimeWarning, stacklevel=2)
                return self._render(blocks, chunk, buffer=buffer)
            hit = self._graphs[key] = (graph, pinned)
            self.captures += 1
        self.ops.replay(hit[0])
        self.replays += 1
        return buffer
