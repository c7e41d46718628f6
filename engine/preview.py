"""Contact sheets (PNG, written with zlib: no imaging library needed) and optional GIF previews."""
from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np


def write_png(path, image: np.ndarray) -> Path:
    """image uint8 (H, W, 3) -> an 8-bit RGB PNG, written atomically."""
    image = np.ascontiguousarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"write_png wants uint8 (H, W, 3), got {image.dtype} {image.shape}")
    H, W, _ = image.shape
    raw = np.concatenate([np.zeros((H, 1), np.uint8), image.reshape(H, W * 3)], axis=1).tobytes()

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", W, H, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(png)
    tmp.replace(path)
    return path


def sample_indices(total: int, count: int = 8) -> List[int]:
    count = min(count, total)
    return sorted({round(i * (total - 1) / max(count - 1, 1)) for i in range(count)})


def contact_sheet(frames: Sequence[np.ndarray], cols: int = 4, pad: int = 2) -> np.ndarray:
    """Frames (H, W, 3) in a grid with `pad` pixels of dark grey between them."""
    n = len(frames)
    cols = min(cols, n)
    rows = -(-n // cols)
    H, W, _ = frames[0].shape
    sheet = np.full((rows * H + (rows + 1) * pad, cols * W + (cols + 1) * pad, 3), 32, np.uint8)
    for k, fr in enumerate(frames):
        r, c = divmod(k, cols)
        y, x = pad + r * (H + pad), pad + c * (W + pad)
        sheet[y:y + H, x:x + W] = fr
    return sheet


def write_gif(path, frames: Sequence[np.ndarray], fps: float) -> Path:
    import av  # optional dependency, only for GIFs
    H, W, _ = frames[0].shape
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp.gif")
    with av.open(str(tmp), "w") as out:
        stream = out.add_stream("gif", rate=max(1, int(round(fps))))
        stream.width, stream.height, stream.pix_fmt = W, H, "rgb8"
        for fr in frames:
            for pkt in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(fr), format="rgb24").reformat(format="rgb8")):
                out.mux(pkt)
        for pkt in stream.encode():
            out.mux(pkt)
    tmp.replace(path)
    return path


def write_preview(video_path, frames: Dict[int, np.ndarray], gif: bool = False, fps: float = 16.0,
                  gif_frames: Sequence[np.ndarray] = ()) -> List[Path]:
    """Contact sheet of the sampled frames (dict index -> frame) beside the video."""
    base = Path(video_path)
    stem = base.with_suffix("") if base.suffix else base
    ordered = [frames[k] for k in sorted(frames)]
    out = [write_png(f"{stem}.preview.png", contact_sheet(ordered))]
    if gif:
        out.append(write_gif(f"{stem}.preview.gif", list(gif_frames) or ordered, fps))
    return out
