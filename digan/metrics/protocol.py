"""DIGAN's FVD/KVD protocol (src/scripts/compute_fvd_kvd.py), batched.

Per trial: `num_videos` generated clips (z, z_motion ~ N(0, I), times linspace(0, 1, T),
truncation 1; conditional models get the one-hot label of a random real clip, as the official
training metric) and `num_videos` real clips drawn without replacement (the official loader
shuffles and takes the first num_videos; no flip), both through I3D; FVD and KVD between the two
feature sets.  Results over `trials` trials are reported as mean ± std (population std, np.std,
as the official script).

Generated frames are quantised as the official evaluation does, not as the renderer does:
clamp to [-1, 1], then ((x + 1) / 2 * 255) cast to uint8, i.e. truncation (floor for x >= -1),
in float32.  Real clips are the dataset's uint8 frames at the generator's resolution.

Reproducibility: trial k draws everything from seeds derived from (seed, k)
(np.random.SeedSequence), independent of batch sizes and of the device used for I3D, so a
result line's protocol, seeds and detector hash identify the number.  Real features are cached
on disk per trial, keyed by (data files, protocol, detector hash).
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Union

import numpy as np
import torch

from .distances import frechet_distance, kernel_distance
from .i3d import I3D_RESOLUTION, InceptionI3d, file_sha256, i3d_features, load_i3d

PathLike = Union[str, os.PathLike]

METRICS = ("fvd", "kvd")
_CACHE_VERSION = 1


@dataclass
class Protocol:
    num_videos: int = 2048     # generated and real clips per trial (official: 2048; training: 512)
    frames: int = 16           # frames per clip (FVD16)
    trials: int = 10           # independent trials, reported as mean ± std (official: 10; training: 5)
    seed: int = 0              # everything a trial draws comes from (seed, trial)

    def __post_init__(self):
        if self.num_videos < 2:
            raise ValueError(f"num_videos must be >= 2 (covariances need two clips), got {self.num_videos}")
        if self.frames < 9:
            raise ValueError(f"frames must be >= 9 (I3D strides time by 8 and pools 2 steps), got {self.frames}")
        if self.trials < 1:
            raise ValueError(f"trials must be >= 1, got {self.trials}")
        if self.seed < 0:
            raise ValueError(f"seed must be non-negative, got {self.seed}")

    def trial_seeds(self, trial: int) -> Dict[str, int]:
        """{'fake': ..., 'real': ...}: 63-bit seeds of trial `trial`'s generated and real draws."""
        fake, real = np.random.SeedSequence([self.seed, trial]).generate_state(2, np.uint64)
        return {"fake": int(fake) >> 1, "real": int(real) >> 1}


# ---- generated clips ----------------------------------------------------------------------------

