"""`digan render`: request -> plan -> frames -> segments -> final file, with resume and progress.

Everything a request can get wrong is checked before any frame is rendered (sizes that cannot
nest, zero frames, unknown codec, unwritable output, a missing or corrupt checkpoint)."""
from __future__ import annotations

import argparse
import hashlib
import math
import os
import sys
import time
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Tuple

import numpy as np
import torch

from digan.view import View

from .request import RenderRequest, parse_size, seeds_from_text

VIDEO_EXTS = {".mp4", ".mkv", ".mov"}


def add_render_args(p: argparse.ArgumentParser, add_model_args: Callable) -> None:
    add_model_args(p)
    g = p.add_argument_group("what to render")
    g.add_argument("--seeds", default="0", help="content seeds: '0', '0,5,9' or '0-7'; one video each")
    g.add_argument("--motion-seeds", default=None, help="motion seeds (same count as videos); default: from the content seed")
    g.add_argument("--label", default=None, help="class label(s) for class-conditional models, e.g. '12' or '3,7'")
    g.add_argument("--psi", type=float, default=1.0, help="truncation psi (1 = none)")
    g.add_argument("--grid", choices=["seeds", "motion"], default=None,
                   help="one video holding a grid: 'seeds' = one cell per seed; 'motion' = the first seed's "
                        "content with each --motion-seeds motion (motion diversity)")
    g = p.add_argument_group("time")
    g.add_argument("--frames", type=int, default=16, help="frames on the time grid [t-start, t-end]")
    g.add_argument("--fps", type=float, default=16.0, help="frame rate of the output file")
    g.add_argument("--t-start", type=float, default=0.0, help="first time (training covered [0, 1])")
    g.add_argument("--t-end", type=float, default=1.0, help="last time; > 1 extrapolates")
    g.add_argument("--interpolate", type=int, default=1, help="k: render (frames-1)*k+1 frames on the same range")
    g = p.add_argument_group("space")
    g.add_argument("--scale", type=int, default=1, help="super-resolution: every level sampled s x denser (R*s pixels)")
    g.add_argument("--zoom", type=float, default=None,
                   help="coordinate half-range: 1.5 renders [-1.5, 1.5) (zoom out); must fall on the base grid")
    g.add_argument("--crop", default=None, help="TOP,LEFT,HEIGHT,WIDTH in output pixels of the (zoomed) frame")
    g = p.add_argument_group("output")
    g.add_argument("-o", "--output", required=True,
                   help="video file (.mp4/.mkv/.mov) or a folder for PNG frames; '{seed}' is replaced per video")
    g.add_argument("--codec", default="libx264", help="libx264, libx265, libsvtav1, ffv1 (lossless), h264_nvenc, png")
    g.add_argument("--crf", type=int, default=18, help="quality for x264/x265/svtav1 (lower = better)")
    g.add_argument("--preset", default="medium", help="encoder preset (x264: ultrafast..veryslow)")
    g.add_argument("--segment-frames", type=int, default=64, help="frames per segment (GOP-aligned; resume unit)")
    g.add_argument("--resume", action="store_true", help="reuse complete segments of the same request in the parts folder")
    g.add_argument("--preview", action="store_true", help="write a contact-sheet PNG beside the video")
    g.add_argument("--gif", action="store_true", help="with --preview, also write an animated GIF")
    g.add_argument("--encoder", choices=["auto", "native", "pyav"], default="auto",
                   help="native C++ frame stream (own thread) or pure-Python PyAV")
    g = p.add_argument_group("compute")
    g.add_argument("--precision", "--dtype", dest="precision", choices=["fp32", "tf32", "bf16"], default="fp32")
    g.add_argument("--memory-budget", default="2G", help="bytes for tiles + one chunk of frames, e.g. 512M, 4G")
    g.add_argument("--backend", choices=["auto", "torch", "triton"], default="auto")
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress output")


# ---- request building and validation --------------------------------------------------------

def build_view(args, cfg) -> View:
    if args.scale < 1:
        raise ValueError(f"--scale must be a positive integer, got {args.scale}")
    if args.zoom is not None:
        if args.zoom <= 0:
            raise ValueError(f"--zoom must be positive, got {args.zoom}")
        view = View.from_range(cfg.img_resolution, cfg.input_resolution, -args.zoom, args.zoom, args.scale)
    else:
        view = View(scale=args.scale)
    if args.crop:
        try:
            top, left, h, w = (int(v) for v in args.crop.split(","))
        except ValueError:
            raise ValueError(f"--crop wants TOP,LEFT,HEIGHT,WIDTH integers, got {args.crop!r}") from None
        H, W = view.output_size(cfg.img_resolution)
        if h < 1 or w < 1 or top < 0 or left < 0 or top + h > H or left + w > W:
            raise ValueError(f"--crop {args.crop} does not fit inside the {H}x{W} frame")
        view = View(scale=view.scale, top=view.top + top, left=view.left + left, height=h, width=w)
    return view


