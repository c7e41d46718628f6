"""`digan train --metrics fvd --detector i3d_pretrained_400.pt`: FVD/KVD at every snapshot.

The trainer (digan.train.loop.Trainer) runs `snapshot_callbacks` after each regular snapshot and
writes what they return to <out>/metrics.jsonl and the log; `train_snapshot_callbacks` builds
ours from the command line.  The protocol is the official training loop's by default (512 videos
x 5 trials, 16 frames) on G_ema against the training data (no flips); the detector and the real
features are loaded once and kept between snapshots (the real draws depend only on the seed).
Computed on rank 0; other ranks return nothing.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable, List, Optional

from .protocol import Evaluator, Protocol, parse_metrics


def add_train_metric_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("metrics at snapshots")
    g.add_argument("--metrics", default=None, help="comma-separated metrics at every snapshot: fvd, kvd")
    g.add_argument("--detector", default=None, help="I3D weights (i3d_pretrained_400.pt) for --metrics")
    g.add_argument("--metrics-videos", type=int, default=512, help="generated and real clips per trial")
    g.add_argument("--metrics-trials", type=int, default=5, help="trials per snapshot (mean and std logged)")
    g.add_argument("--metrics-seed", type=int, default=0, help="seed of the metric's draws")


def make_snapshot_callback(detector, metrics, protocol: Protocol, cache_dir: Optional[Path] = None,
                           gen_batch_size: int = 16) -> Callable:
    """A digan.train.loop.SnapshotCallback computing `metrics` of trainer.G_ema under `protocol`.
    detector: a path (loaded at the first snapshot) or an Evaluator."""
    metrics = parse_metrics(metrics)
    state = {"ev": detector} if isinstance(detector, Evaluator) else {}

    def callback(trainer, path) -> Optional[dict]:
        if not trainer.env.is_main:
            return None
        if "ev" not in state:  # loaded at the first snapshot, on the trainer's device
            state["ev"] = Evaluator(detector, device=trainer.device, cache_dir=cache_dir,
                                    gen_batch_size=gen_batch_size)
        G = trainer.G_ema
        was_training = G.training
        G.eval()
        try:
            res = state["ev"].evaluate(G, trainer.dataset, protocol, metrics)
        finally:
            G.train(was_training)
        out = {}
        for m, rec in res.items():
            out[f"{m}{protocol.frames}"] = rec["mean"]
            out[f"{m}{protocol.frames}_std"] = rec["std"]
        return out

    return callback


def train_snapshot_callbacks(args, trainer) -> List[Callable]:
    """[] without --metrics; else the metric callback (errors in the options are raised now, before
    training starts, not at the first snapshot)."""
    if not getattr(args, "metrics", None):
        return []
    metrics = parse_metrics(args.metrics)
    if not args.detector:
        raise ValueError("--metrics needs --detector (the I3D weights, i3d_pretrained_400.pt)")
    detector = Path(args.detector).expanduser()
    if not detector.is_file():
        raise FileNotFoundError(f"--detector {detector} not found")
    frames = trainer.dataset.clip_frames
    protocol = Protocol(num_videos=args.metrics_videos, frames=frames, trials=args.metrics_trials,
                        seed=args.metrics_seed)
    if len(trainer.dataset) < protocol.num_videos:
        raise ValueError(f"--metrics-videos {protocol.num_videos}: the data has only {len(trainer.dataset)} clips")
    cache = Path(args.cache).expanduser() / "metrics" if getattr(args, "cache", None) else None
    if trainer.env.is_main:  # load (and check) the detector now: a bad file fails before training
        detector = Evaluator(detector, device=trainer.device, cache_dir=cache)
    return [make_snapshot_callback(detector, metrics, protocol, cache_dir=cache)]
