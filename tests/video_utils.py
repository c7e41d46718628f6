"""Test helpers for video: deterministic synthetic frames, decoding with PyAV, PSNR."""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import List

import numpy as np


def synthetic_frame(index: int, height: int = 48, width: int = 64, seed: int = 0) -> np.ndarray:
    """Frame `index` of a deterministic clip: colour gradients, a moving soft disc, a moving bar and
    mild grey noise.  uint8 (H, W, 3); never flat; any frame can be made on its own (resume tests).

    Like camera or GAN footage its colour changes smoothly (soft edges, noise in brightness only),
    so 4:2:0 chroma subsampling alone stays near 45 dB; a 2-px coloured edge or RGB noise would
    cap every 4:2:0 codec near 34 dB whatever its CRF."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    u, v = x / max(width - 1, 1), y / max(height - 1, 1)
    t = index / 12.0
    r = 40 + 150 * u + 30 * np.sin(2 * np.pi * (v + t / 3))
    g = 50 + 120 * v + 40 * np.cos(2 * np.pi * (u - t / 4))
    b = 90 + 80 * (1 - u) * v
    cx = width * (0.5 + 0.3 * np.cos(t))
    cy = height * (0.5 + 0.3 * np.sin(1.3 * t))
    disc = np.clip(1.0 - (np.hypot(x - cx, y - cy) - width * 0.15) / 10.0, 0, 1)  # soft edge
    bar_x = (index * 3) % width
    bar = np.clip(1.0 - np.abs(x - bar_x) / 10.0, 0, 1)
    img = np.stack([r, g, b], axis=-1)
    img = img * (1 - disc[..., None]) + np.array([230.0, 200.0, 40.0]) * disc[..., None]
    img = img * (1 - 0.6 * bar[..., None]) + np.array([20.0, 60.0, 200.0]) * (0.6 * bar[..., None])
    rng = np.random.default_rng(seed * 100003 + index)
    img = img + rng.normal(0.0, 1.0, (height, width, 1))
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def synthetic_clip(n: int, height: int = 48, width: int = 64, seed: int = 0) -> np.ndarray:
    """(n, H, W, 3) uint8."""
    return np.stack([synthetic_frame(i, height, width, seed) for i in range(n)])


@dataclass
class Decoded:
    frames: np.ndarray        # (N, H, W, 3) uint8 RGB
    fps: Fraction
    width: int
    height: int
    codec: str
    pix_fmt: str
    color_primaries: int      # AVColorPrimaries (1 = BT.709)
    color_trc: int            # AVColorTransferCharacteristic (1 = BT.709)
    colorspace: int           # AVColorSpace (1 = BT.709, 0 = RGB)
    color_range: int          # AVColorRange (1 = MPEG/TV/limited, 2 = JPEG/full)
    keyframes: List[int]      # indices of key packets in decode order of frames


def decode_video(path, yuv: bool = False) -> Decoded:
    """Decode every frame of `path` with PyAV.  RGB conversion uses BT.709 limited range explicitly
    (not whatever the decoder guesses) and interpolates chroma as players do (swscale's default
    repeats chroma samples sideways, which alone costs ~10 dB on coloured edges); yuv=True returns
    I420 arrays (H*3/2, W) untouched."""
    import av
    from av.video.reformatter import Interpolation

    _UPSAMPLE = Interpolation.BICUBIC | Interpolation.ACCURATE_RND | Interpolation.FULL_CHR_H_INT

    with av.open(str(path)) as c:
        st = c.streams.video[0]
        frames, keys = [], []
        for frame in c.decode(st):
            if frame.key_frame:
                keys.append(len(frames))
            if yuv:
                frames.append(frame.to_ndarray(format="yuv420p"))
            elif frame.format.name in ("yuv420p", "yuvj420p"):
                rgb = frame.reformat(format="rgb24", src_colorspace="ITU709", src_color_range="MPEG",
                                     dst_color_range="JPEG",
                                     interpolation=_UPSAMPLE)
                frames.append(rgb.to_ndarray())
            else:
                frames.append(frame.to_ndarray(format="rgb24"))
        cc = st.codec_context
        return Decoded(np.stack(frames) if frames else np.zeros((0,), np.uint8), Fraction(st.average_rate),
                       cc.width, cc.height, cc.name, cc.format.name if cc.format else "",
                       int(cc.color_primaries), int(cc.color_trc), int(cc.colorspace), int(cc.color_range), keys)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB over all pixels of two uint8 arrays of the same shape (inf when equal)."""
    assert a.shape == b.shape, (a.shape, b.shape)
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0 ** 2 / mse))


def first_mismatch(a: np.ndarray, b: np.ndarray) -> str:
    """Where two frame stacks first differ, for assertion messages."""
    if a.shape != b.shape:
        return f"shapes differ: {a.shape} vs {b.shape}"
    idx = np.argwhere(a != b)
    if len(idx) == 0:
        return "identical"
    i = tuple(idx[0])
    return f"{len(idx)} values differ; first at {i}: {a[i]} vs {b[i]}"
