"""Where frames go: video files through the native encoder or PyAV, or a folder of PNGs.

Every sink takes uint8 RGB frames (H, W, 3) from numpy or torch (a CUDA tensor is copied to the
host) — or, opened with ``input_format='yuv420p'``, I420 frames (H*3/2, W) already in BT.709
limited range — and has the same interface (`FrameSink`).  `open_sink` checks the whole request
before any work (codec, container, size, fps, preset, CRF, backend, folder) and says what to
change; `make_spec` does only that check, so a command can fail fast before loading a model.

Backends, same settings for all (one table below decides codec options and pixel formats):
  native  engine._framestream (csrc/frame_stream.cpp): a bounded queue of frame slots and an
          encoder thread on Debian's FFmpeg; `push` copies the frame and returns while the
          previous frames encode.  Built by setup.py when FFmpeg's dev libraries are present.
  pyav    pure Python on PyAV (its own FFmpeg); encodes in the caller's thread.  The reference.
  png     frame_000000.png, ... in a folder (PyAV's PNG encoder), each file written atomically.

Colour: YUV codecs get BT.709 primaries, transfer and matrix, limited (TV) range, and swscale
converts with exactly those coefficients; ffv1 stores RGB losslessly (bgr0), so decoding gives the
frames back bit for bit.
"""
from __future__ import annotations

import errno
import functools
import math
import os
import stat
import tempfile
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Dict, Optional, Tuple

import numpy as np

# ---------------------------------------------------------------------------------------------
# The codec table


@dataclass(frozen=True)
class CodecInfo:
    containers: Tuple[str, ...]          # muxer names that can hold it
    crf_range: Optional[Tuple[int, int]]  # None: lossless, no quality knob
    default_crf: Optional[int]           # used when crf=None
    presets: Tuple[str, ...]             # accepted preset names ('' entries: none)
    hardware: bool = False               # needs a device (probed by opening a small encoder)
    min_size: int = 1                    # smallest width/height the encoder accepts


_X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower",
                 "veryslow", "placebo")
# SVT-AV1 presets are numbers (0 slowest .. 13 fastest); x264 names map onto them.
_SVT_PRESET = {"ultrafast": 12, "superfast": 11, "veryfast": 10, "faster": 9, "fast": 8, "medium": 7,
               "slow": 5, "slower": 4, "veryslow": 2, "placebo": 0}
# NVENC presets are p1 (fastest) .. p7 (best); x264 names map onto them.
_NVENC_PRESET = {"ultrafast": "p1", "superfast": "p1", "veryfast": "p2", "faster": "p3", "fast": "p3",
                 "medium": "p4", "slow": "p5", "slower": "p6", "veryslow": "p7", "placebo": "p7"}

CODECS: Dict[str, CodecInfo] = {
    "libx264": CodecInfo(("mp4", "matroska", "mov"), (0, 51), 18, _X264_PRESETS),
    "libx265": CodecInfo(("mp4", "matroska", "mov"), (0, 51), 20, _X264_PRESETS),
    # SVT-AV1 1.4 (Debian 12) refuses frames smaller than 64x64.
    "libsvtav1": CodecInfo(("mp4", "matroska"), (0, 63), 30,
                           tuple(_SVT_PRESET) + tuple(str(i) for i in range(14)), min_size=64),
    "ffv1": CodecInfo(("matroska",), None, None, ()),
    "h264_nvenc": CodecInfo(("mp4", "matroska", "mov"), (0, 51), 19,
                            tuple(_NVENC_PRESET) + tuple(f"p{i}" for i in range(1, 8)), hardware=True,
                            min_size=145),
}

CONTAINER_BY_EXT = {".mp4": "mp4", ".mkv": "matroska", ".mov": "mov"}
_CONTAINER_NAMES = {"mp4": "mp4", "mkv": "matroska", "matroska": "matroska", "mov": "mov"}
_EXT_BY_CONTAINER = {"mp4": ".mp4", "matroska": ".mkv", "mov": ".mov"}
BACKENDS = ("auto", "native", "pyav", "png")
PNG_CODEC = "png"  # codec name that selects the PNG folder sink
INPUT_FORMATS = ("rgb24", "yuv420p")


class SinkConfigError(ValueError):
    """A request that cannot work as given; the message says what to change."""


