"""Draw the benchmark results as PNG plots for the README (matplotlib; `make plots`).

    python bench/plot.py                          # bench/results/*.jsonl -> docs/bench_*.png
    python bench/plot.py --results DIR --out DIR  # other folders (the tests use a temporary one)

Plots, one per device found in the rows (the newest git revision of each device and benchmark):
  bench_render_<device>.png   frames/s against pixels per frame and against frames, per mode
  bench_kernels_<device>.png  TFLOP/s (or GB/s) per op against its shape, per backend/precision
Each plot says the device, date and revision it comes from; absolute numbers are only meaningful
for that device (the README's CPU plots are from a noisy 2-core machine: read the ratios).
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


def newest_per_device(rows: Sequence[dict], rev_key: str) -> Dict[str, List[dict]]:
    """device -> the rows of that device's most recent revision (by the rows' dates)."""
    by_dev: Dict[str, List[dict]] = defaultdict(list)
    for r in rows:
        if "device" in r:
            by_dev[str(r["device"])].append(r)
    out = {}
    for dev, rs in by_dev.items():
        newest = max(rs, key=lambda r: str(r.get("date", "")))
        rev = newest.get(rev_key)
        out[dev] = [r for r in rs if r.get(rev_key) == rev]
    return out


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "device"


def _parse_size(size: str):
    """'128x16x1' -> (side, frames, videos)."""
    side, frames, videos = (int(v) for v in size.split("x"))
    return side, frames, videos


def _save(fig, kind: str, device: str, rows: Sequence[dict], out: Path) -> Path:
    """Title the figure with where its rows come from and write out/bench_<kind>_<device>.png."""
    import matplotlib.pyplot as plt
    first = rows[0]
    fig.suptitle(f"{kind}: {device} · {first.get('date', '?')[:10]} · rev {first.get('rev', '?')}", fontsize=10)
    fig.tight_layout()
    path = out / f"bench_{kind}_{_slug(device)}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_render(rows: Sequence[dict], device: str, out: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")  # files only: no display on these machines
    import matplotlib.pyplot as plt

    fig, (ax_px, ax_fr) = plt.subplots(1, 2, figsize=(10, 4))
    by_mode: Dict[str, List[tuple]] = defaultdict(list)
    for r in rows:
        side, frames, videos = _parse_size(r["size"])
        by_mode[r["mode"]].append((side * side, frames * videos, float(r["fps"])))
    for mode, pts in sorted(by_mode.items()):
        pts.sort()
        ax_px.plot([p[0] for p in pts], [p[2] for p in pts], "o-", label=mode)
        by_frames = sorted(pts, key=lambda p: p[1])
        ax_fr.plot([p[1] for p in by_frames], [p[2] for p in by_frames], "o-", label=mode)
    for ax, xl in ((ax_px, "pixels per frame"), (ax_fr, "frames rendered (frames x videos)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel(xl)
        ax.set_ylabel("frames/s")
        ax.grid(True, which="both", alpha=0.3)
    ax_px.legend(fontsize=8)
    return _save(fig, "render", device, rows, out)


def plot_kernels(rows: Sequence[dict], device: str, out: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ops = sorted({r["op"] for r in rows})
    cols = min(3, len(ops))
    nrows = -(-len(ops) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.4 * nrows), squeeze=False)
    for ax, op in zip(axes.flat, ops):
        op_rows = [r for r in rows if r["op"] == op]
        unit = op_rows[0].get("unit", "TFLOP/s")
        shapes = list(dict.fromkeys(r["shape"] for r in op_rows))   # first-seen order
        series: Dict[str, Dict[str, float]] = defaultdict(dict)
        for r in op_rows:
            series[f"{r['backend']} {r['precision']}"][r["shape"]] = float(r["rate"])
        width = 0.8 / max(1, len(series))
        for k, (name, vals) in enumerate(sorted(series.items())):
            xs = [i + k * width for i, s in enumerate(shapes) if s in vals]
            ax.bar(xs, [vals[s] for s in shapes if s in vals], width=width, label=name)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(shapes))])
        ax.set_xticklabels(shapes, rotation=30, ha="right", fontsize=6)
        ax.set_title(op, fontsize=9)
        ax.set_ylabel(unit, fontsize=8)
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(ops):]:
        ax.axis("off")
    return _save(fig, "kernels", device, rows, out)


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
    for dev, rows in newest_per_device(read_rows(args.results / "render.jsonl"), "rev").items():
        written.append(plot_render(rows, dev, args.out))
    for dev, rows in newest_per_device(read_rows(args.results / "kernels.jsonl"), "rev").items():
        written.append(plot_kernels(rows, dev, args.out))
    if not written:
        print(f"no benchmark rows in {args.results}: run the benchmarks first", file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
