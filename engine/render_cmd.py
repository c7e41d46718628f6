"""`digan render`: request -> plan -> frames -> segments -> final file, with resume and progress.

Everything a request can get wrong is checked before anything is created on disk: numbers that are
not finite or out of range, a frame count past MAX_FRAMES, the device, seeds and labels (naming the
option; those checks live in engine/render_checks.py), sizes that cannot nest or that the encoder
refuses, an extension no codec writes, an unwritable output, a missing or corrupt checkpoint, an
existing output without -y, a parts folder with finished work without --resume/--overwrite,
another render holding that folder.

The model is identified by the sha256 of its tensors (`model_fingerprint`), never by its name, so
a --resume after the model changed is refused instead of mixing two models in one video.
Ctrl-C and SIGTERM stop cleanly (exit 130 / 143) and say how many segments are kept for --resume."""
from __future__ import annotations

import argparse
import hashlib
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, List, Optional, Tuple

import numpy as np
import torch

from digan.fsio import sha256_file

from .codecs import CODEC_ALIASES, DEFAULT_CODEC, VIDEO_EXTS
from .render_checks import build_view, check_numbers, int_arg, int_list, memory_budget, parse_grid
from .request import RenderRequest

if TYPE_CHECKING:
    from .renderer import Renderer

def add_render_args(p: argparse.ArgumentParser, add_model_args: Callable) -> None:
    add_model_args(p)
    g = p.add_argument_group("what to render")
    g.add_argument("--seeds", default="0", help="content seeds: '0', '0,5,9' or '0-7'; one video each")
    g.add_argument("--motion-seeds", default=None,
                   help="motion seeds (same count as videos); default: from the content seed")
    g.add_argument("--label", "--class", dest="label", default=None,
                   help="class label(s) for class-conditional models, e.g. '12' or '3,7' (--class as in StyleGAN)")
    g.add_argument("--psi", "--trunc", dest="psi", type=float, default=1.0,
                   help="truncation psi (1 = none; --trunc as in the official scripts)")
    g.add_argument("--grid", default=None, metavar="{seeds,motion,WxH}",
                   help="one video holding a grid: 'seeds' = one cell per seed (near-square); 'motion' = the "
                        "first seed's content with each --motion-seeds motion (motion diversity); WxH, e.g. "
                        "4x2 = the seeds in W columns and H rows (StyleGAN3 gen_video.py's --grid)")
    g = p.add_argument_group("time")
    g.add_argument("--frames", type=int_arg, default=16, help="frames on the time grid [t-start, t-end]")
    g.add_argument("--fps", type=float, default=16.0, help="frame rate of the output file")
    g.add_argument("--t-start", type=float, default=0.0, help="first time (training covered [0, 1])")
    g.add_argument("--t-end", type=float, default=1.0, help="last time; > 1 extrapolates")
    g.add_argument("--interpolate", type=int_arg, default=1,
                   help="k: render (frames-1)*k+1 frames on the same range")
    g = p.add_argument_group("space")
    g.add_argument("--scale", type=int_arg, default=1,
                   help="super-resolution: every level sampled s x denser (R*s pixels)")
    g.add_argument("--zoom", type=float, default=None,
                   help="coordinate half-range: 1.5 renders [-1.5, 1.5) (zoom out); must fall on the base grid")
    g.add_argument("--crop", default=None, help="TOP,LEFT,HEIGHT,WIDTH in output pixels of the (zoomed) frame")
    g = p.add_argument_group("output")
    out = g.add_mutually_exclusive_group(required=True)
    out.add_argument("-o", "--output", default=None,
                     help="video file (.mp4/.mkv/.mov) or a folder for PNG frames; '{seed}' is replaced per video")
    out.add_argument("--outdir", default=None,
                     help="folder for one file per video, seed0000.mp4 ... (grid.mp4 with --grid), as the "
                          "official scripts")
    g.add_argument("--codec", default=None,
                   help="libx264 (default; or h264), libx265 (hevc), libsvtav1 (av1), ffv1 (lossless, .mkv), "
                        "h264_nvenc, hevc_nvenc, png (a folder)")
    g.add_argument("--crf", type=int, default=18, help="quality for x264/x265/svtav1 (lower = better)")
    g.add_argument("--preset", default="medium", help="encoder preset (x264: ultrafast..veryslow)")
    g.add_argument("--pix-fmt", default=None,
                   help="stored pixel format: yuv420p (default for h264/hevc/av1), yuv444p (h264/hevc, full "
                        "chroma), rgb24 (ffv1, lossless RGB; its default)")
    g.add_argument("--segment-frames", type=int_arg, default=64, help="frames per segment (GOP-aligned; resume unit)")
    g.add_argument("--resume", action="store_true",
                   help="continue an interrupted render: reuse its complete segments in the parts folder")
    ow = g.add_mutually_exclusive_group()
    ow.add_argument("-y", "--overwrite", action="store_true",
                    help="replace an existing output, and start over instead of resuming a parts folder")
    ow.add_argument("-n", "--no-overwrite", action="store_true",
                    help="never overwrite: refuse when an output exists (the default without -y)")
    g.add_argument("--preview", action="store_true", help="write a contact-sheet PNG beside the video")
    g.add_argument("--gif", action="store_true", help="also write an animated GIF preview (implies --preview)")
    g.add_argument("--encoder", choices=["auto", "native", "pyav"], default="auto",
                   help="native C++ frame stream (own thread) or pure-Python PyAV")
    g = p.add_argument_group("compute")
    g.add_argument("--precision", "--dtype", dest="precision", choices=["fp32", "tf32", "bf16", "fp32-ieee"],
                   default="fp32", help="GEMM precision: fp32 (on a GPU as 3xTF32 tensor-core dots, within the fp32 "
                                        "parity bound), tf32, bf16, or fp32-ieee (exact-product FMA dots, slower)")
    g.add_argument("--memory-budget", default="2G", help="bytes for tiles + one chunk of frames, e.g. 512M, 4G")
    g.add_argument("--backend", choices=["auto", "torch", "triton"], default="auto")
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress output")