def _ints(text: Optional[str]) -> Optional[List[int]]:
    return None if text is None else seeds_from_text(text)


def build_requests(args, cfg) -> List[Tuple[str, RenderRequest, Tuple[int, int]]]:
    """[(output path, request, grid shape (rows, cols))] — one per output file."""
    view = build_view(args, cfg)
    seeds = seeds_from_text(args.seeds)
    motion = _ints(args.motion_seeds)
    labels = _ints(args.label)
    budget = parse_size(args.memory_budget)
    common = dict(psi=args.psi, frames=args.frames, t_start=args.t_start, t_end=args.t_end,
                  interpolate=args.interpolate, view=view, precision=args.precision, memory_budget=budget,
                  backend=args.backend, device=args.device)
    if labels is not None and len(labels) == 1:
        labels = labels * (len(motion) if args.grid == "motion" and motion else len(seeds))
    if args.grid == "motion":
        if not motion:
            raise ValueError("--grid motion needs --motion-seeds (e.g. 0-3)")
        seeds = [seeds[0]] * len(motion)
        if labels is not None:
            labels = labels[:1] * len(motion)
    if args.grid:
        n = len(seeds)
        cols = math.ceil(math.sqrt(n))
        rows = math.ceil(n / cols)
        req = RenderRequest(seeds=seeds, motion_seeds=motion, labels=labels, **common)
        return [(args.output.replace("{seed}", "grid"), req, (rows, cols))]
    if motion is not None and len(motion) != len(seeds):
        raise ValueError(f"{len(motion)} motion seeds for {len(seeds)} videos")
    out = []
    for k, seed in enumerate(seeds):
        path = args.output
        if "{seed}" in path:
            path = path.replace("{seed}", str(seed))
        elif len(seeds) > 1:
            stem, ext = os.path.splitext(path)
            path = f"{stem}_seed{seed}{ext}"
        req = RenderRequest(seeds=[seed], motion_seeds=None if motion is None else [motion[k]],
                            labels=None if labels is None else [labels[k]], **common)
        out.append((path, req, (1, 1)))
    return out


