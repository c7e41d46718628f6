"""Long renders: frames/s and peak RSS of the first N frames of short and very long requests.

    python bench/bench_long.py                              # 1e4, 1e6, 1e9 frames, tiny-32 at 32x32
    python bench/bench_long.py --totals 10000,1000000 --first 4096 --segment 64 --repeat 3

Issue 8: cost per frame and memory must not depend on the total frame count. Each case renders
frames [0, N) of a request of `total` frames through the Renderer into a null consumer, segment by
segment as `digan render` does (one `Renderer.frames(start, end)` call per segment), in its own
subprocess so that its peak RSS (VmHWM) is its own. Reported per case: seconds from building the
request to the first frame (`startup_s`: what a 1e9-frame request must keep small), frames/s over
the N frames after a warm-up segment (wall clock, and per CPU-second of the process, which a
busy shared machine disturbs less), peak RSS, and the ratios against the first (shortest) case.
With --repeat R the cases run round-robin R times and each reports its best run (highest fps,
lowest startup; the highest peak RSS), so other load on the machine hits all cases alike.
Appends JSON rows (device, date, git revision) to bench/results/long.jsonl with --save.
The target (issue 8): fps(1e6) >= 0.7 x fps(1e4) and peak RSS within +10%.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, time
t_import = time.perf_counter()
import torch
from digan.config import generator_preset
from digan.networks import Generator
from engine.renderer import Renderer
from engine.request import RenderRequest

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024

total, first, seg, preset, precision = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
torch.manual_seed(0)
G = Generator(generator_preset(preset)).eval().requires_grad_(False)
rss_model = status("VmRSS:")
t0 = time.perf_counter()
# The same time spacing whatever the length (1/64 per frame), so every case renders the same frames.
req = RenderRequest(seeds=[0], frames=total, t_start=0.0, t_end=(total - 1) / 64, backend="torch", device="cpu",
                    precision=precision)
r = Renderer(G, req)
checksum = 0
it = r.frames(start=0, end=min(seg, total))
_, _, f = next(it)
startup = time.perf_counter() - t0
checksum += int(f[::5, ::5].sum())
for _, _, f in it:                       # the rest of the warm-up segment
    checksum += int(f[::5, ::5].sum())
n = 0
t1, c1 = time.perf_counter(), time.process_time()
for s in range(seg, seg + first, seg):   # then N frames, one frames() call per segment
    e = min(s + seg, total)
    if s >= e:
        break
    for _, _, f in r.frames(start=s, end=e):
        n += 1
        checksum += int(f[::5, ::5].sum())
dt_s, cpu_s = time.perf_counter() - t1, time.process_time() - c1
print(json.dumps(dict(total=total, frames=n, seconds=dt_s, fps=n / dt_s if dt_s > 0 else float("nan"),
                      cpu_s=cpu_s, fps_cpu=n / cpu_s if cpu_s > 0 else float("nan"),
                      startup_s=startup, peak_rss=status("VmHWM:"), rss_model=rss_model, checksum=checksum,
                      precision=getattr(r, "precision", req.precision), plan=r.plan.describe())))
"""


def run_case(total: int, first: int, seg: int, preset: str, precision: str, timeout: float) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    try:
        out = subprocess.run([sys.executable, "-c", CHILD, str(total), str(first), str(seg), preset, precision],
                             env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    except subprocess.TimeoutExpired:
        return dict(total=total, error=f"timed out after {timeout:.0f} s")
    if out.returncode != 0:
        return dict(total=total, error=out.stderr.strip().splitlines()[-1] if out.stderr.strip() else
                    f"exit {out.returncode}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--totals", default="10000,1000000,1000000000", help="request lengths in frames, comma-separated")
    p.add_argument("--first", type=int, default=4096, help="frames measured per case (after one warm-up segment)")
    p.add_argument("--segment", type=int, default=64, help="frames per Renderer.frames() call (digan render's default)")
    p.add_argument("--preset", default="tiny-32", help="architecture (random weights: the point is the engine)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--repeat", type=int, default=1, help="round-robin repetitions; best run per case")
    p.add_argument("--timeout", type=float, default=300, help="seconds per case before it counts as failed")
    p.add_argument("--save", action="store_true", help="append rows to bench/results/long.jsonl")
    args = p.parse_args(argv)
    totals = [int(float(t)) for t in args.totals.split(",") if t.strip()]
    if not totals or min(totals) < 1 or args.first < 1 or args.segment < 1:
        p.error("--totals, --first and --segment must be positive")
    runs = {t: [] for t in totals}
    for _ in range(max(1, args.repeat)):
        for total in totals:
            runs[total].append(run_case(total, args.first, args.segment, args.preset, args.precision, args.timeout))
    rows = []
    for total in totals:
        ok = [r for r in runs[total] if "error" not in r]
        if not ok:
            rows.append(runs[total][0])
            continue
        best = dict(max(ok, key=lambda r: r["fps"]), runs=len(ok))
        best.update(fps_cpu=max(r["fps_cpu"] for r in ok), startup_s=min(r["startup_s"] for r in ok),
                    peak_rss=max(r["peak_rss"] for r in ok))
        rows.append(best)
    base = next((r for r in rows if "error" not in r), None)
    print(f"{'frames':>12} {'startup s':>10} {'fps':>9} {'x fps':>6} {'fps/cpu-s':>10} {'x':>6} "
          f"{'peak RSS MiB':>13} {'x RSS':>6}")
    for r in rows:
        if "error" in r:
            print(f"{r['total']:>12} failed: {r['error']}")
            continue
        print(f"{r['total']:>12} {r['startup_s']:>10.3f} {r['fps']:>9.1f} {r['fps'] / base['fps']:>6.2f} "
              f"{r['fps_cpu']:>10.1f} {r['fps_cpu'] / base['fps_cpu']:>6.2f} "
              f"{r['peak_rss'] / 2**20:>13.1f} {r['peak_rss'] / base['peak_rss']:>6.3f}")
    if args.save:
        sys.path.insert(0, str(REPO))
        import torch

        from bench.envinfo import device_name, git_rev
        rev, dirty = git_rev()
        meta = dict(bench="long", device=device_name(torch.device("cpu")), date=dt.datetime.now(dt.timezone.utc)
                    .isoformat(timespec="seconds"), rev=rev, dirty=dirty, preset=args.preset, first=args.first,
                    segment=args.segment)
        path = REPO / "bench" / "results" / "long.jsonl"
        with open(path, "a") as fh:
            for r in rows:
                fh.write(json.dumps({**meta, **r}) + "\n")
        print(f"appended {len(rows)} rows to {path.relative_to(REPO)}")
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
