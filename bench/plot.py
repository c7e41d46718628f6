"""Draw the benchmark results as PNG plots for the README (matplotlib, Agg; `make plots`).

    python bench/plot.py                          # bench/results/*.jsonl -> docs/bench_*.png
    python bench/plot.py --results DIR --out DIR  # other folders (the tests use a temporary one)
    make bench-sweep                              # measure new rows here first (--sweep --write), then plot

Plots, one per device found in the rows (the newest git revision of each device and benchmark,
the newest row of each case within it; rows without a result are left out):
  bench_render_<device>.png   frames/s per mode against the output side (at the most measured
                              frame count) and against the frame count (at the most measured side)
  bench_kernels_<device>.png  per op, the rate against the shape per backend/precision: lines
                              against the rows M where the op was swept over them, else bars;
                              GFLOP/s on a CPU, TFLOP/s on a GPU, GB/s for memory-bound ops
Each plot says CPU or GPU, the device, date, revision (and the load average where recorded);
absolute numbers are only meaningful for that device (the README's CPU plots are from a shared
2-core machine: read the ratios).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Sequence

REPO = Path(__file__).resolve().parents[1]


def read_rows(path: Path) -> List[dict]:
    """JSON rows of a .jsonl file; a torn last line (an interrupted benchmark) is skipped."""
    rows = []
    if not path.exists():
        return rows
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def newest_per_device(rows: Sequence[dict], rev_key: str, key: Sequence[str] = ()) -> Dict[str, List[dict]]:
    """device -> the rows of that device's most recent revision (by the rows' dates). Rows without a
    result (an error or a skip: no 'fps' / 'rate') are left out. With `key` (e.g. size and mode),
    only the newest row of each key is kept (a revision measured twice plots once)."""
    by_dev: Dict[str, List[dict]] = defaultdict(list)
    for r in rows:
        if "device" in r and ("fps" in r or "rate" in r):
            by_dev[str(r["device"])].append(r)
    out = {}
    for dev, rs in by_dev.items():
        newest = max(rs, key=lambda r: str(r.get("date", "")))
        rev = newest.get(rev_key)
        keep = [r for r in rs if r.get(rev_key) == rev]
        if key:
            latest: Dict[tuple, dict] = {}
            for r in sorted(keep, key=lambda r: str(r.get("date", ""))):
                latest[tuple(r.get(k) for k in key)] = r
            keep = list(latest.values())
        out[dev] = keep
    return out


def device_kind(rows: Sequence[dict], device: str) -> str:
    """'CPU' or 'GPU': the rows' device_kind, else from the name (bench/envinfo names a CPU
    'model (N cores)')."""
    kind = next((r["device_kind"] for r in rows if r.get("device_kind")), None)
    if kind is None:
        kind = "cpu" if re.search(r"\(\d+ cores\)$", device) else "gpu"
    return kind.upper()


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "device"


def _parse_size(size: str):
    """'128x16x1' -> (side, frames, videos)."""
    side, frames, videos = (int(v) for v in size.split("x"))
    return side, frames, videos


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")  # files only: no display on these machines
    import matplotlib.pyplot as plt
    return plt


def _save(fig, kind: str, device: str, rows: Sequence[dict], out: Path) -> Path:
    """Title the figure with where its rows come from and write out/bench_<kind>_<device>.png."""
    plt = _pyplot()
    first = rows[0]
    load = first.get("load_avg")
    load_txt = f" · load {load:.1f}" if isinstance(load, (int, float)) else ""
    if first.get("threads"):
        load_txt += f" · {first['threads']} thread" + ("s" if first["threads"] > 1 else "")
    if first.get("clock") == "cpu":
        load_txt += " · timed by process CPU time"
    fig.suptitle(f"{kind} ({device_kind(rows, device)}): {device} · {first.get('date', '?')[:10]} · "
                 f"rev {first.get('rev', '?')}{load_txt}", fontsize=10)
    fig.tight_layout()
    path = out / f"bench_{kind}_{_slug(device)}.png"
    fig.savefig(path, dpi=90)   # ~1100 px wide: readable in the README, < 200 KB
    plt.close(fig)
    return path


def _most_common(values):
    counts = defaultdict(int)
    for v in values:
        counts[v] += 1
    return max(counts, key=lambda v: (counts[v], v))


def plot_render(rows: Sequence[dict], device: str, out: Path) -> Path:
    """Two panels of frames/s per mode: against the output side at the most measured frame count,
    and against the frame count at the most measured side (bench_render.py --sweep measures both)."""
    plt = _pyplot()
    pts = [(*_parse_size(r["size"]), r["mode"], float(r["fps"])) for r in rows]
    frames0 = _most_common(p[1] * p[2] for p in pts)
    side0 = _most_common(p[0] for p in pts)
    fig, (ax_px, ax_fr) = plt.subplots(1, 2, figsize=(10, 4))
    for mode in sorted({p[3] for p in pts}):
        by_side = sorted((p[0], p[4]) for p in pts if p[3] == mode and p[1] * p[2] == frames0)
        by_frames = sorted((p[1] * p[2], p[4]) for p in pts if p[3] == mode and p[0] == side0)
        if by_side:
            ax_px.plot(*zip(*by_side), "o-", label=mode)
        if by_frames:
            ax_fr.plot(*zip(*by_frames), "o-", label=mode)
    ax_px.set_xlabel(f"output side (px; {frames0} frames)")
    ax_fr.set_xlabel(f"frames rendered (frames x videos; {side0}x{side0} px)")
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter, ScalarFormatter
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    # Over more than a decade, minor ticks labelled at 2x and 5x a power of ten only (all overlap).
    sparse = FuncFormatter(lambda v, _: f"{v:g}" if v > 0 and f"{v:.0e}"[0] in "25" else "")
    for ax in (ax_px, ax_fr):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        # Ticks at the measured sizes, in plain numbers (32, 64, 128 rather than 2^5 ...).
        xs = sorted({x for line in ax.lines for x in line.get_xdata()})
        ax.xaxis.set_major_locator(FixedLocator(xs))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.yaxis.set_major_formatter(plain)
        lo, hi = ax.get_ylim() if ax.lines else (1.0, 1.0)
        ax.yaxis.set_minor_formatter(sparse if hi > 10 * lo else plain)   # within a decade: every tick
        ax.set_ylabel("frames/s")
        ax.grid(True, which="both", alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    return _save(fig, "render", device, rows, out)


def _rate(r: dict, gflops: bool) -> float:
    """The row's rate in the plot's unit: TFLOP/s rows in GFLOP/s on a CPU (0.1 TFLOP/s reads badly)."""
    rate = float(r["rate"])
    return rate * 1e3 if gflops and r.get("unit", "TFLOP/s") == "TFLOP/s" else rate


def plot_kernels(rows: Sequence[dict], device: str, out: Path) -> Path:
    """One panel per op: the rate against the shape, per backend and precision. Row-wise ops with
    more than one row count (bench_kernels.py --sweep) are lines against M, one per layer shape;
    the others bars per shape."""
    plt = _pyplot()
    gflops = device_kind(rows, device) == "CPU"
    ops = sorted({r["op"] for r in rows})
    cols = min(3, len(ops))
    nrows = -(-len(ops) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.4 * nrows), squeeze=False)
    for ax, op in zip(axes.flat, ops):
        op_rows = [r for r in rows if r["op"] == op]
        unit = op_rows[0].get("unit", "TFLOP/s")
        if gflops and unit == "TFLOP/s":
            unit = "GFLOP/s"
        if len({r.get("rows") or 0 for r in op_rows} - {0}) > 1:
            _kernel_lines(ax, op_rows, gflops)
        else:
            _kernel_bars(ax, op_rows, gflops)
        ax.set_title(op, fontsize=9)
        ax.set_ylabel(unit, fontsize=8)
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(ops):]:
        ax.axis("off")
    return _save(fig, "kernels", device, rows, out)


def _kernel_lines(ax, op_rows: Sequence[dict], gflops: bool) -> None:
    series: Dict[str, List[tuple]] = defaultdict(list)
    for r in op_rows:
        # The shape without its rows: "M=4096 (1x64x64) K=512 N=512" -> "K=512 N=512"; frames "1x64x64x3" -> "".
        layer = re.sub(r"^M=\d+ \([^)]*\) ?|^\d+x\d+x\d+x\d+$", "", r["shape"])
        layer = re.sub(r" (pre|skip)=\d+", "", layer)                        # parent rows follow M
        series[f"{layer} {r['backend']} {r['precision']}".strip()].append((int(r["rows"]), _rate(r, gflops)))
    for name, pts in sorted(series.items()):
        ax.plot(*zip(*sorted(pts)), "o-", label=name, markersize=3)
    from matplotlib.ticker import FixedLocator, NullFormatter, ScalarFormatter
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(sorted({p[0] for pts in series.values() for p in pts})))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.tick_params(axis="x", labelsize=7)
    ax.set_xlabel("rows M (pixels x frames)", fontsize=8)
    ax.grid(True, which="both", alpha=0.3)


def _kernel_bars(ax, op_rows: Sequence[dict], gflops: bool) -> None:
    shapes = list(dict.fromkeys(r["shape"] for r in op_rows))   # first-seen order
    series: Dict[str, Dict[str, float]] = defaultdict(dict)
    for r in op_rows:
        series[f"{r['backend']} {r['precision']}"][r["shape"]] = _rate(r, gflops)
    width = 0.8 / max(1, len(series))
    for k, (name, vals) in enumerate(sorted(series.items())):
        xs = [i + k * width for i, s in enumerate(shapes) if s in vals]
        ax.bar(xs, [vals[s] for s in shapes if s in vals], width=width, label=name)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(shapes))])
    ax.set_xticklabels(shapes, rotation=30, ha="right", fontsize=6)


def main(argv: Sequence[str] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", type=Path, default=REPO / "bench" / "results", help="folder of *.jsonl rows")
    p.add_argument("--out", type=Path, default=REPO / "docs", help="folder for the PNG plots")
    args = p.parse_args(argv)
    try:
        import matplotlib  # noqa: F401 - only to fail early with the fix
    except ImportError:
        print("bench/plot.py needs matplotlib: `make plots` installs it", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    written = []
    for dev, rows in newest_per_device(read_rows(args.results / "render.jsonl"), "rev", ("size", "mode")).items():
        written.append(plot_render(rows, dev, args.out))
    kernel_key = ("op", "shape", "precision", "backend")
    for dev, rows in newest_per_device(read_rows(args.results / "kernels.jsonl"), "rev", kernel_key).items():
        written.append(plot_kernels(rows, dev, args.out))
    if not written:
        print(f"no benchmark rows in {args.results}: run the benchmarks first", file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
