"""The sink request, checked before any work: `SinkSpec` (everything that decides the encoded
bytes, plus the backend), `make_spec` / `validate_sink_args` (codec, container, size, fps, preset,
CRF, pixel format, backend, folder), each refusal saying what to change.

A command calls `validate_sink_args` before loading a model, so a bad request fails at once;
`engine.sink.open_spec` then opens the sink a spec describes.
"""
from __future__ import annotations

import errno
import math
import os
import tempfile
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Dict, Optional

import numpy as np

from .codecs import (
    CODECS,
    CONTAINER_BY_EXT,
    CONTAINER_NAMES,
    EXT_BY_CONTAINER,
    PNG_CODEC,
    SinkConfigError,
    codec_options,
    encoder_pix_fmt,
    pix_fmts,
)
from .encoders import (
    PROBE_PIXELS,
    PROBE_SIDE,
    available_codecs,
    native_codecs,
    native_import,
    probe_encoder,
    pyav_codecs,
    pyav_import,
)

BACKENDS = ("auto", "native", "pyav", "png")
INPUT_FORMATS = ("rgb24", "yuv420p")


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
    pix_fmt: str                   # what the encoder gets (--pix-fmt resolved: ffv1's rgb24 is bgr0)
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
    native, why_native = native_import()
    av, why_av = pyav_import()
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
              check_folder: bool = True, pix_fmt: Optional[str] = None) -> SinkSpec:
    """Check a sink request and resolve it; raises SinkConfigError (or OSError for the folder).

    pix_fmt: the stored pixel format as --pix-fmt names it (yuv420p, yuv444p, rgb24, see
    `engine.codecs`); None: the codec's default (yuv420p, or rgb24 for ffv1)."""
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
        if pix_fmt not in (None, "rgb24"):
            raise SinkConfigError(f"pixel format {pix_fmt!r} (--pix-fmt) does not fit PNG frames: they are rgb24")
        if pyav_import()[0] is None:
            raise SinkConfigError(f"PNG output needs PyAV ({pyav_import()[1]}): pip install av")
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
        if container not in CONTAINER_NAMES:
            raise SinkConfigError(f"container {container!r}: choose mp4, mkv or mov")
        muxer = CONTAINER_NAMES[container]
    if muxer not in info.containers:
        fits = ", ".join(EXT_BY_CONTAINER[c] for c in info.containers)
        raise SinkConfigError(f"{codec} cannot go in {EXT_BY_CONTAINER[muxer]} files: use {fits} "
                              f"(or another codec)")
    pix_fmt = _check_pix_fmt(codec, input_format, pix_fmt)
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
        probe_encoder(resolved, codec, width, height, fps, pix_fmt, input_format, opts, muxer)
    if check_folder:
        check_writable_dir(os.path.dirname(path) or ".")
    fmt_opts: Dict[str, str] = {}
    return SinkSpec(path, width, height, fps, codec, crf, preset, gop, muxer, resolved, int(queue_size),
                    input_format, pix_fmt, opts, fmt_opts)


def _check_pix_fmt(codec: str, input_format: str, pix_fmt: Optional[str]) -> str:
    """The encoder's pixel format for a --pix-fmt name, or SinkConfigError naming the accepted ones."""
    accepted = pix_fmts(codec)
    if pix_fmt is not None and pix_fmt not in accepted:
        hint = "; for lossless RGB use codec ffv1 in .mkv" if pix_fmt in ("rgb24", "bgr0") else ""
        raise SinkConfigError(f"pixel format {pix_fmt!r} (--pix-fmt) does not fit {codec}: it takes "
                              f"{', '.join(accepted)}{hint}")
    if input_format == "yuv420p" and pix_fmt not in (None, "yuv420p"):
        raise SinkConfigError(f"I420 input (input_format='yuv420p') is encoded as yuv420p, not {pix_fmt}: give RGB "
                              "frames (input_format='rgb24') for another pixel format")
    return encoder_pix_fmt(codec, input_format, pix_fmt)


def validate_sink_args(path, width: int, height: int, fps, codec: str = "libx264", crf: Optional[int] = None,
                       preset: Optional[str] = "medium", gop: Optional[int] = None, backend: str = "auto",
                       queue_size: int = 8, input_format: str = "rgb24", container: Optional[str] = None,
                       pix_fmt: Optional[str] = None) -> SinkSpec:
    """Check an output request before any work (codec 'png' or backend 'png': PNG folder); returns
    the resolved `SinkSpec`.  Raises SinkConfigError, or OSError naming an unwritable folder."""
    return make_spec(path, width, height, fps, codec, crf, preset, gop, backend, queue_size, input_format, container,
                     pix_fmt=pix_fmt)

