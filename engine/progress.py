"""`digan render`'s progress: a tqdm bar on stderr counting frames, and the summary line printed
when the output is final."""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Iterable, Iterator, TypeVar

Frame = TypeVar("Frame")


class Progress:
    """A tqdm bar on stderr, per frame. Frames reused by --resume are its starting point
    (`initial`), so the rate and ETA count only the frames rendered now; nothing with --quiet."""

    def __init__(self, total: int, label: str, quiet: bool, initial: int = 0):
        self.total, self.initial, self.done = total, initial, initial
        self.t0 = time.monotonic()
        self.bar = None
        if not quiet:
            from tqdm import tqdm
            # On a terminal ~5 redraws a second; in a log one line every 10 s (not one per frame).
            self.bar = tqdm(total=total, initial=initial, desc=label, unit="frame", file=sys.stderr,
                            dynamic_ncols=True, mininterval=0.2 if sys.stderr.isatty() else 10.0, smoothing=0.05,
                            bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} frames [{elapsed}<{remaining}, {rate_fmt}]")

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)

    def count(self, frames: Iterable[Frame]) -> Iterator[Frame]:
        """`frames`, passed through; each one counts once the consumer (the encoder) has taken it."""
        for frame in frames:
            yield frame
            self.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def summary(self, path, W: int, H: int) -> str:
        """frames, size, time, fps of this run and where the output is."""
        secs = time.monotonic() - self.t0
        new = self.done - self.initial
        size = file_size(path)
        reused = f" ({self.initial} reused by --resume)" if self.initial else ""
        return (f"wrote {path}: {self.done} frames {W}x{H}{reused}, {size / 2**20:.2f} MiB, {new} rendered in "
                f"{secs:.1f} s ({new / max(secs, 1e-9):.1f} fps)")


def file_size(path) -> int:
    """Bytes of a file, or of the files in a folder (PNG frames)."""
    p = Path(path)
    if p.is_dir():
        return sum(f.stat().st_size for f in p.iterdir() if f.is_file())
    return p.stat().st_size if p.exists() else 0