# ---- requests ----------------------------------------------------------------------------------

def resolve_codec(path: str, codec: Optional[str]) -> Tuple[str, bool]:
    """(codec, png) for an output path: the extension promises a format, and nothing else is
    written — '.avi', '.webm', '.gif' or a video codec into a folder are refused, not turned into
    PNG folders."""
    name = CODEC_ALIASES.get(codec.lower(), codec) if codec is not None else None
    folder = path.endswith(("/", os.sep)) or os.path.isdir(path)
    suffix = "" if folder else os.path.splitext(path)[1].lower()
    if name == "png":
        if suffix in VIDEO_EXTS:
            raise ValueError(f"--codec png writes a folder of PNG frames, but {path!r} names a video file: drop "
                             "the extension, or choose a video codec")
        if suffix:
            raise ValueError(f"--codec png writes a folder of PNG frames; {path!r} looks like a file ({suffix}): "
                             "give a folder (no extension, or a trailing /)")
        return "png", True
    if suffix in VIDEO_EXTS:
        return name or DEFAULT_CODEC, False
    if not suffix:
        if name is None:
            return "png", True  # documented: a folder gets PNG frames
        raise ValueError(f"--codec {codec} writes a video file, but {path!r} is a folder name: give a file ending "
                         "in .mp4, .mkv or .mov (a folder gets PNG frames with --codec png)")
    raise ValueError(f"output {path!r}: no encoder here writes {suffix} files; use .mp4, .mkv or .mov "
                     "(or a folder for PNG frames; --preview --gif adds an animated GIF beside a video)")


