"""Previews beside a render: a contact sheet PNG of sampled frames and, optionally, a GIF.

The image writers live in `digan.images` (shared with the trainer); this module decides what a
render's preview holds, catches those frames as they stream to the encoder (`PreviewCapture`) and
where the files go."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, List, Sequence

import numpy as np

from digan.images import contact_sheet, sample_indices, write_gif, write_png

__all__ = ["PreviewCapture", "contact_sheet", "preview_paths", "sample_indices", "write_gif", "write_png",
           "write_preview"]

GIF_FRAMES = 64   # a GIF of at most about this many frames (every k-th frame of the video)


def preview_paths(video_path, gif: bool = False) -> List[str]:
    """Where `write_preview` puts the contact sheet (and GIF) of `video_path`."""
    base = Path(video_path)
    stem = base.with_suffix("") if base.suffix else base
    return [f"{stem}.preview.png"] + ([f"{stem}.preview.gif"] if gif else [])


def write_preview(video_path, frames: Dict[int, np.ndarray], gif: bool = False, fps: float = 16.0,
                  gif_frames: Sequence[np.ndarray] = ()) -> List[Path]:
    """Contact sheet of the sampled frames (dict index -> frame) beside the video."""
    paths = preview_paths(video_path, gif)
    ordered = [frames[k] for k in sorted(frames)]
    out = [write_png(paths[0], contact_sheet(ordered))]
    if gif:
        out.append(write_gif(paths[1], list(gif_frames) or ordered, fps))
    return out


class PreviewCapture:
    """The frames of a `total`-frame video's preview, caught as they stream past (`watch`): the
    contact sheet's samples and, with gif, every `gif_every`-th frame. Frames never seen (in
    segments reused by --resume, or rendered by other ranks) are rendered at `write` time."""

    def __init__(self, total: int, gif: bool = False):
        self.total, self.gif = total, gif
        self.wanted = set(sample_indices(total))
        self.gif_every = max(1, total // GIF_FRAMES)
        self.sheet: Dict[int, np.ndarray] = {}
        self.gif_frames: Dict[int, np.ndarray] = {}

    def watch(self, frames: Iterable[np.ndarray], start: int) -> Iterator[np.ndarray]:
        """`frames` (video frames start, start + 1, ...), passed through; the wanted ones copied."""
        for i, frame in enumerate(frames, start):
            self._keep(i, frame)
            yield frame

    def _keep(self, i: int, frame: np.ndarray) -> None:
        if i in self.wanted:
            self.sheet[i] = frame.copy()
        if self.gif and i % self.gif_every == 0:
            self.gif_frames[i] = self.sheet[i] if i in self.sheet else frame.copy()

    def write(self, video_path, fps: float, render_frame: Callable[[int], np.ndarray]) -> List[Path]:
        """Renders the missing frames (render_frame(i) -> (H, W, 3) uint8), writes the preview."""
        gif_indices = range(0, self.total, self.gif_every) if self.gif else ()
        for i in sorted((self.wanted - set(self.sheet)) | (set(gif_indices) - set(self.gif_frames))):
            self._keep(i, render_frame(i))
        return write_preview(video_path, self.sheet, gif=self.gif, fps=fps / self.gif_every,
                             gif_frames=[self.gif_frames[k] for k in sorted(self.gif_frames)])
