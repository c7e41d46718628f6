"""DiffAugment (Zhao et al. 2020) as DIGAN applies it to the discriminator's inputs.

DIGAN trains with policy 'color,translation' on its 7-channel pairs x = [frame0 RGB, frame1 RGB,
ΔT] (B, 7, H, W).  The official code views the pairs as frames (2B, 3, H, W) ordered (b t), makes
ONE random draw per pair shared by its two frames, applies the standard DiffAugment formulas and
puts the ΔT plane back untouched:

  brightness  x + (u - 0.5)                    u ~ U(0, 1): add U(-0.5, 0.5)
  saturation  (x - m_c) * 2u + m_c             m_c: per-pixel mean over channels; scale U(0, 2)
  contrast    (x - m) * (u + 0.5) + m          m: mean of the frame (C, H, W); scale U(0.5, 1.5)
  translation out[i, j] = x[i + dy, j + dx]    integer dy, dx ~ U{-s..s}, s = int(side*0.125 + 0.5),
                                               zero outside the frame (DiffAugment's 1-pixel zero pad)
  cutout      a zeroed square of side int(side*0.5 + 0.5) (not in DIGAN's policy; here for completeness)

The means are per frame, so a pair's two frames get the same transform but each its own m / m_c.
Everything is differentiable with respect to x (it is applied to fake images) and deterministic
given a torch.Generator (draws are made on its device, then moved to x's; without one they come
from the global RNG of x's device, in the official order).

API: `sample_params` draws an AugmentParams for n items; `apply_params` applies it to a frame
batch; `augment_pairs` / `augment_frames` do both.  The loss augments the 7-channel input once
and takes the image head's frames from the result with `split_pair`, so both heads see the same
augmented frames; to augment another tensor with the draws of a pair batch, use
`params.per_frame()` with `apply_params`.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

POLICIES = ("color", "translation", "cutout")
DIGAN_POLICY = "color,translation"


def parse_policy(policy: str) -> Tuple[str, ...]:
    """'color,translation' -> ('color', 'translation'); '' -> ()."""
    names = tuple(p.strip() for p in policy.split(",") if p.strip())
    for p in names:
        if p not in POLICIES:
            raise ValueError(f"unknown DiffAugment policy {p!r}; choose from {POLICIES}")
    return names


@dataclass
class AugmentParams:
    """One draw per item; None = that op is not in the policy.  Fields are in application order."""
    brightness: Optional[torch.Tensor] = None   # (n,) added value, in [-0.5, 0.5)
    saturation: Optional[torch.Tensor] = None   # (n,) scale of the deviation from the channel mean, [0, 2)
    contrast: Optional[torch.Tensor] = None     # (n,) scale of the deviation from the frame mean, [0.5, 1.5)
    translation: Optional[torch.Tensor] = None  # (n, 2) int64 (dy, dx): out[i, j] = in[i + dy, j + dx]
    cutout: Optional[torch.Tensor] = None       # (n, 2) int64 (cy, cx): centre of the zeroed square

    def __len__(self) -> int:
        for f in fields(self):
            v = getattr(self, f.name)
            if v is not None:
                return len(v)
        return 0

    def map(self, fn) -> "AugmentParams":
        return AugmentParams(**{f.name: None if getattr(self, f.name) is None else fn(getattr(self, f.name))
                                for f in fields(self)})

    def per_frame(self, frames_per_item: int = 2) -> "AugmentParams":
        """Pair draws -> frame draws, (b t) order: each item's draw repeated for its frames."""
        return self.map(lambda t: t.repeat_interleave(frames_per_item, dim=0))

    def to(self, device) -> "AugmentParams":
        return self.map(lambda t: t.to(device))


def sample_params(n: int, height: int, width: int, policy: str = DIGAN_POLICY,
                  generator: Optional[torch.Generator] = None, device=None,
                  translation_ratio: float = 0.125, cutout_ratio: float = 0.5) -> AugmentParams:
    """Draws for n items (pairs or frames) of size height x width, made on the generator's device
    (or on `device` from the global RNG when no generator is given), returned on `device`.  The
    draw order is fixed (brightness, saturation, contrast, dy, dx, cutout), so a seeded generator
    reproduces them; with the global RNG it is the official code's order."""
    ops = parse_policy(policy)
    if generator is not None:
        gdev = generator.device
    else:
        gdev = torch.device("cpu") if device is None else torch.device(device)

    def rand():
        return torch.rand(n, generator=generator, device=gdev)

    def randint(low, high):  # [low, high] inclusive, (n, 1)
        return torch.randint(low, high + 1, (n, 1), generator=generator, device=gdev)

    p = AugmentParams()
    if "color" in ops:
        p.brightness = rand() - 0.5
        p.saturation = rand() * 2
        p.contrast = rand() + 0.5
    if "translation" in ops:
        sy, sx = int(height * translation_ratio + 0.5), int(width * translation_ratio + 0.5)
        p.translation = torch.cat([randint(-sy, sy), randint(-sx, sx)], dim=1)
    if "cutout" in ops:
        ch, cw = int(height * cutout_ratio + 0.5), int(width * cutout_ratio + 0.5)
        p.cutout = torch.cat([randint(0, height - 1 + (1 - ch % 2)), randint(0, width - 1 + (1 - cw % 2))], dim=1)
    return p if device is None else p.to(device)


