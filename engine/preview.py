"""Previews beside a render: a contact sheet PNG of sampled frames and, optionally, a GIF.

The image writers live in `digan.images` (shared with the trainer); this module only decides what
a render's preview holds and where it goes."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np

from digan.images import contact_sheet, sample_indices, write_gif, write_png

__all__ = ["contact_sheet", "sample_indices", "write_gif", "write_png", "write_preview"]


def write_preview(video_path, frames: Dict[int, np.ndarray], gif: bool = False, fps: float = 16.0,
                  gif_frames: Sequence[np.ndarray] = ()) -> List[Path]:
    """Contact sheet of the sampled frames (dict index -> frame) beside the video."""
    base = Path(video_path)
    stem = base.with_suffix("") if base.suffix else base
    ordered = [frames[k] for k in sorted(frames)]
    out = [write_png(f"{stem}.preview.png", contact_sheet(ordered))]
    if gif:
        out.append(write_gif(f"{stem}.preview.gif", list(gif_frames) or ordered, fps))
    return out
