"""`digan render`'s checks of the numbers, device, seeds and view a command asks for, each
error naming its option; run before anything is loaded or created (engine/render_cmd.py)."""
from __future__ import annotations

import argparse
import math
import re
from typing import List, Optional, Tuple

import torch

from digan.view import View

from .request import parse_size

# A render longer than this is a typo (--interpolate 1e9), not a video: 10M frames are 4 days at
# 30 fps, and every frame costs a time-grid entry and a manifest range.
MAX_FRAMES = 10_000_000
MAX_VIDEOS = 10_000          # seeds per command (each is a file or a grid cell)
SEED_LIMIT = 1 << 62         # seeds (and motion seed + 2^32) must fit torch's int64 manual_seed
MAX_PIXELS = 1 << 28         # per frame, at the output; above, no encoder here opens (and RAM runs out)


def int_arg(text: str) -> int:
    """argparse type: an integer, also written as a float that is one ('1e9', '4.0')."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        x = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if not math.isfinite(x) or x != int(x):
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer")
    return int(x)


def _finite(option: str, value: Optional[float]) -> None:
    if value is not None and not math.isfinite(value):
        raise ValueError(f"{option} must be a finite number, got {value}")


def check_numbers(args) -> None:
    """Every numeric option, before anything is loaded or created."""
    if args.frames < 1:
        raise ValueError(f"--frames must be >= 1, got {args.frames}")
    if args.interpolate < 1:
        raise ValueError(f"--interpolate must be an integer >= 1, got {args.interpolate}")
    total = (args.frames - 1) * args.interpolate + 1
    if total > MAX_FRAMES:
        raise ValueError(f"--frames {args.frames} with --interpolate {args.interpolate} makes {total:,} frames; "
                         f"at most {MAX_FRAMES:,} per render (split the time range over several renders)")
    for option, value in (("--fps", args.fps), ("--psi/--trunc", args.psi), ("--t-start", args.t_start),
                          ("--t-end", args.t_end), ("--zoom", args.zoom)):
        _finite(option, value)
    if args.fps <= 0:
        raise ValueError(f"--fps must be positive, got {args.fps}")
    if args.segment_frames < 1:
        raise ValueError(f"--segment-frames must be >= 1, got {args.segment_frames}")
    if args.scale < 1:
        raise ValueError(f"--scale must be a positive integer, got {args.scale}")
    memory_budget(args.memory_budget)
    check_device(args.device)


def memory_budget(text: str) -> int:
    try:
        budget = parse_size(text)
    except (ValueError, OverflowError):  # 'inf' overflows int()
        raise ValueError(f"--memory-budget: cannot read a memory size from {text!r}; use e.g. 512M or 4G") from None
    if budget <= 0:
        raise ValueError(f"--memory-budget must be positive, got {text!r}")
    return budget


def check_device(text: Optional[str]) -> None:
    if text is None:
        return
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise ValueError(f"--device {text!r} is not a device: use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {text}: CUDA is not available here (no GPU, driver or CUDA build of "
                             "torch); use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"--device {text}: there are {torch.cuda.device_count()} CUDA device(s) here")
    elif dev.type != "cpu":
        raise ValueError(f"--device {text}: only cpu and cuda devices are supported")


def int_list(text: Optional[str], option: str, limit: int = MAX_VIDEOS) -> Optional[List[int]]:
    """'0,3,7', '0-7' or '0-3,9' -> ints in [0, 2^62); errors name the option.  Ranges are sized
    before they are expanded ('0-1000000000000' is refused, not allocated)."""
    if text is None:
        return None
    hint = f"{option} wants integers like '0', '0,5,9' or '0-7', got {text!r}"
    out: List[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if "-" in part[1:]:
                cut = part.index("-", 1)
                a, b = int(part[:cut]), int(part[cut + 1:])
            else:
                a = b = int(part)
        except ValueError:
            raise ValueError(hint) from None
        if b < a:
            raise ValueError(f"{option}: the range {part!r} is empty")
        if a < 0 or b >= SEED_LIMIT:
            raise ValueError(f"{option}: {part!r} is outside [0, 2^62)")
        if len(out) + (b - a + 1) > limit:
            raise ValueError(f"{option} {text!r} gives more than {limit:,} values")
        out.extend(range(a, b + 1))
    if not out:
        raise ValueError(hint)
    return out


def build_view(args, cfg) -> View:
    if args.scale < 1:
        raise ValueError(f"--scale must be a positive integer, got {args.scale}")
    if args.zoom is not None:
        _finite("--zoom", args.zoom)
        if args.zoom <= 0:
            raise ValueError(f"--zoom must be positive, got {args.zoom}")
        if args.zoom > 1024:  # the base grid would hold millions of pixels a side
            raise ValueError(f"--zoom {args.zoom} is too far out (at most 1024)")
        view = View.from_range(cfg.img_resolution, cfg.input_resolution, -args.zoom, args.zoom, args.scale)
    else:
        view = View(scale=args.scale)
    H, W = view.output_size(cfg.img_resolution)
    if args.crop:
        try:
            top, left, h, w = (int(v) for v in args.crop.split(","))
        except ValueError:
            raise ValueError(f"--crop wants TOP,LEFT,HEIGHT,WIDTH integers, got {args.crop!r}") from None
        if h < 1 or w < 1 or top < 0 or left < 0 or top + h > H or left + w > W:
            raise ValueError(f"--crop {args.crop} does not fit inside the {H}x{W} frame")
        view = View(scale=view.scale, top=view.top + top, left=view.left + left, height=h, width=w)
        H, W = h, w
    if H * W > MAX_PIXELS:
        raise ValueError(f"frames of {W}x{H} are too large (more than {MAX_PIXELS:,} pixels; no encoder here "
                         "takes them): use a lower --scale or --zoom, or --crop a part")
    return view


def parse_grid(text: Optional[str]) -> Optional[Tuple[int, int]]:
    """--grid: None, 'seeds', 'motion' -> None (automatic shape); 'WxH' -> (columns W, rows H)."""
    if text is None or text in ("seeds", "motion"):
        return None
    m = re.fullmatch(r"\s*(\d{1,4})\s*[xX]\s*(\d{1,4})\s*", text)
    if not m or int(m.group(1)) < 1 or int(m.group(2)) < 1:
        raise ValueError(f"--grid must be 'seeds', 'motion' or WxH with W, H >= 1 (e.g. 4x2), got {text!r}")
    return int(m.group(1)), int(m.group(2))
