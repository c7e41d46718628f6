"""The codec table, in one place: names as ffmpeg users type them, our encoder names, the containers
(and file extensions) each may go in, its pixel formats, quality and preset knobs.

`engine.sink` (checks and encoder options) and `engine.render_cmd` (--codec, --pix-fmt) read it;
the native encoder (csrc/) keeps no table of its own: it is handed the encoder name and pixel
format and asks its FFmpeg build whether they exist and fit together.

Pixel formats (``--pix-fmt``), as the user names them:
  yuv420p   4:2:0 chroma, BT.709 limited range: what every player decodes (default for h264/hevc/av1)
  yuv444p   full-resolution chroma, same BT.709 tags (h264 High 4:4:4, hevc Main 4:4:4; no av1 here:
            SVT-AV1 takes 4:2:0 only)
  rgb24     RGB without any conversion, lossless: ffv1 stores it as bgr0 (FFmpeg's ffv1 takes no
            packed rgb24 and no 8-bit gbrp), which decoding turns back into the same RGB bit for bit
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple


@dataclass(frozen=True)
class CodecInfo:
    containers: Tuple[str, ...]          # muxer names that can hold it
    crf_range: Optional[Tuple[int, int]]  # None: lossless, no quality knob
    default_crf: Optional[int]           # used when crf=None
    presets: Tuple[str, ...]             # accepted preset names ('' entries: none)
    pix_fmts: Tuple[str, ...]            # accepted --pix-fmt names; the first is the default
    hardware: bool = False               # needs a device (probed by opening a small encoder)
    min_size: int = 1                    # smallest width/height the encoder accepts


_X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower",
                 "veryslow", "placebo")
# SVT-AV1 presets are numbers (0 slowest .. 13 fastest); x264 names map onto them.
SVT_PRESET = {"ultrafast": 12, "superfast": 11, "veryfast": 10, "faster": 9, "fast": 8, "medium": 7,
              "slow": 5, "slower": 4, "veryslow": 2, "placebo": 0}
# NVENC presets are p1 (fastest) .. p7 (best); x264 names map onto them.
NVENC_PRESET = {"ultrafast": "p1", "superfast": "p1", "veryfast": "p2", "faster": "p3", "fast": "p3",
                "medium": "p4", "slow": "p5", "slower": "p6", "veryslow": "p7", "placebo": "p7"}
_NVENC_PRESETS = tuple(NVENC_PRESET) + tuple(f"p{i}" for i in range(1, 8))
_YUV = ("yuv420p", "yuv444p")

CODECS: Dict[str, CodecInfo] = {
    "libx264": CodecInfo(("mp4", "matroska", "mov"), (0, 51), 18, _X264_PRESETS, _YUV),
    "libx265": CodecInfo(("mp4", "matroska", "mov"), (0, 51), 20, _X264_PRESETS, _YUV),
    # SVT-AV1 1.4 (Debian 12) refuses frames smaller than 64x64, and takes 4:2:0 only.
    "libsvtav1": CodecInfo(("mp4", "matroska"), (0, 63), 30,
                           tuple(SVT_PRESET) + tuple(str(i) for i in range(14)), ("yuv420p",), min_size=64),
    "ffv1": CodecInfo(("matroska",), None, None, (), ("rgb24", "bgr0", "yuv420p", "yuv444p")),
    # NVENC's smallest frame was measured for h264 (145); hevc_nvenc is given the same bound, unmeasured
    # (no NVENC on the machines we have: the H100/H200 carry no video encoder).
    "h264_nvenc": CodecInfo(("mp4", "matroska", "mov"), (0, 51), 19, _NVENC_PRESETS, _YUV, hardware=True,
                            min_size=145),
    "hevc_nvenc": CodecInfo(("mp4", "matroska", "mov"), (0, 51), 19, _NVENC_PRESETS, _YUV, hardware=True,
                            min_size=145),
}

PNG_CODEC = "png"  # codec name that selects the PNG folder sink
DEFAULT_CODEC = "libx264"
# Codec names as ffmpeg users type them (ffmpeg -c:v h264 ...) -> our encoder names.
CODEC_ALIASES = {"h264": "libx264", "x264": "libx264", "avc": "libx264", "hevc": "libx265", "h265": "libx265",
                 "x265": "libx265", "av1": "libsvtav1", "svtav1": "libsvtav1", "libsvt_av1": "libsvtav1",
                 "nvenc": "h264_nvenc", "h264_nvenc": "h264_nvenc", "hevc_nvenc": "hevc_nvenc", "ffv1": "ffv1",
                 "png": PNG_CODEC}

CONTAINER_BY_EXT = {".mp4": "mp4", ".mkv": "matroska", ".mov": "mov"}
VIDEO_EXTS = set(CONTAINER_BY_EXT)
CONTAINER_NAMES = {"mp4": "mp4", "mkv": "matroska", "matroska": "matroska", "mov": "mov"}
EXT_BY_CONTAINER = {"mp4": ".mp4", "matroska": ".mkv", "mov": ".mov"}

# --pix-fmt name -> what the encoder is given, where they differ (ffv1 takes RGB as bgr0).
_ENCODER_PIX_FMT = {("ffv1", "rgb24"): "bgr0"}


def pix_fmts(codec: str) -> Tuple[str, ...]:
    """The --pix-fmt names `codec` accepts, default first ('png': rgb24 only)."""
    return ("rgb24",) if codec == PNG_CODEC else CODECS[codec].pix_fmts


def encoder_pix_fmt(codec: str, input_format: str = "rgb24", pix_fmt: Optional[str] = None) -> str:
    """Pixel format the encoder gets for a --pix-fmt (None: the codec's default).  I420 input is
    encoded as it comes (yuv420p)."""
    if input_format == "yuv420p":
        return "yuv420p"
    name = pix_fmt or pix_fmts(codec)[0]
    return _ENCODER_PIX_FMT.get((codec, name), name)


def is_rgb_pix_fmt(pix_fmt: str) -> bool:
    """True for the RGB encoder formats (full range, sRGB tags), False for YUV (BT.709, TV range)."""
    return pix_fmt in ("rgb24", "bgr0", "gbrp")


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
        opts = {"crf": str(q), "preset": str(SVT_PRESET.get(p, p))}
    elif codec == "ffv1":
        opts = {"level": "3", "slicecrc": "1"}
    elif codec in ("h264_nvenc", "hevc_nvenc"):
        p = preset or "medium"
        opts = {"preset": NVENC_PRESET.get(p, p), "rc": "vbr", "cq": str(q), "b": "0"}
    else:  # pragma: no cover - CODECS and this function change together
        raise AssertionError(codec)
    return opts


class SinkConfigError(ValueError):
    """A request that cannot work as given; the message says what to change."""