def codec_options(codec: str, crf: Optional[int], preset: Optional[str], gop: Optional[int]) -> Dict[str, str]:
    """Encoder options (AVOptions as strings) shared by the native and the PyAV backends.

    With an explicit `gop`, scene-cut keyframes are turned off so keyframes fall exactly every
    `gop` frames (segments and seeking stay aligned)."""
    info = CODECS[codec]
    q = crf if crf is not None else info.default_crf
    if codec == "libx264":
        opts = {"crf": str(q), "preset": preset or "medium"}
        if gop:
            opts["x264-params"] = "scenecut=0"
    elif codec == "libx265":
        params = "log-level=error" + (":scenecut=0" if gop else "")
        opts = {"crf": str(q), "preset": preset or "medium", "x265-params": params}
    elif codec == "libsvtav1":
        p = preset or "medium"
        opts = {"crf": str(q), "preset": str(_SVT_PRESET.get(p, p))}
    elif codec == "ffv1":
        opts = {"level": "3", "slicecrc": "1"}
    elif codec == "h264_nvenc":
        p = preset or "medium"
        opts = {"preset": _NVENC_PRESET.get(p, p), "rc": "vbr", "cq": str(q), "b": "0"}
    else:  # pragma: no cover - CODECS and this function change together
        raise AssertionError(codec)
    return opts


def encoder_pix_fmt(codec: str, input_format: str) -> str:
    """Pixel format the encoder gets: bgr0 for lossless RGB, else yuv420p."""
    return "bgr0" if codec == "ffv1" and input_format == "rgb24" else "yuv420p"


# ---------------------------------------------------------------------------------------------
# Backends available here (checked lazily, never at import)


@functools.lru_cache(maxsize=None)
def _native_import() -> Tuple[Any, str]:
    try:
        from engine import _framestream  # type: ignore[attr-defined]
    except ImportError as exc:
        return None, str(exc)
    return _framestream, ""


def native_available() -> bool:
    return _native_import()[0] is not None


@functools.lru_cache(maxsize=None)
def _pyav_import() -> Tuple[Any, str]:
    try:
        import av
    except ImportError as exc:
        return None, str(exc)
    return av, ""


@functools.lru_cache(maxsize=None)
def native_codecs() -> Tuple[str, ...]:
    mod = _native_import()[0]
    return tuple(mod.available_codecs(True)) if mod is not None else ()


@functools.lru_cache(maxsize=None)
def pyav_codecs() -> Tuple[str, ...]:
    av = _pyav_import()[0]
    if av is None:
        return ()
    out = []
    for name, info in CODECS.items():
        try:
            av.codec.Codec(name, "w")
        except Exception:  # noqa: BLE001 - not in this build
            continue
        if info.hardware and not _pyav_opens(av, name):
            continue
        out.append(name)
    return tuple(out)


def _pyav_opens(av, name: str) -> bool:
    try:
        cc = av.CodecContext.create(name, "w")
        cc.width, cc.height, cc.pix_fmt, cc.time_base = 256, 256, "yuv420p", Fraction(1, 25)
        cc.open()
        return True
    except Exception:  # noqa: BLE001 - no device / no driver
        return False


def available_codecs(backend: str = "auto") -> Tuple[str, ...]:
    """Codecs usable here by `backend` ('auto': by either video backend)."""
    if backend == "native":
        return native_codecs()
    if backend == "pyav":
        return pyav_codecs()
    return tuple(c for c in CODECS if c in native_codecs() or c in pyav_codecs())


def libavcodec_versions() -> Dict[str, str]:
    """libavcodec version of each backend present (they are separate FFmpeg copies)."""
    out = {}
    mod = _native_import()[0]
    if mod is not None:
        out["native"] = mod.libavcodec_version()
    av = _pyav_import()[0]
    if av is not None:
        out["pyav"] = ".".join(str(v) for v in av.library_versions["libavcodec"])
    return out


# ---------------------------------------------------------------------------------------------
# The request, checked


