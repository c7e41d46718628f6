"""Where frames go: video files through the native encoder or PyAV, or a folder of PNGs.

Every sink takes uint8 RGB frames (H, W, 3) from numpy or torch (a CUDA tensor is copied to the
host) — or, opened with ``input_format='yuv420p'``, I420 frames (H*3/2, W) already in BT.709
limited range — and has the same interface (`FrameSink`).  `open_sink` checks the whole request
before any work (codec, container, size, fps, preset, CRF, backend, folder) and says what to
change; `make_spec` does only that check, so a command can fail fast before loading a model.

Backends, same settings for all (the table in engine/codecs.py decides codec options and pixel
formats; engine/encoders.py finds what works here; engine/sink_spec.py checks a request):
  native  engine._framestream (csrc/frame_stream.cpp): a bounded queue of frame slots and an
          encoder thread on Debian's FFmpeg; `push` copies the frame and returns while the
          previous frames encode.  Built by setup.py when FFmpeg's dev libraries are present.
  pyav    pure Python on PyAV (its own FFmpeg); encodes in the caller's thread.  The reference.
  png     frame_000000.png, ... in a folder (PyAV's PNG encoder), each file written atomically.

Colour: YUV formats (yuv420p, yuv444p) get BT.709 primaries, transfer and matrix, limited (TV)
range, and swscale converts with exactly those coefficients; ffv1 stores RGB losslessly (bgr0), so
decoding gives the frames back bit for bit.
"""
from __future__ import annotations

import os
from typing import Optional, Tuple

import numpy as np

from digan.fsio import atomic_save
from digan.fsio import remove_file as _remove_partial

# The public names of the split modules stay importable from here (engine.sink is the entry point).
from .codecs import CODECS, PNG_CODEC, SinkConfigError, is_rgb_pix_fmt  # noqa: F401
from .encoders import available_codecs, libavcodec_versions, native_available, native_import  # noqa: F401
from .sink_spec import SinkSpec, make_spec, validate_sink_args  # noqa: F401


def open_sink(path, width: int, height: int, fps, codec: str = "libx264", crf: Optional[int] = None,
              preset: Optional[str] = "medium", gop: Optional[int] = None, backend: str = "auto",
              queue_size: int = 8, input_format: str = "rgb24", container: Optional[str] = None,
              pix_fmt: Optional[str] = None) -> "FrameSink":
    """Check the request (see `make_spec`), then open the sink.

    path: .mp4/.mkv/.mov file (container from the extension unless `container` is given), or a
    folder (trailing '/', existing folder or no extension) for PNG frames.  crf None: the codec's
    default (x264 18, x265 20, svtav1 30, nvenc cq 19).  gop: keyframe interval (scene cuts then
    add none).  backend 'auto': native when built and it has the codec, else PyAV.  pix_fmt: the
    stored pixel format (yuv420p, yuv444p, rgb24; None: the codec's default)."""
    return open_spec(make_spec(path, width, height, fps, codec, crf, preset, gop, backend, queue_size,
                               input_format, container, pix_fmt=pix_fmt))


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
        mod, why = native_import()
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
            if not is_rgb_pix_fmt(spec.pix_fmt):  # yuv420p, yuv444p: the same tags as the native stream
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
            if not is_rgb_pix_fmt(self.spec.pix_fmt):
                frame = frame.reformat(format=self.spec.pix_fmt, dst_colorspace="ITU709", src_color_range="JPEG",
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
            except Exception:
                pass
        _remove_partial(self.path)


class PngSink(FrameSink):
    """frame_000000.png, frame_000001.png, ... in a folder; each written beside as a temporary file
    and renamed (digan.fsio.atomic_save)."""

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
        atomic_save(dst, lambda tmp: tmp.write_bytes(data))
        self._written.append(dst)

    def _close(self) -> None:
        pass

    def _abort(self) -> None:
        for p in self._written:
            _remove_partial(p)
        self._written.clear()
