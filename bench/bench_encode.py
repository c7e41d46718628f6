"""Encode throughput (frames/s) of the native frame stream vs the PyAV sink, and how well
rendering overlaps encoding.

    python bench/bench_encode.py                      # 1024x1024, x264 veryfast + ultrafast
    python bench/bench_encode.py --frames 8 --size 128 --no-append   # smoke run
    python bench/bench_encode.py --overlap            # also: render+encode together vs alone

Rows (one per backend x preset, plus overlap rows) are appended to bench/results/encode.jsonl
with the device (CPU model, cores), date, git revision and both libavcodec versions.
Run it on a quiet machine: the encoders use every core.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from engine.sink import libavcodec_versions, native_available, open_sink  # noqa: E402

RESULTS = REPO / "bench" / "results" / "encode.jsonl"


# ---------------------------------------------------------------------------------------------
# Inputs


def make_frames(count: int, size: int, seed: int = 0) -> np.ndarray:
    """`count` distinct (size, size, 3) uint8 frames: moving gradients and a soft disc plus grey
    noise — compressible like rendered video, not like static or random data."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1)
    rng = np.random.default_rng(seed)
    out = np.empty((count, size, size, 3), np.uint8)
    for i in range(count):
        t = i / 8.0
        r = 40 + 150 * x + 30 * np.sin(2 * np.pi * (y + t / 3))
        g = 50 + 120 * y + 40 * np.cos(2 * np.pi * (x - t / 4))
        b = 90 + 80 * (1 - x) * y
        disc = np.clip(1 - (np.hypot(x - 0.5 - 0.3 * np.cos(t), y - 0.5 - 0.3 * np.sin(t)) - 0.15) * 40, 0, 1)
        img = np.stack([r, g, b], -1) * (1 - disc[..., None]) + np.array([230, 200, 40]) * disc[..., None]
        img += rng.normal(0, 1.5, (size, size, 1))
        out[i] = np.clip(img, 0, 255).astype(np.uint8)
    return out


# ---------------------------------------------------------------------------------------------
# Measurements


def encode_fps(backend: str, frames: np.ndarray, n: int, out_path: str, codec: str = "libx264",
               preset: str = "veryfast", crf: Optional[int] = None, queue_size: int = 8) -> float:
    """Frames/s for open + `n` pushes (cycling `frames`) + close: the caller's view of encoding."""
    size_h, size_w = frames.shape[1:3]
    t0 = time.perf_counter()
    with open_sink(out_path, size_w, size_h, 24, codec=codec, preset=preset, crf=crf, backend=backend,
                   queue_size=queue_size) as sink:
        for i in range(n):
            sink.push(frames[i % len(frames)])
    return n / (time.perf_counter() - t0)


def overlap(produce: Callable[[int], np.ndarray], n: int, open_fn: Callable[[], object],
            frames: np.ndarray) -> Dict[str, float]:
    """Render+encode together vs each alone.

    produce(i) -> frame i (the renderer); open_fn() -> a fresh sink.  Returns seconds for render
    alone, encode alone (pre-made `frames`), both in one loop, and `overlap` = both / max(alone):
    1.0 means encoding is completely hidden behind rendering (or the reverse), 2.0-ish (both /
    sum near 1) means none is."""
    t0 = time.perf_counter()
    for i in range(n):
        produce(i)
    t_render = time.perf_counter() - t0

    t0 = time.perf_counter()
    with open_fn() as sink:
        for i in range(n):
            sink.push(frames[i % len(frames)])
    t_encode = time.perf_counter() - t0

    t0 = time.perf_counter()
    with open_fn() as sink:
        for i in range(n):
            sink.push(produce(i))
    t_both = time.perf_counter() - t0
    return {"render_s": t_render, "encode_s": t_encode, "both_s": t_both,
            "overlap": t_both / max(t_render, t_encode), "vs_sum": t_both / (t_render + t_encode)}


# ---------------------------------------------------------------------------------------------
# Where it ran


def device_info() -> Dict[str, object]:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {"cpu": model, "cores": os.cpu_count(), "usable_cores": usable}