def build_requests(args, cfg) -> List[Tuple[str, RenderRequest, Tuple[int, int]]]:
    """[(output path, request, grid shape (rows, cols))] — one per output file."""
    view = build_view(args, cfg)
    seeds = int_list(args.seeds, "--seeds")
    motion = int_list(args.motion_seeds, "--motion-seeds")
    labels = int_list(args.label, "--label/--class")
    budget = memory_budget(args.memory_budget)
    common = dict(psi=args.psi, frames=args.frames, t_start=args.t_start, t_end=args.t_end,
                  interpolate=args.interpolate, view=view, precision=args.precision, memory_budget=budget,
                  backend=args.backend, device=args.device)
    shape = parse_grid(args.grid)
    if labels is not None and len(labels) == 1:
        labels = labels * (len(motion) if args.grid == "motion" and motion else len(seeds))
    if args.grid == "motion":
        if not motion:
            raise ValueError("--grid motion needs --motion-seeds (e.g. 0-3)")
        seeds = [seeds[0]] * len(motion)
        if labels is not None:
            labels = labels[:1] * len(motion)
    output = args.output
    if output is None:  # --outdir, as the official scripts: one file per seed
        codec = CODEC_ALIASES.get((args.codec or "").lower(), args.codec)
        ext = {"png": "", "ffv1": ".mkv"}.get(codec, ".mp4")  # a container the codec fits
        output = os.path.join(args.outdir, "grid" + ext if args.grid else "seed{seed04}" + ext)
    if args.grid:
        n = len(seeds)
        if shape is not None:
            cols, rows = shape
            if n > rows * cols:
                raise ValueError(f"--grid {args.grid} has {rows * cols} cells for {n} videos (--seeds)")
        else:
            cols = math.ceil(math.sqrt(n))
            rows = math.ceil(n / cols)
        req = RenderRequest(seeds=seeds, motion_seeds=motion, labels=labels, **common)
        return [(output.replace("{seed}", "grid"), req, (rows, cols))]
    if motion is not None and len(motion) != len(seeds):
        raise ValueError(f"{len(motion)} motion seeds (--motion-seeds) for {len(seeds)} videos (--seeds)")
    if labels is not None and len(labels) != len(seeds):
        raise ValueError(f"{len(labels)} labels (--label/--class) for {len(seeds)} videos (--seeds)")
    out = []
    for k, seed in enumerate(seeds):
        path = output
        if "{seed04}" in path:
            path = path.replace("{seed04}", f"{seed:04d}")
        elif "{seed}" in path:
            path = path.replace("{seed}", str(seed))
        elif len(seeds) > 1:
            stem, ext = os.path.splitext(path)
            path = f"{stem}_seed{seed}{ext}"
        req = RenderRequest(seeds=[seed], motion_seeds=None if motion is None else [motion[k]],
                            labels=None if labels is None else [labels[k]], **common)
        out.append((path, req, (1, 1)))
    if len({p for p, _, _ in out}) != len(out):
        raise ValueError(f"the output {output!r} gives the same file for several seeds: put '{{seed}}' in it")
    return out


def model_fingerprint(G) -> str:
    """sha256 of every tensor of the generator (names, dtypes, shapes, bytes): the model's identity
    for resuming, whatever file, format or description it came from — a replaced default model
    is a different model even though its description is the same."""
    h = hashlib.sha256()
    for name, t in sorted(G.state_dict().items()):
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def model_id(checkpoint: Optional[str], desc: str, G=None) -> str:
    """The model's identity (see `model_fingerprint`); kept for callers that pass a checkpoint."""
    if G is not None:
        return model_fingerprint(G)
    if checkpoint is None:
        raise ValueError("model_id needs the generator when there is no checkpoint file")
    return sha256_file(checkpoint)[0]


def output_exists(path: str, png: bool) -> bool:
    """An output that -y would replace: a file, or a folder with PNG frames in it."""
    if png:
        return os.path.isdir(path) and any(n.endswith(".png") for n in os.listdir(path)) \
            or (os.path.exists(path) and not os.path.isdir(path))
    return os.path.lexists(path)


