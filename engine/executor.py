"""Executor: per video, prepare modulated weights once; per tile, run the fused layer chain.

Row layout inside a tile: (frame, row, col) row-major, channels last, so every layer is one GEMM
[rows, C_in] x [C_in, C_out] (DESIGN §2). The chain is the generator's program
(digan/program.py), per tile, level by level:
    b4      x = act(e @ W_e^T + bias)                       (embedding generated in the prologue)
    b8..32  x = act(x @ W^T + bias) per conv
    b64+    y = x_parent @ W_h^T at the parent resolution   (split conv0, 4x fewer rows)
            x = act(e @ W_e^T + y[parent(row)] + bias)
    torgb   img = clamp(x @ W_rgb^T + b) + img_parent[parent(row)]
    final   uint8 = rint((img + 1) * 127.5) clipped
Backends: 'triton' (CUDA) runs the fused kernels; 'torch' runs the same ops in plain PyTorch and
is the CPU path. Both live in kernels/ beside each other.

Cost per frame does not depend on the length of the video (issue 8): a video's modulated weights
are built once and cached across `frames()` calls (one per segment in `digan render`), and the
embedding bias b(t) is computed per block of BIAS_BLOCK frames when those frames are rendered,
from the time grid's parameters (`engine.request.TimeGrid`), never for the whole grid.

No host work per tile (issue 10): the parent indices and level coordinates of a tile depend only
on its frame count and rectangle, so they are built once per shape on the render device and kept
(`TileGeometry`, one per generator); a tile then runs the fused ops and nothing else.
"""
from __future__ import annotations

import functools
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch

from digan.networks import Generator
from digan.program import (
    LayerWeights,
    Program,
    generator_program,
    layer_fuser,
    layer_weights,
    level_groups,
    level_index,
    level_xy,
    modulate_layers,
    run_chain,
)
from digan.view import Rect, level_rects
from kernels import fmm_linear, fmm_modulate, nearest_index, torgb_modulate
from kernels._common import COMPUTE_DTYPES
from kernels.linear_rgb import fold_supported

from .plan import Tile
from .request import TimeGrid

# Frames per embedding-bias computation. Blocks are aligned to absolute frame 0 and always this
# long (padded past the end of the grid), so every frame's b(t) comes out of the same GEMM shape
# at the same row whatever the segment, chunk or request length: frames do not depend on those.
BIAS_BLOCK = 64
# Tile shapes whose parent indices are kept (F * h * w int64 per level): a plan has at most a few
# (full and last row band or block, full and last frame chunk; see TileGeometry).
INDEX_CACHE_SHAPES = 16
# Level rectangles whose coordinates are kept ((h + w) fp32 per level each): every tile of a plan.
COORD_CACHE_RECTS = 4096

__all__ = ["BIAS_BLOCK", "COMPUTE_DTYPES", "BlockWeights", "FrameBias", "TileGeometry", "prepare_video",
           "render_tile"]


@dataclass
class BlockWeights:
    """One block's prepared weights: its layers in program order (ToRGB last) and its embedding."""
    layers: List[LayerWeights]
    A: Optional[torch.Tensor] = None  # (E, 2) fp32 embedding frequencies
    b: Optional["FrameBias"] = None   # b[f0:f1] -> (f1 - f0, E) fp32 embedding bias per frame
    # A block whose level runs as one fused kernel (kernels.fmm_level; fused_levels): the weights
    # of its convs after conv0 stacked (L, C, C) and their biases (L, C); the layers' W are views.
    conv_W: Optional[torch.Tensor] = None
    conv_b: Optional[torch.Tensor] = None

    def nbytes(self) -> int:
        ts = [t for lw in self.layers for t in (lw.W, lw.W_e) if t is not None]
        return sum(t.numel() * t.element_size() for t in ts)


