"""Still and animated images of frames: PNG, contact sheets, GIF (palette fitted to the frames).

Used by the renderer's previews and the trainer's preview grids; it lives in `digan/` so that the
trainer never imports `engine`. Pillow does the encoding: its PNG writer filters rows adaptively
(a hand-written filter-0 zlib PNG came out about twice the size), and a GIF gets one 256-colour
palette fitted to all of its frames (median cut) instead of a fixed 3-3-2 palette (118 colours
against 9,256 in the source, seen with FFmpeg's rgb8 path)."""
from __future__ import annotations

from pathlib import Path
from typing import List, Sequence

import numpy as np

from .fsio import atomic_save as _atomic_save  # save(tmp) writes the file; one rename publishes it

# At most this many pixels feed the palette fit: median cut is linear in pixels, and 2^20 samples
# of a clip already place 256 colours well (the fit takes ~0.1 s on one core).
_PALETTE_SAMPLES = 1 << 20


def _check_frame(image: np.ndarray, what: str) -> np.ndarray:
    image = np.ascontiguousarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or 0 in image.shape:
        raise ValueError(f"{what} wants uint8 (H, W, 3) frames, got {image.dtype} {image.shape}")
    return image


def write_png(path, image: np.ndarray) -> Path:
    """image uint8 (H, W, 3) -> an 8-bit RGB PNG, written atomically."""
    from PIL import Image
    image = _check_frame(image, "write_png")
    return _atomic_save(path, lambda tmp: Image.fromarray(image, "RGB").save(tmp, format="PNG", optimize=True))


def sample_indices(total: int, count: int = 8) -> List[int]:
    """`count` frame indices spread evenly over [0, total), first and last included."""
    count = min(count, total)
    return sorted({round(i * (total - 1) / max(count - 1, 1)) for i in range(count)})


def contact_sheet(frames: Sequence[np.ndarray], cols: int = 4, pad: int = 2) -> np.ndarray:
    """Frames (H, W, 3) in a grid with `pad` pixels of dark grey between them."""
    if not frames:
        raise ValueError("contact_sheet needs at least one frame")
    n = len(frames)
    cols = max(1, min(cols, n))
    rows = -(-n // cols)
    H, W, _ = frames[0].shape
    sheet = np.full((rows * H + (rows + 1) * pad, cols * W + (cols + 1) * pad, 3), 32, np.uint8)
    for k, fr in enumerate(frames):
        r, c = divmod(k, cols)
        y, x = pad + r * (H + pad), pad + c * (W + pad)
        sheet[y:y + H, x:x + W] = fr
    return sheet


def fit_palette(frames: Sequence[np.ndarray], colors: int = 256):
    """One adaptive palette (a Pillow 'P' image) for all frames: median cut over a pixel sample."""
    from PIL import Image
    pixels = np.concatenate([f.reshape(-1, 3) for f in frames])                      # (N, 3)
    if len(pixels) > _PALETTE_SAMPLES:
        # A fixed stride, not a random draw: the same frames always give the same palette (and GIF).
        pixels = pixels[:: -(-len(pixels) // _PALETTE_SAMPLES)]
    strip = Image.fromarray(np.ascontiguousarray(pixels[None]), "RGB")              # (1, N, 3)
    return strip.quantize(colors=colors, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)


def write_gif(path, frames: Sequence[np.ndarray], fps: float) -> Path:
    """Frames uint8 (H, W, 3) -> a looping GIF with one palette fitted to them (Floyd–Steinberg
    dithering against it), written atomically."""
    from PIL import Image
    if not frames:
        raise ValueError("write_gif needs at least one frame")
    if not (np.isfinite(fps) and fps > 0):
        raise ValueError(f"write_gif wants fps > 0, got {fps}")
    frames = [_check_frame(f, "write_gif") for f in frames]
    palette = fit_palette(frames)
    images = [Image.fromarray(f, "RGB").quantize(palette=palette, dither=Image.Dither.FLOYDSTEINBERG)
              for f in frames]
    # GIF delays are in 10 ms units; Pillow rounds the millisecond duration we give it.
    duration = max(20, int(round(1000.0 / fps)))
    return _atomic_save(path, lambda tmp: images[0].save(
        tmp, format="GIF", save_all=True, append_images=images[1:], duration=duration, loop=0, optimize=False))


def gif_colour_count(path) -> int:
    """Distinct RGB colours shown over all frames of a GIF (for tests and `digan info`-like reports)."""
    from PIL import Image, ImageSequence
    seen = set()
    with Image.open(path) as im:
        for fr in ImageSequence.Iterator(im):
            rgb = np.asarray(fr.convert("RGB")).reshape(-1, 3)
            seen.update(map(tuple, np.unique(rgb, axis=0)))
    return len(seen)
