"""Render benchmark: eager reference vs torch.compile vs the engine, side by side in one process.

    python bench/bench_render.py                 # GPU if present, else the CPU subset
    python bench/bench_render.py --sizes 128x16x1 --modes eager,engine-fp32,engine-bf16 --write
    python bench/bench_render.py --sweep --csv out.csv --json out.json   # the plots' sweep, saved

Per size (side x frames x videos) and mode it reports frames/s, the speedup over the eager fp32
reference measured in the same run, MFU (FLOPs the mode really executes / the bf16 matmul rate
measured on this device in this run), peak GPU memory (or host RSS growth on CPU), and the
PSNR of bf16 uint8 frames against fp32 ones. With --write it appends JSON rows (device, date, git
revision) to bench/results/render.jsonl and rewrites the table between markers in bench/RESULTS.md;
without, it only prints; --csv FILE / --json FILE save the rows anywhere (bench/export.py).
MFU divides by the best matmul rate measured over the dtypes (<= 1).
Timing: median of `--reps` runs after one warm-up, with device synchronisation.

--sweep: the sizes of the README's plot (bench/plot.py), frames/s against the output side at a
fixed number of frames and against the number of frames at a fixed side (on CPU: 32..256 at 2
frames, 1..16 frames at 64^2, eager and engine fp32: ~1 min on 2 idle cores with --reps 1). engine-bf16 runs
only where bf16 is native (GPUs; CPUs with avx512_bf16 / amx_bf16, engine/precision.py): elsewhere
the Renderer would render fp32 under a bf16 label, so the row is skipped with the reason.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.envinfo import device_name, git_rev  # noqa: E402
from bench.export import write_rows  # noqa: E402
from bench.results_md import replace_block  # noqa: E402
from digan.default import untrained_generator  # noqa: E402
from digan.view import View  # noqa: E402
from engine.flops import frame_work  # noqa: E402
from engine.precision import cpu_bf16_support  # noqa: E402
from engine.renderer import Renderer  # noqa: E402
from engine.request import RenderRequest  # noqa: E402

GPU_SIZES = ["128x16x1", "128x16x8", "512x64x1", "1024x256x1"]
CPU_SIZES = ["128x16x1"]
# Resolution at a fixed frame count, then frame counts at a fixed side (sizes shared by both are
# measured once). Sides below 128 are centred crops of the 128^2 frame, 256 is 2x super-resolution.
GPU_SWEEP = ["128x16x1", "256x16x1", "512x16x1", "1024x16x1", "128x1x1", "128x64x1", "128x256x1"]
CPU_SWEEP = ["32x2x1", "64x2x1", "128x2x1", "256x2x1", "64x1x1", "64x4x1", "64x16x1"]
GPU_MODES = ["eager", "compile-bf16", "engine-fp32", "engine-tf32", "engine-bf16"]
CPU_MODES = ["eager", "engine-fp32", "engine-bf16"]


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def timed(fn, device, reps: int, clock=time.perf_counter) -> float:
    """Median seconds of `reps` calls after one warm-up, by `clock` (CLOCKS: wall, or this
    process's CPU time: with --threads 1 on a shared CPU that is the time the work took, not the
    time other jobs held the cores)."""
    fn()
    sync(device)
    times = []
    for _ in range(reps):
        t = clock()
        fn()
        sync(device)
        times.append(clock() - t)
    times.sort()
    return times[len(times) // 2]


def matmul_rate(device, dtype=torch.bfloat16, tf32: bool = False, clock=time.perf_counter) -> float:
    """Measured dense matmul FLOP/s on this device for one dtype."""
    n = 8192 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        t = timed(lambda: a @ b, device, 5 if device.type == "cuda" else 3, clock)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old
    return 2 * n ** 3 / t


def matmul_peak(device, clock=time.perf_counter) -> tuple:
    """(peak FLOP/s, {dtype: FLOP/s}): the best dense matmul rate measured on this device in this
    run, over bf16, fp32 (and tf32 on CUDA). MFU divides by the best one, so it stays <= 1 on a
    CPU without native bf16 (where bf16 ran 70x slower than fp32 and MFU against it read 105). There
    bf16 is not measured at all: its 1024^3 matmul alone took seconds and could never be the best."""
    rates = {"fp32": matmul_rate(device, torch.float32, clock=clock)}
    if device.type != "cpu" or cpu_bf16_support()[0]:
        rates["bf16"] = matmul_rate(device, torch.bfloat16, clock=clock)
    if device.type == "cuda":
        rates["tf32"] = matmul_rate(device, torch.float32, tf32=True, clock=clock)
    return max(rates.values()), rates


MEMORY_CHILD = """
import json, sys, torch
sys.path.insert(0, {repo!r})
from digan.default import untrained_generator
from engine.renderer import Renderer
from engine.request import RenderRequest
G = untrained_generator()
req = RenderRequest(seeds=[0], frames={frames}, precision={precision!r}, backend="torch", device="cpu")
r = Renderer(G, req)
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
base = status("VmRSS:")
open("/proc/self/clear_refs", "w").write("5")  # peak mark := now
n = sum(1 for _ in r.frames())
print(json.dumps(dict(frames=n, base=base, peak=status("VmHWM:"))))
"""


def memory_curve(frame_counts=(16, 64, 256), precision="fp32") -> list:
    """Peak RSS growth of CPU renders of increasing length, each in a fresh process."""
    out = []
    for n in frame_counts:
        code = MEMORY_CHILD.format(repo=str(REPO), frames=n, precision=precision)
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        r = json.loads(res.stdout.strip().splitlines()[-1])
        out.append(dict(frames=n, precision=precision, growth_mib=(r["peak"] - r["base"]) / 2**20,
                        peak_mib=r["peak"] / 2**20))
        print(f"memory curve {precision}: {n:4d} frames at 128x128: peak RSS {out[-1]['peak_mib']:.0f} MiB, "
              f"growth during render {out[-1]['growth_mib']:.0f} MiB", flush=True)
    return out


def psnr_u8(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = (a.float() - b.float()).square().mean().item()
    return float("inf") if mse == 0 else 10 * math.log10(255 ** 2 / mse)


def run(args) -> list:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    gpu = device.type == "cuda"
    sweep = GPU_SWEEP if gpu else CPU_SWEEP
    sizes = args.sizes.split(",") if args.sizes else (sweep if getattr(args, "sweep", False) else
                                                   GPU_SIZES if gpu else CPU_SIZES)
    modes = args.modes.split(",") if args.modes else (GPU_MODES if gpu else CPU_MODES)
    if not args.modes and not gpu and "engine-bf16" in modes and not cpu_bf16_support()[0]:
        modes = [m for m in modes if m != "engine-bf16"]
        print(f"engine-bf16 skipped: {cpu_bf16_support()[1]} (a bf16 request renders fp32 there)", flush=True)
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    G = untrained_generator().to(device)
    cfg = G.cfg
    clock_name = getattr(args, "clock", "wall")
    if clock_name == "cpu" and gpu:
        raise SystemExit("--clock cpu measures host CPU time: it is for the CPU path only")
    clock = CLOCKS[clock_name]
    peak, rates = matmul_peak(device, clock)
    name = device_name(device)
    rev, dirty = git_rev()
    rev += "-dirty" if dirty else ""
    print(f"device: {name}; measured matmul: "
          + ", ".join(f"{k} {v / 1e12:.3g}" for k, v in rates.items())
          + f" TFLOP/s (MFU against the best, {peak / 1e12:.3g})", flush=True)
    rows = []
    for size in sizes:
        side, frames, videos = parse_size(size)
        view = size_view(side, cfg.img_resolution)
        total_frames = frames * videos
        ref_fps = None
        u8 = {}
        for mode in modes:
            row = dict(size=size, mode=mode, device=name, device_kind="gpu" if gpu else "cpu",
                       date=dt.datetime.now().isoformat(timespec="seconds"), rev=rev, torch=torch.__version__,
                       load_avg=os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
                       threads=torch.get_num_threads() if not gpu else None, clock=clock_name)
            try:
                fn, flops_per_frame, grab = make_runner(G, mode, view, frames, videos, device, args.budget)
            except RuntimeError as exc:
                row["error"] = str(exc).splitlines()[0]
                rows.append(row)
                print(f"{size:>11} {mode:<13} skipped: {row['error']}", flush=True)
                continue
            if gpu:
                torch.cuda.reset_peak_memory_stats(device)
            try:
                t = timed(fn, device, args.reps, clock)
            except torch.cuda.OutOfMemoryError:
                row["error"] = "out of memory"
                rows.append(row)
                print(f"{size:>11} {mode:<13} out of memory", flush=True)
                torch.cuda.empty_cache()
                continue
            fps = total_frames / t
            # CPU memory is measured per process by --memory-curve: in one process glibc reuses the
            # heap an earlier mode freed, so RSS growth here would say little.
            row.update(seconds=t, fps=fps, mfu=flops_per_frame * total_frames / t / peak,
                       peak_mem=(torch.cuda.max_memory_allocated(device) if gpu else float("nan")))
            if mode == "eager":
                ref_fps = fps
            if ref_fps:
                row["speedup_vs_eager"] = fps / ref_fps
            if grab is not None:
                u8[mode] = grab()
            rows.append(row)
            print(f"{size:>11} {mode:<13} {fps:9.2f} frames/s  {row.get('speedup_vs_eager', float('nan')):6.2f}x eager"
                  f"  MFU {row['mfu']:.3f}" + (f"  peak GPU mem {row['peak_mem'] / 2**20:.0f} MiB" if gpu else ""),
                  flush=True)
        if "engine-fp32" in u8 and "engine-bf16" in u8:
            p = psnr_u8(u8["engine-bf16"], u8["engine-fp32"])
            for row in rows:
                if row["size"] == size and row["mode"] == "engine-bf16":
                    row["psnr_bf16_vs_fp32"] = p
            print(f"{size:>11} bf16 vs fp32 uint8 PSNR: {p:.1f} dB", flush=True)
        compile_fps = {r["mode"]: r.get("fps") for r in rows if r["size"] == size}
        if compile_fps.get("compile-bf16") and compile_fps.get("engine-bf16"):
            ratio = compile_fps["engine-bf16"] / compile_fps["compile-bf16"]
            print(f"{size:>11} engine-bf16 / compile-bf16: {ratio:.2f}x")
    return rows


def parse_size(size: str) -> tuple:
    """'SIDExFRAMESxVIDEOS' -> three positive ints (ValueError naming the size otherwise)."""
    try:
        vals = tuple(int(v) for v in size.split("x"))
    except ValueError:
        vals = ()
    if len(vals) != 3 or min(vals) < 1:
        raise ValueError(f"size {size!r} must be SIDExFRAMESxVIDEOS with positive ints, e.g. 128x16x1")
    return vals


def size_view(side: int, resolution: int) -> View:
    """The view rendering `side`² pixels: super-resolution by side // resolution, and a centred
    crop of it when side is not a multiple of the resolution (so sizes below 128 work too)."""
    scale = max(1, side // resolution)
    full = resolution * scale
    if side == full:
        return View(scale=scale)
    if side > full:
        scale += 1
        full = resolution * scale
    off = (full - side) // 2
    return View(scale=scale, top=off, left=off, height=side, width=side)


def make_runner(G, mode, view, frames, videos, device, budget):
    cfg = G.cfg
    work = frame_work(cfg, view)  # FLOPs each mode really executes
    torch.manual_seed(0)
    if mode in ("eager", "compile-bf16"):
        z = torch.randn(videos, cfg.z_dim, device=device)
        zm = torch.randn(videos, cfg.w_dim, device=device)
        Ts = torch.linspace(0, 1, frames, device=device).repeat(videos)
        ws = G.mapping(z, None)
        syn = G.synthesis
        if mode == "compile-bf16":
            syn = torch.compile(G.synthesis, mode="max-autotune")
        # Chunk by frames so the reference fits: at most ~2^20 output pixels per call.
        per_call = max(1, (1 << 20) // (view.output_size(cfg.img_resolution)[0] ** 2))

        @torch.no_grad()
        def fn():
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=(mode == "compile-bf16")):
                for v in range(videos):
                    for f0 in range(0, frames, per_call):
                        t = Ts[v * frames + f0: v * frames + min(f0 + per_call, frames)]
                        syn(ws[v:v + 1], t, zm[v:v + 1], view=view)
        return fn, 2 * work.macs_unsplit, None
    precision = mode.split("-")[1]
    if precision == "bf16" and device.type == "cpu" and not cpu_bf16_support()[0]:
        raise RuntimeError(f"skipped: {cpu_bf16_support()[1]} (the engine would render fp32)")
    req = RenderRequest(seeds=list(range(videos)), frames=frames, view=view, precision=precision,
                        memory_budget=budget, device=str(device))
    r = Renderer(G, req)
    last = {}

    def fn():
        out = None
        for k, f, fr in r.frames():
            if k == 0 and f == 0:
                out = fr
        last["frame"] = out

    return fn, 2 * work.macs, (lambda: last["frame"])


def write_results(rows: list, curve: list = (), sweep: bool = False, command: str = "python bench/bench_render.py",
                  md: Path = REPO / "bench" / "RESULTS.md", jsonl: Path = REPO / "bench" / "results" / "render.jsonl"
                  ) -> None:
    """Append the rows to `jsonl`; rewrite the render-{gpu,cpu} table of `md` (the sweep has its own
    block, render-{gpu,cpu}-sweep)."""
    jsonl.parent.mkdir(parents=True, exist_ok=True)
    with open(jsonl, "a") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    mem = "peak GPU mem (MiB)" if any("nvidia" in str(r.get("device", "")).lower() for r in rows) \
        else "peak RSS growth (MiB)"
    lines = [f"| device | size (side x frames x videos) | mode | frames/s | x eager | MFU | {mem} | bf16 PSNR (dB) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['device']} | {r['size']} | {r['mode']} | {r['error']} | | | | |")
            continue
        mem_txt = "see curve" if r["peak_mem"] != r["peak_mem"] else f"{r['peak_mem'] / 2**20:.0f}"
        psnr = r.get("psnr_bf16_vs_fp32")
        lines.append(f"| {r['device']} | {r['size']} | {r['mode']} | {r['fps']:.2f} | "
                     f"{r.get('speedup_vs_eager', float('nan')):.2f} | {r['mfu']:.3f} | {mem_txt} | "
                     f"{'' if psnr is None else f'{psnr:.1f}'} |")
    table = "\n".join(lines)
    kind = "gpu" if any("cuda" in str(r.get("device", "")).lower() or "nvidia" in str(r.get("device", "")).lower()
                        for r in rows) else "cpu"
    block = f"render-{kind}" + ("-sweep" if sweep else "")
    begin, end = f"<!-- {block}:begin -->", f"<!-- {block}:end -->"
    if curve:
        table += ("\n\nMemory curve (each render in a fresh process, default 2 GiB budget, fp32): "
                  + ", ".join(f"{c['frames']} frames → peak RSS {c['peak_mib']:.0f} MiB "
                              f"(+{c['growth_mib']:.0f} MiB while rendering)" for c in curve) + ".")
    body = f"_{rows[0]['date']} rev {rows[0]['rev']}, {rows[0]['device']}, `{command}`_\n\n{table}"
    title = "sweep for the README's plot" if sweep else "engine vs eager"
    replace_block(md, begin, end, body, f"## Render {kind.upper()} ({title}, `{command}`)\n\n")


def _command(argv=None) -> str:
    return "python bench/bench_render.py" + "".join(f" {a}" for a in (sys.argv[1:] if argv is None else argv))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default=None, help="comma list of SIDExFRAMESxVIDEOS")
    p.add_argument("--modes", default=None, help=f"comma list of {GPU_MODES}")
    p.add_argument("--device", default=None)
    p.add_argument("--budget", type=lambda s: int(float(s) * (1 << 30)), default=4 << 30, help="engine budget, GiB")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=None,
                   help="CPU: torch threads (default: torch's); 1 is steadier on a shared machine")
    p.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                   help="CPU: 'cpu' times by this process's CPU time (with --threads 1 on a shared machine: "
                        "the time the work took)")
    p.add_argument("--write", action="store_true",
                   help="append to bench/results/render.jsonl and rewrite the table in bench/RESULTS.md "
                        "(default: print only; the source tree is left alone)")
    p.add_argument("--no-write", action="store_true", help=argparse.SUPPRESS)  # the old default
    p.add_argument("--memory-curve", action="store_true", help="CPU: peak RSS of 16/64/256-frame renders")
    p.add_argument("--sweep", action="store_true",
                   help=f"the plot's sizes (CPU {','.join(CPU_SWEEP)}; GPU {','.join(GPU_SWEEP)})")
    p.add_argument("--csv", type=Path, default=None, help="also save the rows (device, date, revision) as CSV")
    p.add_argument("--json", type=Path, default=None, help="also save the rows (device, date, revision) as JSON")
    args = p.parse_args(argv)
    rows = run(args)
    curve = memory_curve() if args.memory_curve else []
    for path in write_rows(rows, args.csv, args.json, dict(command=_command(argv), memory_curve=list(curve))):
        print(f"wrote {path}")
    if args.write and rows:
        write_results(rows, curve, sweep=args.sweep, command=_command(argv))


if __name__ == "__main__":
    main()
