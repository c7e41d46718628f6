"""Planner: cut a render into tiles (frames x pixel rectangles) that fit a memory budget.

Because every layer is 1x1 and every upsampling nearest (DESIGN §2), a tile needs only the
ancestors of its pixels at each level (`digan.view.level_rects`), so any tiling gives the same
pixels with the same total work. Row bands are aligned to the final/base factor so that ancestor
rectangles of neighbouring bands do not overlap (no recomputation); the reduction order inside a
row does not depend on the tile (kernels/), so frames are bit-identical whatever the plan.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, List, Tuple

from digan.config import GeneratorConfig
from digan.program import generator_program
from digan.view import Rect, View, level_rects

MiB = 1 << 20
GiB = 1 << 30


@dataclass(frozen=True)
class Tile:
    frames: Tuple[int, int]  # [f0, f1) indices into one video's time list
    rect: Rect               # final-level rect (row0, row1, col0, col1), absolute indices


@dataclass
class FrameChunk:
    frames: Tuple[int, int]
    tiles: List[Tile] = field(default_factory=list)


@dataclass
class Plan:
    cfg: GeneratorConfig
    view: View
    num_frames: int
    frames_per_chunk: int             # frames rendered together (and held as uint8)
    rects: List[Rect]                 # spatial tiles of one frame (final-level rects)
    tile_bytes: int                   # estimated peak working memory of one tile
    chunk_bytes: int                  # the uint8 frame buffer of one chunk
    budget: int

    def chunks(self, start: int = 0, end: int | None = None) -> Iterator[FrameChunk]:
        """Frame chunks covering [start, end) (default: all frames), each with its tiles, made one
        at a time (a 10^9-frame plan never holds a list of its chunks). The range is checked now."""
        end = self.num_frames if end is None else end
        if not 0 <= start < end <= self.num_frames:
            raise ValueError(f"frame range [{start}, {end}) outside [0, {self.num_frames})")
        return self._chunks(start, end)

    def _chunks(self, start: int, end: int) -> Iterator[FrameChunk]:
        for f0 in range(start, end, self.frames_per_chunk):
            f1 = min(f0 + self.frames_per_chunk, end)
            yield FrameChunk((f0, f1), [Tile((f0, f1), r) for r in self.rects])

    @property
    def num_chunks(self) -> int:
        return -(-self.num_frames // self.frames_per_chunk)

    @property
    def num_tiles(self) -> int:
        return self.num_chunks * len(self.rects)

    def describe(self) -> str:
        r0, r1, c0, c1 = self.rects[0]
        return (f"{self.num_frames} frames in chunks of {self.frames_per_chunk}, {len(self.rects)} tile(s) per "
                f"chunk of <= {self.frames_per_chunk}x{r1 - r0}x{c1 - c0} px, "
                f"~{(self.tile_bytes + self.chunk_bytes) / MiB:.0f} MiB of a {self.budget / MiB:.0f} MiB budget")


def level_channels(cfg: GeneratorConfig) -> List[int]:
    """Widest activation per level (base level = all blocks at <= input_resolution)."""
    return generator_program(cfg).level_channels()


def tile_bytes(cfg: GeneratorConfig, frames: int, rect: Rect, act_bytes: int = 4) -> int:
    """Upper estimate of the working memory of one tile (all dtypes counted as fp32 except the
    activations, which use act_bytes).

    Per row at a level: input and output activations (2*C), the fp32 pre-activation/GEMM output
    (C), the embedding slab of the torch path (2E fp32, sin/cos generated per row block), the skip
    image and its upsampled copy (2*3 fp32), and gather indices (8). The parent level's
    activations and the split-conv0 term stay alive while the child is computed."""
    prog = generator_program(cfg)
    rects = level_rects(rect, prog.num_levels)
    chans = prog.level_channels()
    total = 0
    prev = 0
    for (r0, r1, c0, c1), C in zip(rects, chans):
        rows = frames * (r1 - r0) * (c1 - c0)
        here = rows * (2 * C * act_bytes + 4 * C + 4 * cfg.emb_channels + 24 + 8)
        total = max(total, here + prev)
        prev = rows * (C * act_bytes + 4 * C + 12)
    return int(total * 1.25) + 4 * MiB  # allocator slack and row padding


def make_plan(cfg: GeneratorConfig, view: View, num_frames: int, budget: int, act_bytes: int = 4,
              max_frames_per_chunk: int = 64, max_tile_rows: int = 1 << 22,
              max_tile_bytes: int | None = None) -> Plan:
    """Largest tiles within `budget` bytes (and `max_tile_rows` / `max_tile_bytes`, caps for
    speed): whole frames (as many as fit) if one frame fits, else row bands of whole frames, else
    square-ish blocks. Rectangles are aligned to the final/base factor so ancestors nest without
    overlap."""
    if num_frames < 1:
        raise ValueError(f"number of frames must be >= 1, got {num_frames}")
    if budget <= 0:
        raise ValueError(f"memory budget must be positive, got {budget}")
    top, bottom, left, right = view.final_rect(cfg.img_resolution)
    H, W = bottom - top, right - left
    align = cfg.img_resolution // cfg.input_resolution  # final pixels per base pixel

    def chunk_buf(f: int) -> int:
        return f * H * W * 3  # the uint8 frames of one chunk

    def fits(f: int, rect: Rect) -> bool:
        r0, r1, c0, c1 = rect
        if f * (r1 - r0) * (c1 - c0) > max_tile_rows:
            return False
        t = tile_bytes(cfg, f, rect, act_bytes)
        if max_tile_bytes is not None and t > max_tile_bytes and (f > 1 or (r1 - r0) > align):
            return False  # a cache-friendly cap, never below one frame's smallest aligned band
        return t + chunk_buf(f) <= budget

    full = (top, bottom, left, right)
    if fits(1, full):
        lo, hi = 1, min(num_frames, max_frames_per_chunk)
        while lo < hi:  # largest frame count that fits
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if fits(mid, full) else (lo, mid - 1)
        f_chunk, rects = lo, [full]
    else:
        f_chunk = 1
        rects = _split_frame(full, align, lambda r: fits(1, r))
        if rects is None:
            need = tile_bytes(cfg, 1, (0, align, 0, align), act_bytes) + chunk_buf(1)
            raise ValueError(
                f"memory budget {budget / MiB:.1f} MiB is too small: one {H}x{W} frame buffer plus the "
                f"smallest tile needs {need / MiB:.1f} MiB; raise --memory-budget")
    return Plan(cfg=cfg, view=view, num_frames=num_frames, frames_per_chunk=f_chunk, rects=rects,
                tile_bytes=max(tile_bytes(cfg, f_chunk, r, act_bytes) for r in rects),
                chunk_bytes=chunk_buf(f_chunk), budget=budget)


def _aligned_cuts(lo: int, hi: int, step: int) -> List[int]:
    """Cut points in [lo, hi] on multiples of `step` (absolute indices), plus the ends."""
    first = -(-lo // step) * step
    cuts = [lo] + [c for c in range(first, hi, step) if c > lo] + [hi]
    return cuts


def _split_frame(full: Rect, align: int, fits) -> List[Rect] | None:
    top, bottom, left, right = full
    H, W = bottom - top, right - left
    # Row bands, full width: the most band height that fits (multiples of `align`).
    for band in _candidate_sizes(H, align):
        rect = (top, min(bottom, top + band), left, right)
        if fits(rect):
            cuts = _aligned_cuts(top, bottom, band)
            return [(a, b, left, right) for a, b in zip(cuts[:-1], cuts[1:])]
    # Blocks: square-ish, aligned.
    for side in _candidate_sizes(max(H, W), align):
        rect = (top, min(bottom, top + side), left, min(right, left + side))
        if fits(rect):
            rcuts, ccuts = _aligned_cuts(top, bottom, side), _aligned_cuts(left, right, side)
            return [(a, b, c, d) for a, b in zip(rcuts[:-1], rcuts[1:]) for c, d in zip(ccuts[:-1], ccuts[1:])]
    return None


def _candidate_sizes(n: int, align: int) -> List[int]:
    """Descending multiples of `align` from n down to align, halving (at most ~log2 n tries)."""
    size = -(-n // align) * align
    out = []
    while size >= align:
        out.append(size)
        if size == align:
            break
        size = max(align, (size // 2) // align * align)
    return out