@dataclass(frozen=True)
class SinkSpec:
    path: str                      # output file, or folder for PNG frames
    width: int
    height: int
    fps: Fraction
    codec: str                     # 'png' for the PNG backend
    crf: Optional[int]             # resolved quality (None: lossless or PNG)
    preset: Optional[str]
    gop: Optional[int]             # keyframe interval; None: encoder default
    container: Optional[str]       # muxer name: mp4, matroska, mov (None for PNG)
    backend: str                   # native, pyav or png (resolved)
    queue_size: int
    input_format: str              # rgb24 or yuv420p
    pix_fmt: str                   # what the encoder gets
    codec_options: Dict[str, str] = field(default_factory=dict)
    format_options: Dict[str, str] = field(default_factory=dict)

    def settings(self) -> Dict[str, Any]:
        """Everything that decides the encoded bytes (for manifests); the backend is left out."""
        return {"codec": self.codec, "crf": self.crf, "preset": self.preset, "gop": self.gop,
                "container": self.container, "pix_fmt": self.pix_fmt, "input_format": self.input_format,
                "width": self.width, "height": self.height, "fps": f"{self.fps.numerator}/{self.fps.denominator}",
                "codec_options": dict(self.codec_options)}

    def with_path(self, path: str) -> "SinkSpec":
        """The same settings for another file (the container stays as chosen)."""
        d = dict(self.__dict__)
        d["path"] = os.fspath(path)
        return SinkSpec(**d)


def as_fraction(fps) -> Fraction:
    """fps as an exact fraction: 24 -> 24/1, 29.97 -> 2997/100, Fraction(30000, 1001) kept."""
    try:
        if isinstance(fps, (Fraction, int)):
            f = Fraction(fps)
        elif isinstance(fps, str):
            f = Fraction(fps)
        else:
            x = float(fps)
            if not math.isfinite(x):
                raise ValueError
            f = Fraction(x).limit_denominator(100000)
    except (ValueError, TypeError, ZeroDivisionError):
        raise SinkConfigError(f"fps {fps!r} is not a number: give e.g. 24, 29.97 or '30000/1001'") from None
    if f <= 0:
        raise SinkConfigError(f"fps must be > 0, got {fps!r}")
    return f


def check_writable_dir(folder: str) -> None:
    """Create `folder` if needed and prove a file can be written there; OSError names the folder."""
    folder = folder or "."
    try:
        os.makedirs(folder, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".digan-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OSError(exc.errno or errno.EACCES,
                      f"cannot write output files in this folder ({exc.strerror or exc}): choose another "
                      f"output path or fix its permissions", folder) from None


def _resolve_backend(backend: str, codec: str) -> str:
    native, why_native = _native_import()
    av, why_av = _pyav_import()
    info = CODECS[codec]
    hw_hint = (f"; {codec} needs an NVIDIA GPU with NVENC and its driver (libcuda): use libx264 here"
               if info.hardware else "")
    if backend == "native":
        if native is None:
            raise SinkConfigError(
                f"backend 'native': the native encoder is not built ({why_native}); install FFmpeg's dev "
                "libraries (apt-get install pkg-config libavcodec-dev libavformat-dev libswscale-dev) and run "
                "`python setup.py build_ext --inplace`, or use backend 'pyav'")
        if codec not in native_codecs():
            raise SinkConfigError(f"backend 'native' cannot encode {codec} here (it has: "
                                  f"{', '.join(native_codecs()) or 'none'}){hw_hint}")
        return "native"
    if backend == "pyav":
        if av is None:
            raise SinkConfigError(f"backend 'pyav' needs PyAV ({why_av}): pip install av")
        if codec not in pyav_codecs():
            raise SinkConfigError(f"backend 'pyav' cannot encode {codec} here (it has: "
                                  f"{', '.join(pyav_codecs()) or 'none'}){hw_hint}")
        return "pyav"
    # auto: native when it imports and has the codec, else PyAV
    if native is not None and codec in native_codecs():
        return "native"
    if av is not None and codec in pyav_codecs():
        return "pyav"
    if native is None and av is None:
        raise SinkConfigError(f"no video encoder available: build the native one or pip install av "
                              f"(native: {why_native}; pyav: {why_av})")
    raise SinkConfigError(f"{codec} is not available here (codecs available: "
                          f"{', '.join(available_codecs()) or 'none'}){hw_hint}")


def _is_folder_path(path: str) -> bool:
    return path.endswith(("/", os.sep)) or os.path.isdir(path) or os.path.splitext(path)[1] == ""


