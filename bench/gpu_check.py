"""One command for a lent GPU: tests, render and kernel benchmarks, in about 8 minutes.

    make gpu-check                              # = PYTHONPATH=. python3 bench/gpu_check.py --write
    python3 bench/gpu_check.py                  # print only
    python3 bench/gpu_check.py --dry-run        # CPU: every step at tiny sizes (checks the script)

Steps, each in its own process under a time limit taken from the remaining budget (a step that
runs out is reported as timed out, the others still run):
  tests    the GPU-marked tests and the kernel / engine tests with TRITON_INTERPRET=0 (on CUDA they
           run the compiled kernels on the device)
  render   bench/bench_render.py: eager fp32 reference, torch.compile bf16 max-autotune, engine
           fp32 / tf32 / bf16 at 128²×16 frames×8 videos and 1024²×256 frames; frames/s, speedup,
           peak device memory, MFU against the best matmul rate measured in the same run
  tiles    host time vs device time (CUDA events) per tile of an engine render, per precision,
           with eager launches and through the chunk graphs (engine/graphs.py):
           a host time close to the device time means the launches, not the GPU, set the pace
  kernels  bench/bench_kernels.py --quick: every op against its plain-PyTorch equivalent
Frames go to a null sink (nothing is encoded: the GPU machines have neither PyAV nor FFmpeg).
Works with the GPU machines' stack (Python 3.12, torch 2.11, triton 3.6) run from the checkout
(PYTHONPATH=.). With --write the results go to bench/RESULTS.md (between gpu-check markers, with
the device name) and bench/results/gpu_check.jsonl; without, nothing in the tree changes. Prints
a one-line summary last. Without CUDA (and without --dry-run) it says so and exits 0 at once.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
RESULTS_MD = REPO / "bench" / "RESULTS.md"
RESULTS_JSONL = REPO / "bench" / "results" / "gpu_check.jsonl"
BEGIN, END = "<!-- gpu-check:begin -->", "<!-- gpu-check:end -->"
MIN_STEP_S = 5.0          # a step is not started with less time than this left
TEST_FILES = ("tests/test_kernels_fmm_linear.py", "tests/test_kernels_modulate.py",
              "tests/test_kernels_rgb.py", "tests/test_kernels_backward.py",
              "tests/test_engine_triton.py", "tests/test_chunk_graphs.py", "tests/test_kernels_out_view.py",
              "tests/test_kernels_level.py", "tests/test_kernels_tf32x3.py", "bench/test_bench_kernels.py")


@dataclass
class Plan:
    """What each step runs and its time cap (seconds); the whole run stays within budget_s."""
    budget_s: float = 480.0
    tests_s: float = 150.0
    tests_args: List[str] = field(default_factory=lambda: ["-m", "gpu or not slow", *TEST_FILES])
    render_s: float = 200.0
    render_sizes: List[str] = field(default_factory=lambda: ["128x16x8", "1024x256x1"])
    render_modes: str = "eager,compile-bf16,engine-fp32,engine-tf32,engine-bf16"
    render_reps: int = 1
    tiles_s: float = 45.0
    tiles_size: str = "128x16x1"
    tiles_precisions: List[str] = field(default_factory=lambda: ["fp32", "fp32-ieee", "tf32", "bf16"])
    kernels_s: float = 120.0
    kernels_args: List[str] = field(default_factory=lambda: ["--quick"])


def dry_run_plan() -> Plan:
    """Tiny sizes on the CPU: every code path, in a minute or two on an idle CPU (no torch.compile:
    max-autotune on a CPU takes minutes and says nothing about the GPU). Generous limits: a shared
    CPU can be many times slower, and the dry run checks the script, not the speed."""
    return Plan(budget_s=1200.0, tests_s=300.0, tests_args=["-m", "gpu", "bench/test_bench_kernels.py"],
                render_s=300.0, render_sizes=["32x2x1"], render_modes="eager,engine-fp32,engine-bf16",
                tiles_s=300.0, tiles_size="32x2x1", tiles_precisions=["fp32", "bf16"], kernels_s=300.0,
                kernels_args=["--quick", "--ops", "conv,to_uint8", "--rows", "1x8x8",
                              "--precisions", "fp32", "--backends", "torch"])


# ---- the steps (each runs in a child process: python bench/gpu_check.py --step NAME) -----------

def step_tests(plan: Plan, dry: bool, save) -> dict:
    import importlib.util
    env = {**os.environ, "TRITON_INTERPRET": "0", "PYTHONPATH": _pythonpath()}
    args = list(plan.tests_args)
    if importlib.util.find_spec("pytest_benchmark") is None:
        # pyproject's addopts name a pytest-benchmark option, and the bench tests need its fixture.
        args = ["-o", "addopts=-ra"] + [a for a in args if not a.startswith("bench/")]
        if not any(a.endswith(".py") for a in args):
            return dict(status="skipped", note="pytest-benchmark is not installed here")
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args]
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    out = r.stdout + r.stderr
    if "No module named pytest" in out:
        return dict(status="skipped", note="pytest is not installed here")
    counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", out)}
    return dict(status="ok" if r.returncode in (0, 5) else "failed", returncode=r.returncode,
                counts=counts, tail=out.strip().splitlines()[-15:])


def step_render(plan: Plan, dry: bool, save) -> dict:
    import bench.bench_render as BR
    rows = []
    for size in plan.render_sizes:
        args = argparse.Namespace(sizes=size, modes=plan.render_modes, device=None if not dry else "cpu",
                                  budget=4 << 30, reps=plan.render_reps)
        rows += BR.run(args)
        save(dict(status="partial", rows=rows))     # kept if a later size runs out of time
    return dict(status="ok", rows=rows)


def step_tiles(plan: Plan, dry: bool, save) -> dict:
    """Per tile: host time of render_tile's launches (perf_counter, no sync) and device time
    between CUDA events around them (on the CPU both are host times)."""
    import torch

    import bench.bench_render as BR
    from digan.default import untrained_generator
    from engine.executor import render_tile
    from engine.renderer import Renderer
    from engine.request import RenderRequest

    cuda = torch.cuda.is_available() and not dry
    device = torch.device("cuda" if cuda else "cpu")
    side, frames, videos = BR.parse_size(plan.tiles_size)
    G = untrained_generator().to(device)
    view = BR.size_view(side, G.cfg.img_resolution)
    out = []
    for precision in plan.tiles_precisions:
        req = RenderRequest(seeds=[0], frames=frames, view=view, precision=precision, device=str(device))
        r = Renderer(G, req)
        blocks = r.video_weights(0)
        tiles = [t for c in r.plan.chunks() for t in c.tiles]
        host, dev = [], []
        for rep in range(2):                      # the first pass compiles the kernels: not timed
            for tile in tiles:
                if cuda:
                    torch.cuda.synchronize()
                    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    e0.record()
                h0 = time.perf_counter()
                render_tile(r.G, blocks, tile, view.scale, getattr(r, "precision", precision), r.backend,
                            device)
                h1 = time.perf_counter()
                if cuda:
                    e1.record()
                    e1.synchronize()
                    d = e0.elapsed_time(e1)
                else:
                    d = (time.perf_counter() - h0) * 1e3
                if rep:
                    host.append((h1 - h0) * 1e3)
                    dev.append(d)
        out.append(dict(precision=getattr(r, "precision", precision), size=plan.tiles_size, tiles=len(tiles),
                        backend=r.backend, host_ms=statistics.median(host), device_ms=statistics.median(dev),
                        events="cuda" if cuda else "host clock (no CUDA)", mode="eager"))
        if cuda and r.graphs is not None:
            out.append(_graph_row(r, blocks, plan.tiles_size))
    return dict(status="ok", rows=out)


def _graph_row(r, blocks, size: str) -> dict:
    """Per tile, through the chunk graphs (engine/graphs.py): host time of one replay (refills
    and replay call, no sync) and device time between CUDA events, divided by the chunk's tiles.
    The first pass captures (not timed)."""
    import torch

    chunks = list(r.plan.chunks())
    buf = torch.empty((r.plan.frames_per_chunk, r.H, r.W, 3), dtype=torch.uint8, device=r.device)
    host, dev = [], []
    for rep in range(3):
        for chunk in chunks:
            n = chunk.frames[1] - chunk.frames[0]
            torch.cuda.synchronize()
            e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            e0.record()
            h0 = time.perf_counter()
            r.render_chunk(blocks, chunk, buffer=buf[:n])
            h1 = time.perf_counter()
            e1.record()
            e1.synchronize()
            if rep:
                host.append((h1 - h0) * 1e3 / len(chunk.tiles))
                dev.append(e0.elapsed_time(e1) / len(chunk.tiles))
    return dict(precision=r.precision, size=size, tiles=sum(len(c.tiles) for c in chunks), backend=r.backend,
                host_ms=statistics.median(host), device_ms=statistics.median(dev), events="cuda",
                mode=f"cuda graphs ({r.graphs.captures} captured, enabled={r.graphs.enabled})")


def step_kernels(plan: Plan, dry: bool, save) -> dict:
    import bench.bench_kernels as BK
    args = argparse.Namespace(ops=None, rows=None, videos=None, precisions=None, backends=None,
                              channels=None, preset="digan-128", device="cpu" if dry else None,
                              threads=None, quick=False, full=False, check=False)
    rest = list(plan.kernels_args)
    while rest:
        k = rest.pop(0).lstrip("-").replace("-", "_")
        if k in ("quick", "full", "check"):
            setattr(args, k, True)
        else:
            setattr(args, k, rest.pop(0))
    rows, meta = BK.run(args)
    return dict(status="ok", rows=rows, meta=meta)


STEPS = {"tests": step_tests, "render": step_render, "tiles": step_tiles, "kernels": step_kernels}


def _pythonpath() -> str:
    old = os.environ.get("PYTHONPATH")
    return str(REPO) + (os.pathsep + old if old else "")


def run_step(name: str, limit_s: float, dry: bool) -> dict:
    """The step in a child process with a hard time limit; its result dict (status, ...)."""
    if limit_s < MIN_STEP_S:
        return dict(status="skipped", note="no time left in the budget")
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "step.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--step", name, "--step-out", str(out)]
        if dry:
            cmd.append("--dry-run")
        env = {**os.environ, "PYTHONPATH": _pythonpath()}
        env.setdefault("TRITON_INTERPRET", "0")
        t0 = time.perf_counter()
        # Own process group: on timeout the step and everything it started (pytest, compile
        # workers) stop, so nothing keeps the GPU busy during the next step.
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, start_new_session=True)
        try:
            stdout, stderr = proc.communicate(timeout=limit_s)
            r = subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                proc.kill()
            tail, _ = proc.communicate()
            res = json.loads(out.read_text()) if out.exists() else {}
            res.update(status="timed out", seconds=round(time.perf_counter() - t0, 1),
                       note=f"over its {limit_s:.0f} s limit" + (" (partial results)" if res else ""),
                       log=tail.strip().splitlines()[-10:])
            return res
        seconds = round(time.perf_counter() - t0, 1)
        if r.returncode or not out.exists():
            return dict(status="error", seconds=seconds, returncode=r.returncode,
                        log=(r.stdout + r.stderr).strip().splitlines()[-20:])
        res = json.loads(out.read_text())
    res["seconds"] = seconds
    res["log"] = r.stdout.strip().splitlines()[-40:]
    return res


# ---- report -------------------------------------------------------------------------------------

def _fmt(v, spec=".2f"):
    return "" if v is None or v != v else format(v, spec)


def markdown(report: dict) -> str:
    lines = [f"_{report['date']} rev {report['rev']}, **{report['device']}**, torch {report['torch']}, "
             f"triton {report['triton']}, `python3 bench/gpu_check.py{' --dry-run' if report['dry_run'] else ''}`"
             f", {report['seconds']:.0f} s_", ""]
    st = report["steps"]
    t = st.get("tests", {})
    if "tests" in st:
        lines.append(f"**Tests** ({t.get('status')}, {t.get('seconds', 0):.0f} s): "
                     + ", ".join(f"{v} {k}" for k, v in t.get("counts", {}).items()) + (t.get("note") or ""))
    if "render" in st:
        lines += ["", f"**Render** ({st['render'].get('status')}; MFU against the best matmul rate "
                  "measured in the run; peak device memory from torch.cuda.max_memory_allocated)", "",
                  "| size (side×frames×videos) | mode | frames/s | × eager | MFU | peak mem (MiB) |",
                  "|---|---|---:|---:|---:|---:|"]
    for r in st.get("render", {}).get("rows", []):
        if "error" in r:
            lines.append(f"| {r['size']} | {r['mode']} | {r['error']} | | | |")
            continue
        mem = r.get("peak_mem")
        lines.append(f"| {r['size']} | {r['mode']} | {_fmt(r.get('fps'))} | {_fmt(r.get('speedup_vs_eager'))} | "
                     f"{_fmt(r.get('mfu'), '.3f')} | {_fmt(None if mem is None else mem / 2**20, '.0f')} |")
    if "tiles" in st:
        lines += ["", f"**Host vs device time per tile** ({st['tiles'].get('status')})", "",
                  "| size | precision | launches | tiles | host ms / tile | device ms / tile | clock |",
                  "|---|---|---|---:|---:|---:|---|"]
    for r in st.get("tiles", {}).get("rows", []):
        lines.append(f"| {r['size']} | {r['precision']} | {r.get('mode', 'eager')} | {r['tiles']} | "
                     f"{r['host_ms']:.2f} | {r['device_ms']:.2f} | {r['events']} |")
    k = st.get("kernels", {})
    if "kernels" in st:
        lines += ["", f"**Kernels** ({k.get('status')}, `bench_kernels.py {' '.join(report['kernels_args'])}`)", ""]
    if k.get("rows"):
        import bench.bench_kernels as BK
        lines.append(BK.markdown_table(k["rows"]))
    for name, s in st.items():
        if s.get("status") not in ("ok",):
            lines += ["", f"{name}: {s.get('status')} {s.get('note', '')}".rstrip()]
    return "\n".join(lines)


def summary(report: dict) -> str:
    st = report["steps"]
    parts = [f"gpu-check: {report['device']}"]
    t = st.get("tests", {})
    c = t.get("counts", {})
    if "tests" in st:
        parts.append(f"tests {t.get('status')}" + (f" ({c.get('passed', 0)} passed, {c.get('failed', 0)} failed)"
                                                   if c else ""))
    best = {}
    for r in st.get("render", {}).get("rows", []):
        if r.get("fps") and r["mode"].startswith("engine") and (
                r["size"] not in best or r["fps"] > best[r["size"]]["fps"]):
            best[r["size"]] = r
    for size, r in best.items():
        parts.append(f"{size} {r['mode']} {r['fps']:.1f} fps ({_fmt(r.get('speedup_vs_eager'))}x eager, "
                     f"MFU {_fmt(r.get('mfu'), '.3f')})")
    if not best and "render" in st:
        parts.append(f"render {st['render'].get('status')}")
    tiles = st.get("tiles", {}).get("rows", [])
    if tiles:
        parts.append("tile host/device ms " + " ".join(f"{r['precision']} {r['host_ms']:.2f}/{r['device_ms']:.2f}"
                                                        for r in tiles))
    if "kernels" in st:
        parts.append(f"kernels {st['kernels'].get('status')} ({len(st['kernels'].get('rows', []))} rows)")
    parts.append(f"{report['seconds']:.0f} s")
    return "; ".join(parts)


def write(report: dict, md: Path = RESULTS_MD, jsonl: Path = RESULTS_JSONL) -> None:
    jsonl.parent.mkdir(parents=True, exist_ok=True)
    with open(jsonl, "a") as f:
        f.write(json.dumps(report, default=str) + "\n")
    from bench.results_md import replace_block
    replace_block(md, BEGIN, END, markdown(report),
                  "## GPU check (`make gpu-check`)\n\nTests, render and kernel benchmarks in one run on a lent "
                  "GPU (bench/gpu_check.py).\n\n")


# ---- main ---------------------------------------------------------------------------------------

def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--write", action="store_true", help="write bench/RESULTS.md and bench/results/gpu_check.jsonl")
    p.add_argument("--dry-run", action="store_true", help="CPU: every step at tiny sizes")
    p.add_argument("--budget-s", type=float, default=None, help="total seconds (default 480, dry run 1200)")
    p.add_argument("--steps", default=",".join(STEPS), help=f"comma list of {', '.join(STEPS)}")
    p.add_argument("--step", default=None, help=argparse.SUPPRESS)        # child: run one step
    p.add_argument("--step-out", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    plan = dry_run_plan() if args.dry_run else Plan()
    if args.step:                                          # in the child process
        out = Path(args.step_out)

        def save(res):
            tmp = out.with_suffix(".tmp")
            tmp.write_text(json.dumps(res, default=str))
            tmp.replace(out)                       # never half a file, even when killed

        save_final = STEPS[args.step](plan, args.dry_run, save)
        save(save_final)
        return 0

    if not args.dry_run and sys.platform.startswith("linux") and not Path("/dev/nvidiactl").exists():
        # No NVIDIA driver device node: no CUDA, said without importing torch (seconds on a busy CPU).
        print("gpu-check: no CUDA device here (no NVIDIA driver); nothing to check "
              "(--dry-run exercises the steps on the CPU)")
        return 0
    import torch
    if not args.dry_run and not torch.cuda.is_available():
        print(f"gpu-check: no CUDA device here (torch {torch.__version__}); nothing to check "
              "(--dry-run exercises the steps on the CPU)")
        return 0
    steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    bad = [s for s in steps if s not in STEPS]
    if bad or not steps:
        print(f"gpu-check: error: unknown steps {bad}; steps: {', '.join(STEPS)}", file=sys.stderr)
        return 2
    if args.budget_s is not None:
        if not args.budget_s > 0:
            print(f"gpu-check: error: --budget-s must be positive, got {args.budget_s}", file=sys.stderr)
            return 2
        plan.budget_s = args.budget_s
    sys.path.insert(0, str(REPO))
    from bench.envinfo import device_name, git_rev
    try:
        import triton
        triton_version = triton.__version__
    except Exception:
        triton_version = "not installed"
    device = torch.device("cuda" if torch.cuda.is_available() and not args.dry_run else "cpu")
    rev, dirty = git_rev()
    t0 = time.perf_counter()
    caps = dict(tests=plan.tests_s, render=plan.render_s, tiles=plan.tiles_s, kernels=plan.kernels_s)
    results = {}
    for name in steps:
        left = plan.budget_s - (time.perf_counter() - t0)
        print(f"gpu-check: {name} (limit {min(caps[name], left):.0f} s) ...", flush=True)
        results[name] = run_step(name, min(caps[name], left), args.dry_run)
        print(f"gpu-check: {name}: {results[name].get('status')} in {results[name].get('seconds', 0):.0f} s",
              flush=True)
        for line in results[name].get("log", [])[-8:] if results[name].get("status") != "ok" else []:
            print(f"    {line}")
    report = dict(device=device_name(device), date=dt.datetime.now().isoformat(timespec="seconds"),
                  rev=rev + ("+dirty" if dirty else ""), torch=torch.__version__, triton=triton_version,
                  python=sys.version.split()[0], dry_run=args.dry_run, seconds=time.perf_counter() - t0,
                  kernels_args=plan.kernels_args, plan=asdict(plan), steps=results)
    print(markdown(report))
    if args.write:
        write(report)
    print(summary(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