# ---- the ops, each (N, C, H, W) -> (N, C, H, W) with per-item parameters -------------------------

def _per_item(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.to(device=x.device, dtype=x.dtype).view(-1, 1, 1, 1)


def translate(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """out[n, :, i, j] = x[n, :, i + dy, j + dx], zero where that falls outside; shift (N, 2) = (dy, dx)."""
    n, c, h, w = x.shape
    shift = shift.to(x.device)
    xp = F.pad(x, [1, 1, 1, 1])  # (N, C, H+2, W+2); the ring of zeros is the fill value
    rows = (torch.arange(h, device=x.device)[None, :] + shift[:, 0:1] + 1).clamp(0, h + 1)  # (N, H)
    cols = (torch.arange(w, device=x.device)[None, :] + shift[:, 1:2] + 1).clamp(0, w + 1)  # (N, W)
    xp = xp.gather(2, rows[:, None, :, None].expand(n, c, h, w + 2))  # (N, C, H, W+2)
    return xp.gather(3, cols[:, None, None, :].expand(n, c, h, w))    # (N, C, H, W)


def cutout(x: torch.Tensor, centre: torch.Tensor, ratio: float = 0.5) -> torch.Tensor:
    """Zeroes a square of side int(side*ratio + 0.5) centred at centre (N, 2) = (cy, cx), clipped."""
    n, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    centre = centre.to(x.device)
    i = torch.arange(h, device=x.device)[None, :] - (centre[:, 0:1] - ch // 2)  # (N, H) offset in square
    j = torch.arange(w, device=x.device)[None, :] - (centre[:, 1:2] - cw // 2)
    inside = ((i >= 0) & (i < ch))[:, :, None] & ((j >= 0) & (j < cw))[:, None, :]  # (N, H, W)
    return x * (~inside).to(x.dtype)[:, None]


def apply_params(x: torch.Tensor, params: AugmentParams, cutout_ratio: float = 0.5) -> torch.Tensor:
    """Applies one draw per item of x (N, C, H, W); len(params) must be N."""
    if x.dim() != 4:
        raise ValueError(f"expected frames (N, C, H, W), got shape {tuple(x.shape)}")
    if len(params) not in (0, x.shape[0]):
        raise ValueError(f"{len(params)} draws for {x.shape[0]} frames")
    if params.brightness is not None:
        x = x + _per_item(params.brightness, x)
    if params.saturation is not None:
        m = x.mean(dim=1, keepdim=True)
        x = (x - m) * _per_item(params.saturation, x) + m
    if params.contrast is not None:
        m = x.mean(dim=[1, 2, 3], keepdim=True)
        x = (x - m) * _per_item(params.contrast, x) + m
    if params.translation is not None:
        x = translate(x, params.translation)
    if params.cutout is not None:
        x = cutout(x, params.cutout, cutout_ratio)
    return x


# ---- DIGAN's inputs --------------------------------------------------------------------------------

def split_pair(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(B, 7, H, W) -> frames (2B, 3, H, W) in (b t) order, ΔT plane (B, 1, H, W)."""
    if x.dim() != 4 or x.shape[1] != 7:
        raise ValueError(f"expected pairs (B, 7, H, W), got shape {tuple(x.shape)}")
    b, _, h, w = x.shape
    return x[:, :6].reshape(b * 2, 3, h, w), x[:, 6:7]


def join_pair(frames: torch.Tensor, dt: torch.Tensor) -> torch.Tensor:
    """Inverse of split_pair: frames (2B, 3, H, W) (b t) order + ΔT (B, 1, H, W) -> (B, 7, H, W)."""
    b = dt.shape[0]
    if frames.shape[0] != 2 * b:
        raise ValueError(f"{frames.shape[0]} frames for {b} pairs")
    return torch.cat([frames.reshape(b, 6, *frames.shape[2:]), dt], dim=1)


def augment_pairs(x: torch.Tensor, policy: str = DIGAN_POLICY, generator: Optional[torch.Generator] = None,
                  params: Optional[AugmentParams] = None) -> torch.Tensor:
    """DiffAugment of DIGAN's pairs (B, 7, H, W): one draw per pair for both frames, ΔT untouched.

    params: draws for B pairs from sample_params (to reuse them); drawn from `generator` if None.
    """
    frames, dt = split_pair(x)
    if params is None:
        params = sample_params(x.shape[0], x.shape[2], x.shape[3], policy, generator, device=x.device)
    return join_pair(apply_params(frames, params.per_frame(2)), dt)


def augment_frames(x: torch.Tensor, policy: str = DIGAN_POLICY, generator: Optional[torch.Generator] = None,
                   params: Optional[AugmentParams] = None) -> torch.Tensor:
    """DiffAugment of single frames (B, 3, H, W) with one draw per frame (the image head's input)."""
    if params is None:
        params = sample_params(x.shape[0], x.shape[2], x.shape[3], policy, generator, device=x.device)
    return apply_params(x, params)
