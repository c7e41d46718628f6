"""Which encoder backends work here: the native frame stream (engine._framestream), PyAV, and the
codecs each has — checked lazily (first call, then cached), never at import.

Both backends are asked about the names of `engine.codecs.CODECS` only; hardware encoders (NVENC)
count only when one really opens (a build has them even without a GPU or driver).  `probe_encoder`
opens an encoder once at the real frame size, for sizes where limits differ per encoder and build.
"""
from __future__ import annotations

import functools
import importlib
import os
import shutil
import tempfile
from fractions import Fraction
from typing import Any, Dict, Tuple

from .codecs import CODECS, EXT_BY_CONTAINER, SinkConfigError


def _try_import(name: str) -> Tuple[Any, str]:
    try:
        return importlib.import_module(name), ""
    except ImportError as exc:
        return None, str(exc)


@functools.lru_cache(maxsize=None)
def native_import() -> Tuple[Any, str]:
    """(engine._framestream or None, why it does not import)."""
    return _try_import("engine._framestream")


def native_available() -> bool:
    return native_import()[0] is not None


@functools.lru_cache(maxsize=None)
def pyav_import() -> Tuple[Any, str]:
    """(the av module or None, why it does not import)."""
    return _try_import("av")


@functools.lru_cache(maxsize=None)
def native_codecs() -> Tuple[str, ...]:
    mod = native_import()[0]
    return tuple(mod.available_codecs(True, list(CODECS))) if mod is not None else ()


@functools.lru_cache(maxsize=None)
def pyav_codecs() -> Tuple[str, ...]:
    av = pyav_import()[0]
    if av is None:
        return ()
    out = []
    for name, info in CODECS.items():
        try:
            av.codec.Codec(name, "w")
        except Exception:
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
    except Exception:
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
    mod = native_import()[0]
    if mod is not None:
        out["native"] = mod.libavcodec_version()
    av = pyav_import()[0]
    if av is not None:
        out["pyav"] = ".".join(str(v) for v in av.library_versions["libavcodec"])
    return out


# Every encoder here opens frames up to 4096x4096; above, limits differ per encoder and build
# (x264 16254^2, x265 11940^2, ffv1 14528^2 measured with PyAV's FFmpeg), so the encoder itself
# is asked by opening it once at the real size (milliseconds for x264; only for large frames).
PROBE_PIXELS = 4096 * 4096
PROBE_SIDE = 4096


def probe_encoder(backend: str, codec: str, width: int, height: int, fps: Fraction, pix_fmt: str,
                  input_format: str, opts: Dict[str, str], muxer: str) -> None:
    """Open the encoder at width x height and close it; SinkConfigError if it refuses."""
    try:
        if backend == "native":
            mod = native_import()[0]
            folder = tempfile.mkdtemp(prefix="digan-probe-")
            try:
                stream = mod.FrameStream(os.path.join(folder, "probe" + EXT_BY_CONTAINER[muxer]), width, height,
                                         fps.numerator, fps.denominator, codec, muxer, pix_fmt, input_format,
                                         dict(opts), {}, 0, 1)
                stream.abort()
            finally:
                shutil.rmtree(folder, ignore_errors=True)
        else:
            av = pyav_import()[0]
            cc = av.CodecContext.create(codec, "w")
            cc.width, cc.height, cc.pix_fmt, cc.time_base = width, height, pix_fmt, 1 / fps
            cc.options = dict(opts)
            cc.open()
    except (SinkConfigError, MemoryError):
        raise
    except Exception as exc:
        raise SinkConfigError(f"{codec} refuses frames of {width}x{height} ({exc}): render smaller (a lower "
                              "--scale, --crop) or choose another codec") from None