class Interrupted(KeyboardInterrupt):
    """A termination signal (SIGTERM) turned into the same clean stop as Ctrl-C."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _resume_hint(writers) -> str:
    kept = []
    for w in writers:
        try:
            n = len(w.finished_segments()) if os.path.isdir(w.parts_dir) else 0
        except ValueError:
            n = 0
        if n:
            kept.append(f"{n} of {len(w.segments)} segments of {w.out_path} are kept in {w.parts_dir}")
    if not kept:
        return "nothing was finished"
    return "; ".join(kept) + ": run the same command with --resume to continue"


# ---- the command ------------------------------------------------------------------------------

@dataclass
class Job:
    """One output file: where, what, and how it is encoded (checked before anything is created)."""
    path: str
    request: RenderRequest
    grid: Optional[Tuple[int, int]]   # (rows, cols) of a --grid video; None: one video
    renderer: "Renderer"
    width: int                        # of the encoded frames (the whole grid)
    height: int
    codec: str
    png: bool                         # a folder of PNG frames


def _torchrun(args) -> Tuple[int, int]:
    """(rank, world size) under torchrun (1 process: (0, 1)); rank r renders segments r, r + W, ...
    on its own device (cuda:LOCAL_RANK when CUDA is there) and rank 0 joins them after a barrier,
    so the process group only needs gloo (a barrier, no tensors)."""
    from digan.distributed import init_distributed

    env, device = init_distributed(args.device, backend="gloo", set_device=False)
    if env.world_size > 1:
        args.device = str(device)
        args.quiet = args.quiet or not env.is_main
    return env.rank, env.world_size


def plan_jobs(args, G, rank: int) -> List[Job]:
    """Every output checked (labels against the model, codec, encoder settings, existing files)
    before any is rendered or created."""
    from .preview import preview_paths
    from .renderer import Renderer
    from .sink import validate_sink_args

    jobs = []
    for path, req, grid in build_requests(args, G.cfg):
        cfg = G.cfg
        try:
            req.codes(cfg.z_dim, cfg.w_dim, cfg.c_dim)  # labels against the model (c_dim)
        except ValueError as exc:
            raise ValueError(f"--label/--class: {exc}") from None
        codec, png = resolve_codec(path, args.codec)
        renderer = Renderer(G, req)
        grid = grid if args.grid else None
        H, W = renderer.frame_size(grid)
        validate_sink_args(path, W, H, args.fps, codec=codec, crf=None if png else args.crf,
                           preset=None if png else args.preset, backend="png" if png else args.encoder,
                           pix_fmt=args.pix_fmt)
        existing = [path] if output_exists(path, png) else []
        if args.preview:  # the contact sheet (and GIF) beside the output are outputs too
            existing += [p for p in preview_paths(path, args.gif) if os.path.lexists(p)]
        if existing and (args.no_overwrite or not args.overwrite) and rank == 0:
            raise ValueError(f"{' and '.join(existing)} already exist{'s' if len(existing) == 1 else ''}: pass "
                             "-y/--overwrite to replace, or choose another output path"
                             + (" (-n: never overwrite)" if args.no_overwrite else ""))
        jobs.append(Job(path, req, grid, renderer, W, H, codec, png))
    return jobs


def open_writer(args, job: Job, mid: str, rank: int, world: int):
    """The job's SegmentedWriter (its parts folder checked and locked); with --resume and encoder
    auto it continues with the encoder that wrote the finished segments (they join only with
    segments of the same encoder build), when that one can still encode this codec."""
    from .segments import SegmentedWriter, recorded_backends
    from .sink import available_codecs

    encoder = args.encoder
    if args.resume and encoder == "auto" and not job.png:
        used = recorded_backends(job.path)
        if len(used) == 1 and next(iter(used)) in ("native", "pyav") and \
                job.codec in available_codecs(next(iter(used))):
            encoder = next(iter(used))
    grid = list(job.grid or (1, 1))   # (1, 1) for one video: the hashes of earlier renders hold
    settings = dict(codec=job.codec, crf=args.crf, preset=args.preset, fps=args.fps, width=job.width,
                    height=job.height, segment_frames=args.segment_frames, grid=grid)
    key = hashlib.sha256((job.renderer.content_hash(mid) + repr(sorted(settings.items()))).encode()).hexdigest()[:24]
    return SegmentedWriter(
        job.path, request_hash=key, total_frames=job.renderer.num_frames, width=job.width, height=job.height,
        fps=args.fps, codec=job.codec, crf=None if job.png else args.crf, preset=None if job.png else args.preset,
        segment_frames=args.segment_frames, resume=args.resume, overwrite=args.overwrite and not args.resume,
        backend=encoder, rank=rank, world_size=world, replace_output=args.overwrite, pix_fmt=args.pix_fmt)


def cmd_render(args) -> int:
    """Check everything (numbers, device, model, labels, outputs, encoder, parts folders), then
    render; nothing is created on disk before every check has passed."""
    from digan.default import load_or_default

    check_numbers(args)
    args.preview = args.preview or args.gif   # --gif alone asks for the preview (sheet + GIF)
    rank, world = _torchrun(args)
    G, desc = load_or_default(args.checkpoint)
    mid = model_fingerprint(G)
    jobs = plan_jobs(args, G, rank)
    writers = []
    try:
        for job in jobs:
            writers.append(open_writer(args, job, mid, rank, world))
        if not args.quiet:
            print(f"model: {desc} (sha256 {mid[:12]})", file=sys.stderr)
        for job, writer in zip(jobs, writers):
            render_job(args, job, writer, rank, world)
    except KeyboardInterrupt as exc:
        how = "terminated (SIGTERM)" if isinstance(exc, Interrupted) else "interrupted"
        print(f"digan render: {how}: {_resume_hint(writers)}", file=sys.stderr)
        return 128 + (exc.signum if isinstance(exc, Interrupted) else 2)
    finally:
        for w in writers:
            w.close()
    return 0


def render_job(args, job: Job, writer, rank: int, world: int) -> None:
    """This rank's pending segments of one job from the renderer's frame stream, then (rank 0)
    the final file, the summary line and the preview."""
    from .preview import PreviewCapture
    from .progress import Progress

    renderer = job.renderer
    T = renderer.num_frames
    if not args.quiet:
        print(f"{job.path}: {job.width}x{job.height}, {T} frames at {args.fps:g} fps, {renderer.describe()}",
              file=sys.stderr)
    mine = sum(s.frames for s in writer.my_segments())  # this rank's frames (all of them in one process)
    pending = writer.pending_segments()
    skipped = mine - sum(e - s for _, s, e in pending)
    if writer.reencode and not args.quiet:
        print(f"resume: segment(s) {writer.reencode[:10]} were encoded by another encoder build; encoding them "
              "again so that all segments join", file=sys.stderr)
    if skipped and not args.quiet:
        print(f"resume: {skipped} frames already rendered in complete segments", file=sys.stderr)

    def frames(s: int, e: int) -> Iterator[np.ndarray]:   # (H, W, 3) uint8 of one video or the grid
        return (f.numpy() for _, _, f in renderer.frames(s, e, grid=job.grid))

    progress = Progress(mine, Path(job.path).name, args.quiet, initial=skipped)
    preview = PreviewCapture(T, gif=args.gif) if args.preview else None
    try:
        for index, s, e in pending:
            stream = frames(s, e) if preview is None else preview.watch(frames(s, e), s)
            writer.write_segment(index, progress.count(stream))
    finally:
        progress.close()
    if world > 1:
        torch.distributed.barrier()
        if rank != 0:
            writer.close()
            return
    final = writer.finalize()
    if not args.quiet:
        print(progress.summary(final, job.width, job.height), file=sys.stderr)
    if preview is not None:
        written = preview.write(final, args.fps, lambda i: next(frames(i, i + 1)))
        if not args.quiet:
            print(f"preview: {', '.join(str(p) for p in written)}", file=sys.stderr)
