"""`digan convert`: a tqdm bar over the tensors loaded and written, and a one-line summary."""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Optional


class ConvertProgress:
    """The bar of `digan convert` on stderr, in tensors: each tensor is counted once when it is
    loaded into its network and once when the file is written (digan.checkpoint.convert's
    `progress` callback). Like the render bar (engine/progress.Progress): ~5 redraws a second on
    a terminal, one line every 10 s in a log, nothing with --quiet."""

    def __init__(self, label: str, quiet: bool):
        self.label, self.quiet = label, quiet
        self.t0 = time.monotonic()
        self.bar = None
        self.tensors = 0        # tensors written (the input's tensors)

    def __call__(self, step: str, n: int, total: int) -> None:
        if step == "write":
            self.tensors = n
        if self.quiet:
            return
        if self.bar is None:
            from tqdm import tqdm
            self.bar = tqdm(total=total, desc=self.label, unit="tensor", file=sys.stderr, dynamic_ncols=True,
                            mininterval=0.2 if sys.stderr.isatty() else 10.0,
                            bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} tensors [{elapsed}<{remaining}] "
                                       "{postfix}")
        self.bar.set_postfix_str(step, refresh=False)
        self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def summary(self, path) -> str:
        """Where the file is, its tensors, size and the time the conversion took."""
        size = Path(path).stat().st_size
        secs = time.monotonic() - self.t0
        return f"wrote {path}: {self.tensors} tensors, {size / 2**20:.2f} MiB in {secs:.1f} s"


def run_convert(input_path: str, output_path: str, quiet: bool = False) -> Optional[Path]:
    """Convert with the bar; print the summary (stdout) unless quiet. Returns the written path."""
    from digan.checkpoint import convert

    progress = ConvertProgress(f"convert {Path(input_path).name}", quiet)
    try:
        path = convert(input_path, output_path, progress=progress)
    finally:
        progress.close()
    if not quiet:
        print(progress.summary(path))
    return path