def make_spec(path, width: int, height: int, fps, codec: str = "libx264", crf: Optional[int] = None,
              preset: Optional[str] = "medium", gop: Optional[int] = None, backend: str = "auto",
              queue_size: int = 8, input_format: str = "rgb24", container: Optional[str] = None,
              check_folder: bool = True) -> SinkSpec:
    """Check a sink request and resolve it; raises SinkConfigError (or OSError for the folder)."""
    path = os.fspath(path)
    if backend not in BACKENDS:
        raise SinkConfigError(f"backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    if input_format not in INPUT_FORMATS:
        raise SinkConfigError(f"input_format {input_format!r}: choose rgb24 or yuv420p")
    for name, v in (("width", width), ("height", height)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
            raise SinkConfigError(f"{name} must be a positive integer, got {v!r}")
    width, height = int(width), int(height)
    fps = as_fraction(fps)
    if isinstance(queue_size, bool) or not isinstance(queue_size, (int, np.integer)) or queue_size < 1:
        raise SinkConfigError(f"queue_size must be an integer >= 1, got {queue_size!r}")
    if gop is not None and (isinstance(gop, bool) or not isinstance(gop, (int, np.integer)) or gop < 1):
        raise SinkConfigError(f"gop (keyframe interval) must be an integer >= 1 or None, got {gop!r}")

    # PNG folder
    if codec == PNG_CODEC or backend == "png" or (backend == "auto" and container is None and _is_folder_path(path)):
        if os.path.exists(path) and not os.path.isdir(path):
            raise SinkConfigError(f"PNG output {path!r} is a file: give a folder")
        if os.path.splitext(path.rstrip("/" + os.sep))[1].lower() in CONTAINER_BY_EXT:
            raise SinkConfigError(f"PNG frames go to a folder, got the video name {path!r}: drop the extension "
                                  "or choose a video codec")
        if input_format != "rgb24":
            raise SinkConfigError("PNG output takes RGB frames: use input_format='rgb24'")
        if _pyav_import()[0] is None:
            raise SinkConfigError(f"PNG output needs PyAV ({_pyav_import()[1]}): pip install av")
        if check_folder:
            check_writable_dir(path)
        return SinkSpec(path, width, height, fps, "png", None, None, None, None, "png", queue_size,
                        input_format, "rgb24")

    # Video file
    if codec not in CODECS:
        raise SinkConfigError(f"unknown codec {codec!r}: choose one of {', '.join(CODECS)}, or png (a folder)")
    info = CODECS[codec]
    ext = os.path.splitext(path)[1].lower()
    if container is None:
        if ext not in CONTAINER_BY_EXT:
            raise SinkConfigError(f"output {path!r}: unsupported extension {ext!r}; use .mp4, .mkv or .mov "
                                  "(or a folder ending in / for PNG frames)")
        muxer = CONTAINER_BY_EXT[ext]
    else:
        if container not in _CONTAINER_NAMES:
            raise SinkConfigError(f"container {container!r}: choose mp4, mkv or mov")
        muxer = _CONTAINER_NAMES[container]
    if muxer not in info.containers:
        fits = ", ".join(_EXT_BY_CONTAINER[c] for c in info.containers)
        raise SinkConfigError(f"{codec} cannot go in {_EXT_BY_CONTAINER[muxer]} files: use {fits} "
                              f"(or another codec)")
    pix_fmt = encoder_pix_fmt(codec, input_format)
    if pix_fmt == "yuv420p" and (width % 2 or height % 2):
        even = f"{width + width % 2}x{height + height % 2}"
        raise SinkConfigError(f"size {width}x{height} has an odd side: {codec} stores 4:2:0 chroma, so width "
                              f"and height must be even (use {even}" +
                              (", or codec ffv1 in .mkv for RGB)" if input_format == "rgb24" else ")"))
    if width < info.min_size or height < info.min_size:
        raise SinkConfigError(f"{codec} needs frames of at least {info.min_size}x{info.min_size}, got "
                              f"{width}x{height}: render larger or pick another codec")
    if info.crf_range is None:
        crf = None  # lossless: no quality setting
    elif crf is not None:
        lo, hi = info.crf_range
        if isinstance(crf, bool) or not isinstance(crf, (int, np.integer)) or not lo <= crf <= hi:
            raise SinkConfigError(f"crf {crf!r} out of range for {codec}: give an integer in [{lo}, {hi}] "
                                  "(lower is better quality)")
        crf = int(crf)
    else:
        crf = info.default_crf
    if not info.presets:
        preset = None
    elif preset is not None and preset not in info.presets:
        raise SinkConfigError(f"preset {preset!r} is not one of {codec}'s: {', '.join(info.presets)}")
    if os.path.isdir(path):
        raise SinkConfigError(f"output {path!r} is a folder: give a file name like {path.rstrip('/')}/out.mp4")
    resolved = _resolve_backend(backend, codec)
    opts = codec_options(codec, crf, preset, gop)
    if width * height > PROBE_PIXELS or max(width, height) > PROBE_SIDE:
        _probe_encoder(resolved, codec, width, height, fps, pix_fmt, input_format, opts, muxer)
    if check_folder:
        check_writable_dir(os.path.dirname(path) or ".")
    fmt_opts: Dict[str, str] = {}
    return SinkSpec(path, width, height, fps, codec, crf, preset, gop, muxer, resolved, int(queue_size),
                    input_format, pix_fmt, opts, fmt_opts)


# Every encoder here opens frames up to 4096x4096; above, limits differ per encoder and build
# (x264 16254^2, x265 11940^2, ffv1 14528^2 measured with PyAV's FFmpeg), so the encoder itself
# is asked by opening it once at the real size (milliseconds for x264; only for large frames).
PROBE_PIXELS = 4096 * 4096
PROBE_SIDE = 4096


def _probe_encoder(backend: str, codec: str, width: int, height: int, fps: Fraction, pix_fmt: str,
                   input_format: str, opts: Dict[str, str], muxer: str) -> None:
    """Open the encoder at width x height and close it; SinkConfigError if it refuses."""
    try:
        if backend == "native":
            mod = _native_import()[0]
            folder = tempfile.mkdtemp(prefix="digan-probe-")
            try:
                stream = mod.FrameStream(os.path.join(folder, "probe" + _EXT_BY_CONTAINER[muxer]), width, height,
                                         fps.numerator, fps.denominator, codec, muxer, pix_fmt, input_format,
                                         dict(opts), {}, 0, 1)
                stream.abort()
            finally:
                import shutil
                shutil.rmtree(folder, ignore_errors=True)
        else:
            av = _pyav_import()[0]
            cc = av.CodecContext.create(codec, "w")
            cc.width, cc.height, cc.pix_fmt, cc.time_base = width, height, pix_fmt, 1 / fps
            cc.options = dict(opts)
            cc.open()
    except (SinkConfigError, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - the encoder's own refusal, whatever its type
        raise SinkConfigError(f"{codec} refuses frames of {width}x{height} ({exc}): render smaller (a lower "
                              "--scale, --crop) or choose another codec") from None


def validate_sink_args(path, width: int, height: int, fps, codec: str = "libx264", crf: Optional[int] = None,
                       preset: Optional[str] = "medium", gop: Optional[int] = None, backend: str = "auto",
                       queue_size: int = 8, input_format: str = "rgb24", container: Optional[str] = None) -> SinkSpec:
    """Check an output request before any work (codec 'png' or backend 'png': PNG folder); returns
    the resolved `SinkSpec`.  Raises SinkConfigError, or OSError naming an unwritable folder."""
    return make_spec(path, width, height, fps, codec, crf, preset, gop, backend, queue_size, input_format, container)


def open_sink(path, width: int, height: int, fps, codec: str = "libx264", crf: Optional[int] = None,
              preset: Optional[str] = "medium", gop: Optional[int] = None, backend: str = "auto",
              queue_size: int = 8, input_format: str = "rgb24", container: Optional[str] = None) -> "FrameSink":
    """Check the request (see `make_spec`), then open the sink.

    path: .mp4/.mkv/.mov file (container from the extension unless `container` is given), or a
    folder (trailing '/', existing folder or no extension) for PNG frames.  crf None: the codec's
    default (x264 18, x265 20, svtav1 30, nvenc cq 19).  gop: keyframe interval (scene cuts then
    add none).  backend 'auto': native when built and it has the codec, else PyAV."""
    return open_spec(make_spec(path, width, height, fps, codec, crf, preset, gop, backend, queue_size,
                               input_format, container))


def open_spec(spec: SinkSpec) -> "FrameSink":
    if spec.backend == "png":
        return PngSink(spec)
    if spec.codec == "libsvtav1":
        os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints its banner to stderr unless told
    if spec.backend == "native":
        return NativeSink(spec)
    return PyAVSink(spec)


# ---------------------------------------------------------------------------------------------
# Sinks


def _remove_partial(path: str) -> None:
    """Delete a partial output, but only a regular file (never /dev/full or a folder)."""
    try:
        if stat.S_ISREG(os.lstat(path).st_mode):
            os.unlink(path)
    except FileNotFoundError:
        pass


class FrameSink:
    """push(frame) ... close().  As a context manager: closes on success, aborts on an exception
    (the partial output is removed).  frames_written counts frames accepted by push."""

    def __init__(self, spec: SinkSpec):
        self.spec = spec
        self.path = spec.path
        self.width, self.height = spec.width, spec.height
        self._count = 0
        self._finished = False
        self._complete = False
        if spec.input_format == "rgb24":
            self._shape: Tuple[int, ...] = (spec.height, spec.width, 3)
        else:
            self._shape = (spec.height * 3 // 2, spec.width)

    # -- interface --------------------------------------------------------------------------
    def push(self, frame) -> None:
        """One frame: (H, W, 3) uint8 RGB (or (H*3/2, W) I420), numpy or torch."""
        if self._finished:
            raise ValueError(f"push(): the sink for {self.path!r} is already closed")
        arr = self._as_array(frame)
        self._push(arr)
        self._count += 1

    def push_batch(self, frames) -> None:
        """Frames stacked on a leading axis: (N, H, W, 3)."""
        for i in range(len(frames)):
            self.push(frames[i])

    def close(self) -> None:
        """Finish the output; on failure the partial output is removed and the error raised."""
        if self._finished:
            return
        self._finished = True
        try:
            self._close()
        except BaseException:
            self._abort()
            raise
        self._complete = True

    def abort(self) -> None:
        """Stop and remove the partial output (a sink closed successfully keeps its output)."""
        self._finished = True
        if not self._complete:
            self._abort()

    @property
    def frames_written(self) -> int:
        return self._count

    def __enter__(self) -> "FrameSink":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    # -- helpers ----------------------------------------------------------------------------
    def _as_array(self, frame) -> np.ndarray:
        if type(frame).__module__.split(".")[0] == "torch":
            if str(frame.dtype) != "torch.uint8":
                raise ValueError(f"frame dtype {frame.dtype}: expected torch.uint8 "
                                 "(convert with (x.clamp(0, 1) * 255).round().to(torch.uint8))")
            frame = frame.detach()
            if frame.device.type != "cpu":
                frame = frame.cpu()
            frame = frame.numpy()
        arr = np.asarray(frame)
        if arr.dtype != np.uint8:
            raise ValueError(f"frame dtype {arr.dtype}: expected uint8 (0..255)")
        if arr.shape != self._shape:
            what = "(height, width, RGB)" if len(self._shape) == 3 else "(height*3/2, width) I420"
            raise ValueError(f"frame shape {tuple(arr.shape)}: expected {self._shape} {what}")
        return np.ascontiguousarray(arr)

    def _push(self, arr: np.ndarray) -> None:
        raise NotImplementedError

    def _close(self) -> None:
        raise NotImplementedError

    def _abort(self) -> None:
        raise NotImplementedError


class NativeSink(FrameSink):
    """The C++ frame stream: push copies into a queue slot; a thread converts and encodes."""

    def __init__(self, spec: SinkSpec):
        super().__init__(spec)
        mod, why = _native_import()
        if mod is None:
            raise SinkConfigError(f"the native encoder is not built ({why})")
        self._stream = mod.FrameStream(
            spec.path, spec.width, spec.height, spec.fps.numerator, spec.fps.denominator, spec.codec,
            spec.container or "", spec.pix_fmt, spec.input_format, spec.codec_options, spec.format_options,
            spec.gop or 0, spec.queue_size)

    def __reduce__(self):
        raise TypeError("NativeSink owns an encoder thread and an open file and cannot be pickled; "
                        "pickle its .spec and call open_spec(spec) where it is needed")

    def _push(self, arr: np.ndarray) -> None:
        self._stream.push(arr)

    def _close(self) -> None:
        self._stream.close()

    def _abort(self) -> None:
        self._stream.abort()
        _remove_partial(self.path)

    @property
    def frames_encoded(self) -> int:
        return self._stream.frames_written

    @property
    def max_queued(self) -> int:
        """Peak number of queue slots in use (never above queue_size)."""
        return self._stream.max_queued

    @property
    def codec(self) -> str:
        return self._stream.codec


class PyAVSink(FrameSink):
    """Pure Python on PyAV with the same codec options, pixel format and colour tags."""

    def __init__(self, spec: SinkSpec):
        super().__init__(spec)
        import av
        from av.video.reformatter import Interpolation

        self._av = av
        self._interp = Interpolation.BILINEAR | Interpolation.ACCURATE_RND  # as the native swscale
        try:
            self._container = av.open(spec.path, "w", format=spec.container)
        except OSError as exc:
            raise OSError(exc.errno, f"opening the output for writing: {exc.strerror}", spec.path) from None
        try:
            st = self._container.add_stream(spec.codec, rate=spec.fps, options=dict(spec.codec_options))
            st.width, st.height, st.pix_fmt = spec.width, spec.height, spec.pix_fmt
            cc = st.codec_context
            cc.time_base = 1 / spec.fps
            # as the native stream: libavcodec's default threading (frame+slice: x264 frame threads);
            # PyAV's own default, slice only, makes x264 cut every frame into slices
            cc.thread_count, cc.thread_type = 0, "AUTO"
            if spec.gop:
                cc.gop_size = spec.gop
            if spec.pix_fmt == "yuv420p":
                cc.color_primaries, cc.color_trc, cc.colorspace, cc.color_range = 1, 1, 1, 1  # BT.709, TV
            else:
                cc.color_primaries, cc.color_trc, cc.colorspace, cc.color_range = 1, 13, 0, 2  # sRGB, full
            if spec.codec == "libx265" and spec.container in ("mp4", "mov"):
                cc.codec_tag = "hvc1"
            self._stream = st
        except BaseException:
            self._container.close()
            _remove_partial(spec.path)
            raise
        self._pts = 0
        self._closed = False

    def __reduce__(self):
        raise TypeError("PyAVSink holds an open file and cannot be pickled; pickle its .spec instead")

    def _push(self, arr: np.ndarray) -> None:
        av = self._av
        if self.spec.input_format == "rgb24":
            frame = av.VideoFrame.from_ndarray(arr, format="rgb24")
            if self.spec.pix_fmt == "yuv420p":
                frame = frame.reformat(format="yuv420p", dst_colorspace="ITU709", src_color_range="JPEG",
                                       dst_color_range="MPEG", interpolation=self._interp)
            else:
                frame = frame.reformat(format=self.spec.pix_fmt)
        else:
            frame = av.VideoFrame.from_ndarray(arr, format="yuv420p")
        frame.pts = self._pts
        self._pts += 1
        self._mux(self._stream.encode(frame))

    def _mux(self, packets) -> None:
        try:
            self._container.mux(packets)
        except OSError as exc:
            raise OSError(exc.errno, f"writing a packet: {exc.strerror}", self.path) from None

    def _close(self) -> None:
        self._mux(self._stream.encode(None))
        try:
            self._container.close()
        except OSError as exc:
            raise OSError(exc.errno, f"closing the output: {exc.strerror}", self.path) from None
        self._closed = True

    def _abort(self) -> None:
        if not self._closed:
            self._closed = True
            try:
                self._container.close()
            except Exception:  # noqa: BLE001 - the file is deleted anyway
                pass
        _remove_partial(self.path)


class PngSink(FrameSink):
    """frame_000000.png, frame_000001.png, ... in a folder; each written as .tmp and renamed."""

    def __init__(self, spec: SinkSpec, start_index: int = 0):
        super().__init__(spec)
        import av

        os.makedirs(spec.path, exist_ok=True)
        self._av = av
        self._cc = av.CodecContext.create("png", "w")
        self._cc.width, self._cc.height, self._cc.pix_fmt = spec.width, spec.height, "rgb24"
        self._cc.time_base = 1 / spec.fps
        self._cc.thread_count = 1  # one packet per frame, at once
        self._start = start_index
        self._written = []

    def frame_path(self, index: int) -> str:
        return os.path.join(self.path, f"frame_{index:06d}.png")

    def _push(self, arr: np.ndarray) -> None:
        frame = self._av.VideoFrame.from_ndarray(arr, format="rgb24")
        frame.pts = self._count
        data = b"".join(bytes(p) for p in self._cc.encode(frame))
        dst = self.frame_path(self._start + self._count)
        tmp = dst + ".tmp"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, dst)
        except OSError:
            _remove_partial(tmp)
            raise
        self._written.append(dst)

    def _close(self) -> None:
        pass

    def _abort(self) -> None:
        for p in self._written:
            _remove_partial(p)
        self._written.clear()