def quantize_official(frames: torch.Tensor, num_frames: int) -> torch.Tensor:
    """(B*T, 3, H, W) float in ~[-1, 1] -> uint8 (B, T, H, W, 3) as DIGAN's evaluation:
    clamp(-1, 1), (x + 1) / 2 * 255 in float32, truncated by the uint8 cast."""
    bt, c, h, w = frames.shape
    x = frames.float().clamp(-1, 1)
    x = ((x + 1.0) / 2.0 * 255).to(torch.uint8)   # x >= 0 here, so the cast truncates = floors
    return x.view(bt // num_frames, num_frames, c, h, w).permute(0, 1, 3, 4, 2).contiguous()


def generation_codes(G, n: int, seed: int, labels: Optional[Callable[[torch.Tensor], torch.Tensor]] = None):
    """(z (n, z_dim), z_motion (n, w_dim), c (n, c_dim) or None), drawn on the CPU from `seed`
    (so the codes do not depend on the device).  labels(indices) -> one-hot (n, c_dim) for
    conditional G; indices are uniform random integers in [0, 2**62)."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, G.z_dim, generator=gen)
    z_motion = torch.randn(n, G.w_dim, generator=gen)
    c = None
    if G.c_dim > 0:
        if labels is None:
            raise ValueError(f"the generator is conditional (c_dim {G.c_dim}): labels are needed (use_labels data)")
        c = labels(torch.randint(0, 2 ** 62, (n,), generator=gen))
    return z, z_motion, c


@torch.no_grad()
def generate_clips(G, n: int, frames: int, seed: int, batch_size: int = 16,
                   labels: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> Iterator[torch.Tensor]:
    """Yields uint8 clips (b, T, H, W, 3) on G's device, n in all, batch_size videos at a time.

    Videos are independent in G (every layer is per-video), so the batch size changes nothing
    but speed."""
    device = next(G.parameters()).device
    z, z_motion, c = generation_codes(G, n, seed, labels)
    times = torch.linspace(0, 1, frames, device=device)
    for i in range(0, n, batch_size):
        zb = z[i:i + batch_size].to(device)
        b = zb.shape[0]
        cb = None if c is None else c[i:i + batch_size].to(device)
        ws = G.mapping(zb, cb, truncation_psi=1.0)
        Ts = times.repeat(b).view(-1, 1, 1, 1)                       # official (B*T, 1, 1, 1) layout
        img = G.synthesis(ws, Ts, z_motion[i:i + batch_size].to(device))  # (b*T, 3, H, W)
        yield quantize_official(img, frames)


# ---- real clips ---------------------------------------------------------------------------------

def real_indices(dataset, n: int, seed: int) -> torch.Tensor:
    """n clip indices without replacement (the official shuffled loader's first n)."""
    if len(dataset) < n:
        raise ValueError(f"the data has {len(dataset)} clips of {dataset.clip_frames} frames, fewer than the "
                         f"{n} real videos the protocol needs (lower --num-videos)")
    return torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:n]


def real_clips(dataset, indices: Sequence[int], batch_size: int = 16) -> Iterator[torch.Tensor]:
    """Yields uint8 clips (b, T, R, R, 3) from dataset.load_clip (not flipped)."""
    indices = [int(i) for i in indices]
    for i in range(0, len(indices), batch_size):
        yield torch.stack([dataset.load_clip(j) for j in indices[i:i + batch_size]])


def dataset_fingerprint(dataset) -> str:
    """Identity of the real data: the files (resolved path, size, mtime) and how clips are cut."""
    files = []
    for src in dataset.videos:
        src = Path(src)
        parts = sorted(src.iterdir()) if src.is_dir() else [src]
        files.append([str(src.resolve()), [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in parts]])
    blob = json.dumps([type(dataset).__name__, files, dataset.resolution, dataset.clip_frames,
                       getattr(dataset, "frame_stride", 1), getattr(dataset, "resize_mode", None), len(dataset)])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# ---- evaluation ---------------------------------------------------------------------------------

@dataclass
class TrialResult:
    trial: int
    seeds: Dict[str, int]
    values: Dict[str, float] = field(default_factory=dict)


class Evaluator:
    """Holds the detector and a cache of real features; evaluates generators under a Protocol.

    detector: path of i3d_pretrained_400.pt (or an InceptionI3d with detector_hash given).
    cache_dir: where real features are kept (None: in memory only, for this Evaluator's life)."""

    def __init__(self, detector: Union[PathLike, InceptionI3d], device: Union[str, torch.device, None] = None,
                 cache_dir: Optional[PathLike] = None, batch_size: int = 16, gen_batch_size: int = 16,
                 progress: bool = False, detector_hash: Optional[str] = None):
        if isinstance(detector, InceptionI3d):
            if detector_hash is None:
                raise ValueError("an InceptionI3d detector needs detector_hash (to key the real-feature cache)")
            self.i3d, self.detector_hash, self.detector_path = detector, detector_hash, None
        else:
            self.detector_path = Path(detector)
            self.i3d = load_i3d(self.detector_path, device)
            self.detector_hash = detector_hash or file_sha256(self.detector_path)
        if batch_size < 1 or gen_batch_size < 1:
            raise ValueError(f"batch sizes must be >= 1, got {batch_size} and {gen_batch_size}")
        self.device = next(self.i3d.parameters()).device
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self.batch_size, self.gen_batch_size, self.progress = batch_size, gen_batch_size, progress
        self._memory: Dict[str, torch.Tensor] = {}
        self._fingerprint = None  # (dataset, its fingerprint)
        self.i3d_resolution = I3D_RESOLUTION  # 224 is DIGAN's; benchmarks may lower it (not an FVD then)

    # -- features -------------------------------------------------------------------------------
    def _bar(self, total: int, desc: str):
        from tqdm import tqdm
        return tqdm(total=total, desc=desc, unit="clip", disable=not self.progress, file=sys.stderr,
                    leave=False, dynamic_ncols=True)

    def features(self, clips: Iterator[torch.Tensor], total: int, desc: str) -> torch.Tensor:
        """I3D features (total, 400) of an iterator of uint8 clip batches."""
        out = []
        with self._bar(total, desc) as bar:
            for batch in clips:
                out.append(i3d_features(self.i3d, batch, batch_size=self.batch_size, resolution=self.i3d_resolution))
                bar.update(len(batch))
        return torch.cat(out)

    def real_key(self, dataset, protocol: Protocol, trial: int) -> str:
        if self._fingerprint is None or self._fingerprint[0] is not dataset:  # stat the files once per dataset
            self._fingerprint = (dataset, dataset_fingerprint(dataset))
        blob = json.dumps([_CACHE_VERSION, self._fingerprint[1], protocol.num_videos, protocol.frames,
                           protocol.trial_seeds(trial)["real"], self.detector_hash, self.i3d_resolution])
        return hashlib.sha256(blob.encode()).hexdigest()[:24]

    def real_features(self, dataset, protocol: Protocol, trial: int) -> torch.Tensor:
        if dataset.clip_frames != protocol.frames:
            raise ValueError(f"the data gives {dataset.clip_frames}-frame clips, the protocol needs {protocol.frames}")
        key = self.real_key(dataset, protocol, trial)
        if key in self._memory:
            return self._memory[key]
        path = None if self.cache_dir is None else self.cache_dir / f"real-{key}.npy"
        if path is not None and path.is_file():
            feats = torch.from_numpy(np.load(path))
            if feats.shape == (protocol.num_videos, self.i3d.num_classes):
                self._memory[key] = feats
                return feats
        idx = real_indices(dataset, protocol.num_videos, protocol.trial_seeds(trial)["real"])
        feats = self.features(real_clips(dataset, idx, self.batch_size), len(idx), f"real, trial {trial}")
        self._memory[key] = feats
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            with open(tmp, "wb") as f:
                np.save(f, feats.numpy())
            os.replace(tmp, path)  # atomic: a concurrent reader never sees half a file
        return feats

    def fake_features(self, G, protocol: Protocol, trial: int, dataset=None) -> torch.Tensor:
        labels = None
        if G.c_dim > 0:
            if dataset is None or dataset.c_dim != G.c_dim:
                raise ValueError(f"the generator is conditional (c_dim {G.c_dim}); the data must have labels of "
                                 f"the same size (got c_dim {None if dataset is None else dataset.c_dim})")
            def labels(r):
                return torch.stack([dataset.label(int(i) % len(dataset)) for i in r])
        clips = generate_clips(G, protocol.num_videos, protocol.frames, protocol.trial_seeds(trial)["fake"],
                               self.gen_batch_size, labels)
        return self.features(clips, protocol.num_videos, f"generated, trial {trial}")

    # -- metrics --------------------------------------------------------------------------------
    def evaluate(self, G, dataset, protocol: Protocol, metrics: Sequence[str] = METRICS,
                 on_trial: Optional[Callable[[TrialResult], None]] = None) -> Dict[str, dict]:
        """{metric: result dict} over protocol.trials trials; see `result_record` for the fields."""
        metrics = parse_metrics(metrics)
        if dataset.resolution != G.img_resolution:
            raise ValueError(f"real clips are {dataset.resolution}x{dataset.resolution}, the generator makes "
                             f"{G.img_resolution}x{G.img_resolution}")
        trials: List[TrialResult] = []
        for k in range(protocol.trials):
            real = self.real_features(dataset, protocol, k)
            fake = self.fake_features(G, protocol, k, dataset)
            res = TrialResult(k, protocol.trial_seeds(k))
            if "fvd" in metrics:
                res.values["fvd"] = frechet_distance(fake, real)
            if "kvd" in metrics:
                res.values["kvd"] = kernel_distance(fake, real)
            trials.append(res)
            if on_trial is not None:
                on_trial(res)
        return {m: self.result_record(m, protocol, trials) for m in metrics}

    def result_record(self, metric: str, protocol: Protocol, trials: List[TrialResult]) -> dict:
        values = np.array([t.values[metric] for t in trials], dtype=np.float64)
        return {
            "metric": metric,
            "mean": float(values.mean()),
            "std": float(values.std()),          # population std over trials, as the official np.std
            "values": values.tolist(),
            "protocol": asdict(protocol),
            "trial_seeds": [t.seeds for t in trials],
            "detector_sha256": self.detector_hash,
            "quantization": "clamp(-1,1); uint8((x+1)/2*255) truncation",
        }


def parse_metrics(metrics: Union[str, Sequence[str]]) -> List[str]:
    names = [m.strip().lower() for m in (metrics.split(",") if isinstance(metrics, str) else metrics)]
    names = [m for m in names if m]
    bad = [m for m in names if m not in METRICS]
    if bad or not names:
        raise ValueError(f"unknown metric(s) {bad or metrics!r}; choose from {', '.join(METRICS)}")
    return list(dict.fromkeys(names))


def snapshot_metric(G, dataset, detector: Union[PathLike, Evaluator], metrics: Sequence[str] = ("fvd",),
                    num_videos: int = 512, trials: int = 5, seed: int = 0, cache_dir: Optional[PathLike] = None,
                    gen_batch_size: int = 16) -> Dict[str, float]:
    """For a training snapshot: {'fvd': mean, 'fvd_std': std, ...} under a small protocol
    (512 x 5 as the official training loop).  Pass an Evaluator (built once) as `detector` to keep
    the detector and the real features between snapshots; G is used as given (eval, no grad)."""
    ev = detector if isinstance(detector, Evaluator) else Evaluator(detector, cache_dir=cache_dir,
                                                                    gen_batch_size=gen_batch_size)
    frames = dataset.clip_frames
    was_training = G.training
    G.eval()
    try:
        out = ev.evaluate(G, dataset, Protocol(num_videos, frames, trials, seed), metrics)
    finally:
        G.train(was_training)
    flat: Dict[str, float] = {}
    for m, rec in out.items():
        flat[m], flat[f"{m}_std"] = rec["mean"], rec["std"]
    return flat