def git_revision() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def append_rows(rows: List[Dict[str, object]], path: Path = RESULTS) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        for row in rows:
            f.write(json.dumps(row, sort_keys=True) + "\n")


# ---------------------------------------------------------------------------------------------


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=1024, help="frame width and height")
    p.add_argument("--frames", type=int, default=120, help="frames per measurement")
    p.add_argument("--codec", default="libx264")
    p.add_argument("--presets", nargs="+", default=["veryfast", "ultrafast"])
    p.add_argument("--backends", nargs="+", default=["native", "pyav"])
    p.add_argument("--repeats", type=int, default=3, help="median of this many runs")
    p.add_argument("--queue-size", type=int, default=8)
    p.add_argument("--overlap", action="store_true", help="also measure render+encode overlap")
    p.add_argument("--producer", choices=["numpy", "device"], default="numpy",
                   help="overlap renderer: 'numpy' builds frames on the CPU (competes with the encoder "
                        "for cores); 'device' stands for a GPU render: it waits (releasing the CPU, like a "
                        "CUDA sync) as long as encoding one frame takes, then hands over a ready frame")
    p.add_argument("--no-append", action="store_true", help=f"do not append to {RESULTS.relative_to(REPO)}")
    args = p.parse_args(argv)

    backends = [b for b in args.backends if b != "native" or native_available()]
    if len(backends) < len(args.backends):
        print("note: native backend not built; measuring PyAV only", file=sys.stderr)
    frames = make_frames(min(16, args.frames), args.size)
    base = {"bench": "encode", "size": args.size, "frames": args.frames, "codec": args.codec,
            "date": datetime.datetime.now().isoformat(timespec="seconds"), "git": git_revision(),
            "libavcodec": libavcodec_versions(), **device_info()}
    rows: List[Dict[str, object]] = []
    print(f"{args.codec} {args.size}x{args.size}, {args.frames} frames, median of {args.repeats}  "
          f"({base['cpu']}, {base['usable_cores']} cores)")
    print(f"{'backend':<8} {'preset':<10} {'frames/s':>9}")
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "bench.mp4")
        for preset in args.presets:
            for backend in backends:
                fps = statistics.median(encode_fps(backend, frames, args.frames, out, args.codec, preset,
                                                   queue_size=args.queue_size) for _ in range(args.repeats))
                print(f"{backend:<8} {preset:<10} {fps:9.1f}")
                rows.append(dict(base, kind="throughput", backend=backend, preset=preset, fps=round(fps, 2)))
        if args.overlap:
            if args.producer == "numpy":
                # stand-in renderer: builds a fresh frame (numpy, a few tens of ms at 1024^2)
                def produce(i: int) -> np.ndarray:
                    return make_frames(1, args.size, seed=i)[0]
            else:
                # stand-in GPU renderer: the host thread waits as long as one frame's encode takes
                # (the worst case for hiding: render time = encode time), then copies a frame out.
                wait = 1.0 / max(r["fps"] for r in rows if r["preset"] == args.presets[0])

                def produce(i: int) -> np.ndarray:
                    time.sleep(wait)
                    return frames[i % len(frames)]

            print(f"\n{'backend':<8} {'preset':<10} {'render s':>9} {'encode s':>9} {'both s':>8} {'both/max':>9}")
            for backend in backends:
                preset = args.presets[0]
                r = overlap(produce, args.frames, lambda: open_sink(out, args.size, args.size, 24, codec=args.codec,
                                                                    preset=preset, backend=backend,
                                                                    queue_size=args.queue_size), frames)
                print(f"{backend:<8} {preset:<10} {r['render_s']:9.2f} {r['encode_s']:9.2f} {r['both_s']:8.2f} "
                      f"{r['overlap']:9.2f}")
                rows.append(dict(base, kind="overlap", producer=args.producer, backend=backend, preset=preset,
                                 **{k: round(v, 3) for k, v in r.items()}))
    if not args.no_append:
        append_rows(rows)
        print(f"appended {len(rows)} rows to {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