class FrameBias:
    """The embedding bias b(t) = beta + motion(t) of one block, for any frame range, computed when
    asked in blocks of BIAS_BLOCK frames aligned to frame 0 (O(BIAS_BLOCK) memory whatever the
    length of the grid). Keeps the blocks of the last range asked for: all tiles of a chunk ask
    for the same frames."""

    def __init__(self, fuser, w: torch.Tensor, z_motion: torch.Tensor, grid: TimeGrid):
        self.fuser, self.w, self.z_motion, self.grid = fuser, w, z_motion, grid  # w, z_motion (1, w_dim)
        self._blocks: Dict[int, torch.Tensor] = {}
        self._last: Optional[Tuple[int, int, torch.Tensor]] = None

    @torch.no_grad()
    def _block(self, j: int) -> torch.Tensor:
        Ts = self.grid.slice(j * BIAS_BLOCK, (j + 1) * BIAS_BLOCK, device=self.w.device)  # (BIAS_BLOCK,)
        return self.fuser.params(self.w, self.z_motion, Ts[None])[1][0]                   # (BIAS_BLOCK, E)

    def __len__(self) -> int:
        return len(self.grid)

    def __getitem__(self, frames: slice) -> torch.Tensor:
        if not isinstance(frames, slice) or frames.step not in (None, 1):
            raise TypeError("FrameBias takes a frame range, b[f0:f1]")
        f0, f1, _ = frames.indices(len(self.grid))
        if self._last is not None and self._last[:2] == (f0, f1):
            return self._last[2]
        if f1 <= f0:
            return self._block(0)[:0]
        js = range(f0 // BIAS_BLOCK, (f1 - 1) // BIAS_BLOCK + 1)
        self._blocks = {j: self._blocks[j] if j in self._blocks else self._block(j) for j in js}
        a, z = f0 - js[0] * BIAS_BLOCK, f1 - js[0] * BIAS_BLOCK
        # Within one block: a view of its rows (contiguous, the same values as a copy).
        b = self._blocks[js[0]][a:z] if len(js) == 1 else torch.cat([self._blocks[j] for j in js])[a:z].contiguous()
        self._last = (f0, f1, b)
        return b


class TileGeometry:
    """Parent indices and level coordinates of tiles on the render device, built once per shape.

    A tile's parent index at a level depends on its frame count, its rectangle's size and the
    rectangle's offset to twice its parent's (see kernels.nearest_index), not on where it lies:
    the bands of a plan share one. Indices are kept per spatial shape for the most frames asked
    for; fewer frames are a prefix of it (rows are frame-major), kept as a view. Coordinates
    ((h + w) values per level) are kept per rectangle. Both caches are LRU and bounded, keyed by
    the program too (a TileGeometry may serve several generators)."""

    def __init__(self, max_shapes: int = INDEX_CACHE_SHAPES, max_rects: int = COORD_CACHE_RECTS):
        if max_shapes < 1 or max_rects < 1:
            raise ValueError(f"cache sizes must be >= 1, got {max_shapes}, {max_rects}")
        self.max_shapes, self.max_rects = max_shapes, max_rects
        self._index: "OrderedDict[tuple, Tuple[int, Dict[int, List[Optional[torch.Tensor]]]]]" = OrderedDict()
        self._coords: "OrderedDict[tuple, list]" = OrderedDict()
        self.builds = 0                # index / coordinate sets built (for tests)

    @staticmethod
    def _get(cache: OrderedDict, key):
        hit = cache.get(key)
        if hit is not None:
            cache.move_to_end(key)
        return hit

    @staticmethod
    def _put(cache: OrderedDict, key, value, limit: int) -> None:
        cache[key] = value
        while len(cache) > limit:
            cache.popitem(last=False)

    def index(self, prog: Program, frames: int, rects: Sequence[Rect],
              device: torch.device) -> List[Optional[torch.Tensor]]:
        """Per level: (frames * h * w,) int64 parent row of each row (None at level 0)."""
        shape = tuple((r1 - r0, c1 - c0, r0 - 2 * p0, c0 - 2 * q0, p1 - p0, q1 - q0)
                      for (r0, r1, c0, c1), (p0, p1, q0, q1) in zip(rects[1:], rects[:-1]))
        key = (prog, str(device), shape)
        hit = self._get(self._index, key)
        if hit is not None and frames in hit[1]:
            return hit[1][frames]
        if hit is None or frames > hit[0]:
            self.builds += 1
            full = level_index(prog, frames, rects, nearest_index, device=device)
            self._put(self._index, key, (frames, {frames: full}), self.max_shapes)
            return full
        F_max, views = hit
        rows = [None if t is None else t.numel() // F_max * frames for t in views[F_max]]
        views[frames] = [None if t is None else t[:n] for t, n in zip(views[F_max], rows)]
        return views[frames]

    def coords(self, prog: Program, rects: Sequence[Rect], scale: int,
               device: torch.device) -> List[Optional[Tuple[torch.Tensor, torch.Tensor]]]:
        """Per level: (xs (w,), ys (h,)) fp32 of the levels with an embedding (None elsewhere)."""
        key = (prog, str(device), tuple(rects), scale)
        hit = self._get(self._coords, key)
        if hit is None:
            self.builds += 1
            hit = level_xy(prog, rects, scale, device=device)
            self._put(self._coords, key, hit, self.max_rects)
        return hit


# One TileGeometry (and program) per generator, alive as long as the generator: the videos of a
# render share them.
_PER_GENERATOR: "weakref.WeakKeyDictionary[Generator, Tuple[Program, TileGeometry]]" = weakref.WeakKeyDictionary()


def _program_and_geometry(G: Generator) -> Tuple[Program, TileGeometry]:
    hit = _PER_GENERATOR.get(G)
    if hit is None:
        hit = _PER_GENERATOR[G] = (generator_program(G.cfg), TileGeometry())
    return hit


@torch.no_grad()
def prepare_video(G: Generator, ws: torch.Tensor, z_motion: torch.Tensor, Ts: Union[TimeGrid, torch.Tensor],
                  precision: str, backend: str) -> List[BlockWeights]:
    """ws (num_ws, w_dim), z_motion (w_dim,), Ts a TimeGrid (or (T,) times) -> modulated weights of
    every layer, once per video; the embedding bias per frame is computed as frames are rendered."""
    dtype = COMPUTE_DTYPES[precision]
    grid = Ts if isinstance(Ts, TimeGrid) else TimeGrid(values=tuple(float(t) for t in Ts.reshape(-1).tolist()))
    syn = G.synthesis
    prog, _ = _program_and_geometry(G)
    mods = modulate_layers(syn, prog, ws[None],
                           functools.partial(fmm_modulate, out_dtype=dtype, backend=backend),
                           functools.partial(torgb_modulate, out_dtype=dtype))   # (1, Cout, Cin) each
    out = [BlockWeights([]) for _ in syn.blocks()]
    for lw in layer_weights(syn, prog, [W[0] for W in mods], contiguous=True):
        layer, bw = lw.layer, out[lw.layer.block]
        bw.layers.append(lw)
        if layer.emb:
            fuser, w = layer_fuser(syn, layer), ws[None, layer.w]                 # w (1, w_dim)
            A, _ = fuser.params(w, z_motion[None], grid.slice(0, 1, device=ws.device)[None])
            bw.A, bw.b = A[0].contiguous(), FrameBias(fuser, w, z_motion[None], grid)
    for block in fused_levels(prog, precision, backend, ws.device):
        _stack_convs(out[block])
    return out


def fused_levels(prog: Program, precision: str, backend: str, device: torch.device) -> List[int]:
    """The blocks whose level runs as one kernel (kernels.fmm_level): on the Triton backend, the
    level groups (split conv0, convs, ToRGB; digan.program.level_groups) whose width and
    precision the fused kernel compiles for without spilling on this device's arch
    (kernels.level.fused_level_spill_free, from python -m kernels.compile_level)."""
    if backend != "triton" or not _FUSE_LEVELS:
        return []
    from kernels.level import _target_arch, fused_level_spill_free
    arch = _target_arch(torch.device(device))
    return [prog.layers[i].block for i in level_groups(prog.layers)
            if fused_level_spill_free(prog.layers[i].c_out, precision, arch)]


def _stack_convs(bw: BlockWeights) -> None:
    """A fused block's convs after conv0 as one (L, C, C) stack (the layers keep views of it),
    when they share conv0's clamp (the fused kernel takes one clamp for the level's convs)."""
    convs = [lw for lw in bw.layers if lw.layer.kind == "conv"]
    if any(lw.clamp != bw.layers[0].clamp for lw in convs):
        return
    C = bw.layers[0].layer.c_out
    W = bw.layers[0].W_e
    bw.conv_W = torch.stack([lw.W for lw in convs]) if convs else W.new_empty((0, C, C))   # (L, C, C)
    bw.conv_b = torch.stack([lw.bias for lw in convs]) if convs else bw.layers[0].bias.new_empty((0, C))
    for n, lw in enumerate(convs):
        lw.W, lw.bias = bw.conv_W[n], bw.conv_b[n]


def _fused_level(blocks: List[BlockWeights], precision: str, backend: str, group, *, emb, pre_add, pre_index,
                 img, img_index, act_out: bool, out_dtype=None, out_uint8: bool = False,
                 out: Optional[torch.Tensor] = None):
    """run_chain's `level` op: a level in one kernel (kernels.fmm_level); -> the image, or (image,
    its last activation) with act_out (a level below the top)."""
    from kernels.level import fmm_level
    split, rgb = group[0], group[-1]
    bw = blocks[split.layer.block]
    return fmm_level(split.W_e, split.bias, bw.conv_W, bw.conv_b, rgb.W, rgb.bias, **emb, pre_add=pre_add,
                     pre_index=pre_index, img=img, img_index=img_index, clamp=split.clamp, rgb_clamp=rgb.clamp,
                     out_uint8=out_uint8, precision=precision, backend=backend, out=out, act_out=act_out)


def _fold_rgb(precision: str, backend: str, W, x, layer_kw: dict, rgb: LayerWeights, img, img_index,
              rgb_kw: dict):
    """run_chain's `linear_rgb` op: a layer and its block's ToRGB in one kernel (Triton)."""
    from kernels.linear_rgb import fmm_linear_torgb
    if rgb_kw.get("out_dtype") not in (None, torch.float32) or set(rgb_kw) - {"out_dtype", "out_uint8", "out"}:
        raise ValueError(f"a folded ToRGB stores fp32 or uint8 rows or into out=, got {rgb_kw}")
    return fmm_linear_torgb(W, x, rgb_weight=rgb.W, rgb_bias=rgb.bias, rgb_clamp=rgb.clamp, img=img,
                            img_index=img_index, img_uint8=rgb_kw.get("out_uint8", False), img_out=rgb_kw.get("out"),
                            precision=precision, backend=backend, **layer_kw)


# Fused ops on (tests compare them with the per-layer chain by switching these off): the final
# level in one kernel, and each ToRGB folded into the layer before it (Triton backend).
_FUSE_LEVELS = True
_FOLD_RGB = True


@torch.no_grad()
def render_tile(G: Generator, blocks: List[BlockWeights], tile: Tile, scale: int, precision: str, backend: str,
                device: torch.device, out: str = "uint8", geometry: Optional[TileGeometry] = None,
                into: Optional[torch.Tensor] = None) -> torch.Tensor:
    """-> uint8 (F, h, w, 3) (out='uint8') or fp32 (F, h, w, 3) unclipped (out='float').

    geometry: where the tile's indices and coordinates are kept (default: the generator's).
    into: an (F, h, w, 3) view (the tile's place in the chunk's frame buffer) that the last ToRGB
    stores into directly (no copy of the tile on the Triton backend); returned."""
    prog, default_geometry = _program_and_geometry(G)
    geometry = geometry or default_geometry
    dtype = COMPUTE_DTYPES[precision]
    f0, f1 = tile.frames
    F = f1 - f0
    rects = level_rects(tile.rect, prog.num_levels)
    device = torch.device(device)
    index = geometry.index(prog, F, rects, device)
    xy = geometry.coords(prog, rects, scale, device)
    weights, emb = [], {}
    for bw in blocks:
        for lw in bw.layers:
            if lw.layer.emb:
                xs, ys = xy[lw.layer.level]
                emb[len(weights)] = dict(emb_A=bw.A, emb_b=bw.b[f0:f1], xs=xs, ys=ys)
            weights.append(lw)
    to_u8 = out == "uint8"
    last = dict(out_dtype=None, out_uint8=True) if to_u8 else dict(out_dtype=torch.float32)
    if into is not None:
        last["out"] = into
    # prepare_video stacked a block's convs exactly when fused_levels chose the fused level for
    # this precision, backend and device: decided once per video, not per tile.
    level_at = {n for n, lw in enumerate(weights)
                if lw.layer.kind == "split" and blocks[lw.layer.block].conv_W is not None}
    level = (functools.partial(_fused_level, blocks, precision, backend)
             if level_at and backend == "triton" else None)
    img = run_chain(weights, functools.partial(fmm_linear, precision=precision, backend=backend), index, emb,
                    act_kw=dict(out_dtype=dtype), feat_kw=dict(out_dtype=dtype),
                    rgb_kw=dict(out_dtype=torch.float32), last_rgb_kw=last, level=level, level_at=level_at,
                    linear_rgb=functools.partial(_fold_rgb, precision, backend)
                    if backend == "triton" and _FOLD_RGB and fold_supported(precision) else None)
    if into is not None:
        return into
    h, w = rects[-1][1] - rects[-1][0], rects[-1][3] - rects[-1][2]
    return img.view(F, h, w, -1)


def __getattr__(name: str):
    """`engine.executor.Renderer` (its home before engine/renderer.py) still imports, lazily:
    renderer.py imports this module, so an import at the top would be circular."""
    if name == "Renderer":
        from .renderer import Renderer
        return Renderer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