def model_id(checkpoint: Optional[str], desc: str) -> str:
    if checkpoint is None:
        return desc
    h = hashlib.sha256()
    with open(checkpoint, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ---- progress ---------------------------------------------------------------------------------

class Progress:
    """One line on stderr: frames done/total, frames/s, ETA. Redrawn in place on a terminal,
    a line every ~10 s otherwise (logs), nothing with --quiet."""

    def __init__(self, total: int, label: str, quiet: bool):
        self.total, self.label, self.quiet = total, label, quiet
        self.done = 0
        self.t0 = self.last = time.monotonic()
        self.tty = sys.stderr.isatty()

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if self.quiet or (now - self.last < (0.2 if self.tty else 10.0) and self.done < self.total):
            return
        self.last = now
        rate = self.done / max(now - self.t0, 1e-9)
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        width = 24
        fill = int(width * self.done / max(self.total, 1))
        line = (f"{self.label} [{'#' * fill}{'.' * (width - fill)}] {self.done}/{self.total} frames "
                f"{rate:.2f} fps, ETA {eta:.0f}s")
        sys.stderr.write(("\r" + line) if self.tty else (line + "\n"))
        if self.tty and self.done >= self.total:
            sys.stderr.write("\n")
        sys.stderr.flush()


# ---- frames ----------------------------------------------------------------------------------

def grid_frames(renderer, grid: Tuple[int, int], start: int, end: int) -> Iterator[np.ndarray]:
    """Frames [start, end) of every video of the request, tiled into a rows x cols grid."""
    rows, cols = grid
    n = renderer.num_videos
    H, W = renderer.H, renderer.W
    if n == 1:
        for _, _, frame in renderer.frames(start=start, end=end):
            yield frame.numpy()
        return
    # Render chunk by chunk for all videos (bounded memory: one chunk per video).
    for chunk in renderer.plan.chunks(start, end):
        f0, f1 = chunk.frames
        canvas = np.zeros((f1 - f0, rows * H, cols * W, 3), dtype=np.uint8)
        for k in range(n):
            blocks = renderer.video_weights(k)
            buf = renderer.render_chunk(blocks, chunk).cpu().numpy()
            r, c = divmod(k, cols)
            canvas[:, r * H:(r + 1) * H, c * W:(c + 1) * W] = buf
        yield from canvas


def cmd_render(args) -> int:
    from digan.default import load_or_default

    from .executor import Renderer
    from .preview import sample_indices, write_preview
    from .segments import SegmentedWriter
    from .sink import validate_sink_args

    if args.frames < 1:
        raise ValueError(f"--frames must be >= 1, got {args.frames}")
    if args.fps <= 0:
        raise ValueError(f"--fps must be positive, got {args.fps}")
    if args.segment_frames < 1:
        raise ValueError(f"--segment-frames must be >= 1, got {args.segment_frames}")
    # torchrun: rank r renders segments r, r + W, ...; rank 0 joins them after a barrier.
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if world > 1:
        import torch.distributed as dist
        if not dist.is_initialized():
            dist.init_process_group("gloo")
        if args.device is None and torch.cuda.is_available():
            args.device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
        args.quiet = args.quiet or rank != 0
    G, desc = load_or_default(args.checkpoint)
    jobs = build_requests(args, G.cfg)
    mid = model_id(args.checkpoint, desc)
    # Validate every output before rendering anything.
    renderers = []
    for path, req, grid in jobs:
        renderer = Renderer(G, req)
        W = renderer.W * grid[1]
        H = renderer.H * grid[0]
        png = args.codec == "png" or Path(path).suffix.lower() not in VIDEO_EXTS
        validate_sink_args(path, W, H, args.fps, codec="png" if png else args.codec, backend="png" if png else args.encoder)
        renderers.append((path, req, grid, renderer, W, H, png))
    if not args.quiet:
        print(f"model: {desc}", file=sys.stderr)
    for path, req, grid, renderer, W, H, png in renderers:
        T = renderer.plan.num_frames
        if not args.quiet:
            print(f"{path}: {W}x{H}, {T} frames at {args.fps:g} fps, {renderer.backend} backend on "
                  f"{renderer.device}, {req.precision}; plan: {renderer.plan.describe()}", file=sys.stderr)
        progress = Progress(T, Path(path).name, args.quiet)
        codec = "png" if png else args.codec
        settings = dict(codec=codec, crf=args.crf, preset=args.preset, fps=args.fps, width=W, height=H,
                        segment_frames=args.segment_frames, grid=list(grid))
        key = hashlib.sha256((req.content_hash(mid) + repr(sorted(settings.items()))).encode()).hexdigest()[:24]
        writer = SegmentedWriter(path, request_hash=key, total_frames=T, width=W, height=H, fps=args.fps,
                                 codec=codec, crf=args.crf, preset=args.preset, segment_frames=args.segment_frames,
                                 resume=args.resume, backend=args.encoder, rank=rank, world_size=world)
        pending = writer.pending_segments()
        skipped = T - sum(e - s for _, s, e in pending)
        if skipped:
            progress.update(skipped)
            if not args.quiet:
                print(f"resume: {skipped} frames already rendered in complete segments", file=sys.stderr)

        wanted = set(sample_indices(T)) if args.preview else set()
        gif_every = max(1, T // 64)  # a GIF of at most ~64 frames
        captured, gif_frames = {}, {}

        def counted(frames, start):
            for i, fr in enumerate(frames, start):
                if i in wanted:
                    captured[i] = fr.copy()
                if args.gif and i % gif_every == 0:
                    gif_frames[i] = fr.copy() if i not in captured else captured[i]
                yield fr
                progress.update(1)

        for index, s, e in pending:
            writer.write_segment(index, counted(grid_frames(renderer, grid, s, e), s))
        if world > 1:
            torch.distributed.barrier()
            if rank != 0:
                continue
        final = writer.finalize()
        if not args.quiet:
            print(f"wrote {final}", file=sys.stderr)
        if args.preview:
            # Frames in segments reused by --resume were not seen: render just those.
            for i in sorted(wanted - set(captured)):
                captured[i] = next(grid_frames(renderer, grid, i, i + 1))
            if args.gif and len(gif_frames) * gif_every < T:
                for i in range(0, T, gif_every):
                    if i not in gif_frames:
                        gif_frames[i] = next(grid_frames(renderer, grid, i, i + 1))
            sheet = write_preview(final, captured, gif=args.gif, fps=args.fps / gif_every,
                                  gif_frames=[gif_frames[k] for k in sorted(gif_frames)])
            if not args.quiet:
                print(f"preview: {', '.join(str(p) for p in sheet)}", file=sys.stderr)
    return 0
