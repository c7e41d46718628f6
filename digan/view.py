"""Coordinate views: which pixels of DIGAN's implicit image to render, at what density.

The generator is a coordinate MLP evaluated on a grid per level. At scale s, the level whose
nominal side is n (32, 64, 128 for the released models) is sampled on N = n*s points per axis:
column j has x = j/N*2 - 1 and row i has y = (N-1-i)/N*2 - 1 (left/top edges, y flipped), exactly
as the official code at s = 1 and j, i in [0, N). Integer pixel indices outside [0, N) extend the
coordinate range (zoom-out); a rectangle of indices is a crop. A pixel at one level has its
nearest-neighbour parent at (i//2, j//2) one level down, so the pixels needed at every level are a
rectangle again: `View.level_rects` computes them (floor division keeps this exact for negative
indices).

A `View` names the output rectangle at the final level in final-level pixels:
    top, left      first row/column (may be negative)
    height, width  size in pixels (default: the whole nominal image, R*s)
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch

Rect = Tuple[int, int, int, int]  # (row0, row1, col0, col1), half-open, absolute level indices


def _ceil_div(a: int, b: int) -> int:
    return -((-a) // b)


@dataclass(frozen=True)
class View:
    scale: int = 1                    # super-resolution factor s: every level sampled s x denser
    top: int = 0                      # output rectangle at the final level, in final pixels
    left: int = 0
    height: Optional[int] = None      # None: R*s (whole image)
    width: Optional[int] = None

    def __post_init__(self) -> None:
        if not isinstance(self.scale, int) or self.scale < 1:
            raise ValueError(f"view scale must be a positive integer, got {self.scale!r}")
        for name in ("height", "width"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < 1):
                raise ValueError(f"view {name} must be a positive integer, got {v!r}")

    @staticmethod
    def from_range(img_resolution: int, input_resolution: int, lo: float = -1.0, hi: float = 1.0,
                   scale: int = 1) -> "View":
        """The square view covering coordinates [lo, hi) on both axes, e.g. zoom-out [-1.5, 1.5).

        The range must fall on the base grid (pitch 2/(input_resolution*s)) so that levels nest:
        at input_resolution 32, [-1.5, 1.5) is 48 base pixels, 1.5x the default."""
        if not hi > lo:
            raise ValueError(f"coordinate range must have hi > lo, got [{lo}, {hi})")
        base = input_resolution * scale
        k0, k1 = (lo + 1.0) / 2.0 * base, (hi + 1.0) / 2.0 * base
        if abs(k0 - round(k0)) > 1e-9 or abs(k1 - round(k1)) > 1e-9:
            pitch = 2.0 / base
            raise ValueError(
                f"coordinate range [{lo}, {hi}) does not fall on the base grid (pitch {pitch:g} at "
                f"scale {scale}); choose bounds that are multiples of {pitch:g} from -1")
        f = (img_resolution // input_resolution)
        k0, k1 = int(round(k0)) * f, int(round(k1)) * f
        # Rows count from the top (y = +1 side): the range [lo, hi) in y maps to rows
        # [N - k1, N - k0) of the flipped grid, N = R*s.
        n = img_resolution * scale
        return View(scale=scale, top=n - k1, left=k0, height=k1 - k0, width=k1 - k0)

    def output_size(self, img_resolution: int) -> Tuple[int, int]:
        n = img_resolution * self.scale
        return (self.height if self.height is not None else n, self.width if self.width is not None else n)

    def final_rect(self, img_resolution: int) -> Rect:
        h, w = self.output_size(img_resolution)
        return (self.top, self.top + h, self.left, self.left + w)

    def is_default(self, img_resolution: int) -> bool:
        return self.scale == 1 and self.final_rect(img_resolution) == (0, img_resolution, 0, img_resolution)


def ancestor_rect(rect: Rect, steps: int) -> Rect:
    """The rectangle of ancestors `steps` nearest-upsampling levels down."""
    d = 2 ** steps
    r0, r1, c0, c1 = rect
    return (r0 // d, _ceil_div(r1, d), c0 // d, _ceil_div(c1, d))


def level_rects(final: Rect, num_levels: int) -> List[Rect]:
    """Rects for levels 0 (base) .. num_levels-1 (final) needed to render `final`."""
    return [ancestor_rect(final, num_levels - 1 - k) for k in range(num_levels)]


def level_coords(rect: Rect, n_total: int, dtype=torch.float32, device=None) -> Tuple[torch.Tensor, torch.Tensor]:
    """xs (w,) and ys (h,) for a rect at a level sampled on n_total points per axis.

    Computed in float64 and rounded once, so every pixel's coordinate is the same number whatever
    tile it is rendered in."""
    r0, r1, c0, c1 = rect
    cols = torch.arange(c0, c1, dtype=torch.float64, device=device)
    rows = torch.arange(r0, r1, dtype=torch.float64, device=device)
    xs = cols / n_total * 2 - 1
    ys = (n_total - 1 - rows) / n_total * 2 - 1
    return xs.to(dtype), ys.to(dtype)


def upsample_index(child: Rect, parent: Rect, device=None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Row and column indices into the parent rect for each child row/column (nearest x2)."""
    r0, r1, c0, c1 = child
    p0, _, q0, _ = parent
    rows = torch.div(torch.arange(r0, r1, device=device), 2, rounding_mode="floor") - p0
    cols = torch.div(torch.arange(c0, c1, device=device), 2, rounding_mode="floor") - q0
    return rows, cols


def num_levels(img_resolution: int, input_resolution: int) -> int:
    return int(math.log2(img_resolution // input_resolution)) + 1
