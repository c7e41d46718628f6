"""What to render: the `RenderRequest` dataclass and how seeds become codes and times.

Seeds: video k with seed s draws z = randn(z_dim) then z_motion = randn(w_dim) from
torch.Generator().manual_seed(s) on the CPU (so a seed means the same video on every machine);
`motion_seeds` replaces the z_motion draw with one from its own seed (same content, other motion).
Explicit codes (`z`, `z_motion`: official fixtures, codes found elsewhere) replace the draws; the
seeds then only count and name the videos.
Times: `frames` points on linspace(t_start, t_end); `interpolate` = k renders (frames-1)*k+1
points on the same range (k x the frame rate, slow motion at the same fps); t outside [0, 1]
extrapolates. Explicit `times` override all of that.

A time grid is described by its parameters, never by its values (`TimeGrid`): a 10^9-frame
request costs the same bytes, hash and memory as a 16-frame one, and the times of frames [f0, f1)
are computed when those frames are rendered (issue 8).
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import torch

from digan.view import View
from kernels._common import PRECISIONS

BACKENDS = ("auto", "torch", "triton")


@dataclass(frozen=True)
class TimeGrid:
    """The times of a video's frames, by parameters: `count` points on linspace(start, end), or an
    explicit list (`values`, which the request already holds, so it is no new O(T) cost).

    `slice(f0, f1)` computes each time from its own index in float64, start + step*k below the
    halfway point and end - step*(count-1-k) above (ATen's scalar linspace formula, so both ends
    are exact), then rounds to float32. A time depends only on (start, end, count, k): not on how
    the grid is cut into segments or chunks, nor on the CPU's vector width (torch.linspace's
    vectorised CPU kernel steps from the start of each SIMD vector, so its float64 bits vary with
    AVX2/AVX-512; after rounding to float32 the two agree to within one ulp). No call builds more
    than the slice asked for."""
    start: float = 0.0
    end: float = 1.0
    count: int = 16
    values: Optional[Tuple[float, ...]] = None   # explicit times (then start/end/count are unused)

    def __post_init__(self) -> None:
        if self.values is not None:
            if len(self.values) == 0:
                raise ValueError("times is empty")
            if not all(math.isfinite(float(t)) for t in self.values):
                raise ValueError("times must be finite")
            object.__setattr__(self, "count", len(self.values))
        else:
            if self.count < 1:
                raise ValueError(f"a time grid needs >= 1 point, got {self.count}")
            if not (math.isfinite(self.start) and math.isfinite(self.end)):
                raise ValueError(f"times must be finite, got t_start={self.start}, t_end={self.end}")

    def __len__(self) -> int:
        return self.count

    def slice(self, f0: int, f1: int, device=None) -> torch.Tensor:
        """(f1 - f0,) float32 times of frames [f0, f1); indices past the end continue the grid
        (extrapolation at the same spacing, used to pad fixed-size blocks), explicit times repeat
        their last value there."""
        if not 0 <= f0 <= f1:
            raise ValueError(f"bad frame range [{f0}, {f1})")
        if self.values is not None:
            n = len(self.values)
            idx = [min(k, n - 1) for k in range(f0, f1)]
            return torch.tensor([self.values[k] for k in idx], dtype=torch.float32, device=device)
        k = torch.arange(f0, f1, dtype=torch.float64, device=device)
        if self.count == 1:
            return torch.full((f1 - f0,), self.start, dtype=torch.float64, device=device).float()
        step = (self.end - self.start) / (self.count - 1)
        lo = self.start + step * k
        hi = self.end - step * ((self.count - 1) - k)
        return torch.where(k < self.count // 2, lo, hi).float()

    def tensor(self) -> torch.Tensor:
        """(T,) float32, all of it: O(T) memory, for short grids (tests, reference renders)."""
        return self.slice(0, self.count)

    def describe(self) -> dict:
        """O(1) JSON-able identity of the times (explicit lists by the digest of their float32 bytes)."""
        if self.values is not None:
            raw = torch.tensor(self.values, dtype=torch.float32).numpy().tobytes()
            return {"times_sha256": hashlib.sha256(raw).hexdigest(), "count": self.count}
        return {"linspace": [float(self.start), float(self.end), int(self.count)]}


@dataclass
class RenderRequest:
    seeds: List[int] = field(default_factory=lambda: [0])   # one video per content seed
    motion_seeds: Optional[List[int]] = None                 # per video; None = from the content seed
    labels: Optional[List[int]] = None                       # class per video (c_dim > 0 models)
    psi: float = 1.0                                         # truncation
    frames: int = 16                                         # time grid size before interpolation
    t_start: float = 0.0
    t_end: float = 1.0
    interpolate: int = 1                                     # frames between grid points x k
    times: Optional[List[float]] = None                      # explicit times, overrides the grid
    view: View = field(default_factory=View)
    precision: str = "fp32"
    memory_budget: int = 2 << 30                             # bytes for tiles + one frame chunk
    backend: str = "auto"
    device: Optional[str] = None                             # None: cuda if available else cpu
    z: Optional[torch.Tensor] = None                         # (B, z_dim) explicit content codes; None: seeds
    z_motion: Optional[torch.Tensor] = None                  # (B, w_dim) explicit motion codes; None: seeds

    def __post_init__(self) -> None:
        if not self.seeds:
            raise ValueError("at least one seed is needed")
        self.z = self._explicit_codes("z", self.z)
        self.z_motion = self._explicit_codes("z_motion", self.z_motion)
        if self.z_motion is not None and self.motion_seeds is not None:
            raise ValueError("give motion_seeds or explicit z_motion codes, not both")
        if self.motion_seeds is not None and len(self.motion_seeds) != len(self.seeds):
            raise ValueError(f"{len(self.motion_seeds)} motion seeds for {len(self.seeds)} videos")
        if self.labels is not None and len(self.labels) != len(self.seeds):
            raise ValueError(f"{len(self.labels)} labels for {len(self.seeds)} videos")
        if self.times is None:
            if self.frames < 1:
                raise ValueError(f"frames must be >= 1, got {self.frames}")
            if self.interpolate < 1:
                raise ValueError(f"interpolation factor must be >= 1, got {self.interpolate}")
        elif len(self.times) == 0:
            raise ValueError("times is empty")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.memory_budget <= 0:
            raise ValueError(f"memory budget must be positive, got {self.memory_budget}")

    def _explicit_codes(self, name: str, codes) -> Optional[torch.Tensor]:
        """Explicit codes as a (B, dim) float32 CPU tensor, one row per video, all finite (the
        caller's own tensor when it already is one: it is never written)."""
        if codes is None:
            return None
        codes = torch.as_tensor(codes).detach().to("cpu", torch.float32)
        if codes.dim() != 2 or codes.shape[0] != len(self.seeds):
            raise ValueError(f"{name} must be (videos, dim) with one row per seed ({len(self.seeds)}), "
                             f"got shape {tuple(codes.shape)}")
        if not torch.isfinite(codes).all():
            raise ValueError(f"{name} must be finite")
        return codes

    def grid(self) -> TimeGrid:
        """The frames' times by parameters (O(1) whatever the frame count)."""
        if self.times is not None:
            return TimeGrid(values=tuple(float(t) for t in self.times))
        return TimeGrid(float(self.t_start), float(self.t_end), (self.frames - 1) * self.interpolate + 1)

    def time_grid(self) -> torch.Tensor:
        """(T,) float32 times of every rendered frame: O(T) memory, for short requests only; the
        engine uses `grid()` and computes the times of each chunk as it renders it."""
        return self.grid().tensor()

    @property
    def num_frames(self) -> int:
        return len(self.times) if self.times is not None else (self.frames - 1) * self.interpolate + 1

    def codes(self, z_dim: int, w_dim: int, c_dim: int):
        """z (B, z_dim), z_motion (B, w_dim), c (B, c_dim) or None, from the seeds (or the explicit
        codes)."""
        for name, codes, dim in (("z", self.z, z_dim), ("z_motion", self.z_motion, w_dim)):
            if codes is not None and codes.shape[1] != dim:
                raise ValueError(f"{name} has {codes.shape[1]} entries per video; this model takes {dim}")
        zs, zms = [], []
        for k, seed in enumerate(self.seeds):
            g = torch.Generator().manual_seed(int(seed))
            zs.append(torch.randn(z_dim, generator=g))
            zm = torch.randn(w_dim, generator=g)
            if self.motion_seeds is not None:
                zm = torch.randn(w_dim, generator=torch.Generator().manual_seed(int(self.motion_seeds[k]) + (1 << 32)))
            zms.append(zm)
        c = None
        if c_dim > 0:
            if self.labels is None:
                raise ValueError(f"this model is class-conditional ({c_dim} classes): give a label per video")
            for lab in self.labels:
                if not 0 <= lab < c_dim:
                    raise ValueError(f"label {lab} out of range [0, {c_dim})")
            c = torch.nn.functional.one_hot(torch.tensor(self.labels), c_dim).float()
        elif self.labels is not None:
            raise ValueError("this model is unconditional: drop the class labels")
        z = torch.stack(zs) if self.z is None else self.z
        return z, torch.stack(zms) if self.z_motion is None else self.z_motion, c

    def content_hash(self, model_id: str) -> str:
        """Identifies the frames this request produces (not how they are tiled or where they go)."""
        d = {k: getattr(self, k) for k in ("seeds", "motion_seeds", "labels", "psi", "precision")}
        d["times"] = self.grid().describe()   # parameters, not values: O(1) in the frame count
        d["view"] = [self.view.scale, self.view.top, self.view.left, self.view.height, self.view.width]
        d["model"] = model_id
        for name in ("z", "z_motion"):   # only when given: hashes of seed requests stay as they were
            codes = getattr(self, name)
            if codes is not None:
                d[name] = hashlib.sha256(codes.contiguous().numpy().tobytes()).hexdigest()
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def parse_size(text: str) -> int:
    """'512M', '4G', '1.5GiB', '1048576' -> bytes."""
    t = text.strip().upper().replace("IB", "").replace("B", "")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    try:
        if t and t[-1] in mult:
            return int(float(t[:-1]) * mult[t[-1]])
        return int(float(t))
    except ValueError:
        raise ValueError(f"cannot read a memory size from {text!r}; use e.g. 512M or 4G") from None


def seeds_from_text(text: str) -> List[int]:
    """'0,3,7' or '0-7' or '0-3,9' -> list of ints."""
    out: List[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part[1:]:
            if part.startswith("-"):   # a negative first seed: '-3-2'
                a, b = "-" + part[1:].split("-", 1)[0], part[1:].split("-", 1)[1]
            else:
                a, b = part.split("-", 1)
            a, b = int(a), int(b)
            if b < a:
                raise ValueError(f"seed range {part!r} is empty")
            out.extend(range(a, b + 1))
        else:
            out.append(int(part))
    if not out:
        raise ValueError(f"no seeds in {text!r}")
    return out

