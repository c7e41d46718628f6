"""Benchmark rows as CSV and JSON (device, date, git revision on every row), and the ratio table
printed after `make bench`. No torch import: bench/conftest.py and the scripts share it.

A row is a flat dict; nested values (e.g. the measured peaks per precision) are JSON-encoded in the
CSV. The JSON file is {"meta": {...}, "rows": [...]}, the CSV one row per line with the union of
the rows' keys as its header (first-seen order).
"""
from __future__ import annotations

import csv
import datetime as dt
import json
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence

# Work per call (extra_info key) -> (unit, scale) of its rate; FLOP/s in G on a CPU, T on a GPU.
_RATE_UNITS = {"frames": ("frames/s", 1.0), "bytes": ("GB/s", 1e9)}


def _rate(extra: dict, seconds: float, device_kind: str):
    """(rate, unit) of one call from its work: the headline unit the benchmark names (extra
    'unit': 'TFLOP/s' or 'GB/s', as bench_kernels' cases do), else frames, else FLOPs."""
    key = {"GB/s": "bytes", "TFLOP/s": "flops"}.get(extra.get("unit"))
    key = key or next((k for k in ("frames", "flops", "bytes") if extra.get(k)), None)
    if not key or not extra.get(key) or not seconds:
        return None
    unit, scale = _RATE_UNITS.get(key) or (("TFLOP/s", 1e12) if device_kind == "gpu" else ("GFLOP/s", 1e9))
    return float(extra[key]) / seconds / scale, unit


def run_meta(device: str, device_kind: str, rev: str, dirty: bool, **extra) -> Dict[str, object]:
    """Where and when a run happened: the fields every exported row carries."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return dict(device=device, device_kind=device_kind, date=dt.datetime.now().isoformat(timespec="seconds"),
                rev=rev, dirty=dirty, load_avg=load, cpu_count=os.cpu_count(), **extra)


def write_json(path: Path, rows: Sequence[dict], meta: Optional[dict] = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"meta": meta or {}, "rows": list(rows)}, indent=1, default=str) + "\n")
    return path


def write_csv(path: Path, rows: Sequence[dict]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for r in rows:
            w.writerow({k: (json.dumps(v) if isinstance(v, (dict, list, tuple)) else v) for k, v in r.items()})
    return path


def write_rows(rows: Sequence[dict], csv_path: Optional[Path] = None, json_path: Optional[Path] = None,
               meta: Optional[dict] = None) -> List[Path]:
    """The scripts' --csv / --json: each file when its path is given; returns the paths written."""
    out = []
    if csv_path:
        out.append(write_csv(csv_path, rows))
    if json_path:
        out.append(write_json(json_path, rows, meta))
    return out


def benchmark_row(name: str, group: Optional[str], stats: Dict[str, float], extra: dict, meta: dict) -> dict:
    """One pytest-benchmark result as a row: its timing (seconds), rate and the run's metadata.

    `extra` is the benchmark's extra_info: 'impl' and 'baseline' name what it is and what it is
    compared with in its group; 'frames' / 'flops' / 'bytes' (work per call) give its rate. The
    extra_info keys are kept, except 'unit', which becomes the rate's (rate_unit), and 'device'
    (a torch device type), which becomes 'device_type'."""
    row = dict(meta, name=name, group=group or "")
    row.update({f"{k}_s": stats[k] for k in ("median", "mean", "min", "max", "stddev") if k in stats})
    row["rounds"] = stats.get("rounds")
    # extra 'device' is the torch device type ('cpu' / 'cuda'); the row's device is the name.
    row.update({("device_type" if k == "device" else k): v for k, v in extra.items() if k != "unit"})
    rate = _rate(extra, stats.get("median"), meta.get("device_kind", "cpu"))
    if rate:
        row["rate"], row["rate_unit"] = rate
    return row


def add_speedups(rows: List[dict]) -> List[dict]:
    """speedup_vs_baseline = the group's baseline median / the row's median (same run)."""
    base = {(r["group"], r.get("impl")): r.get("median_s") for r in rows}
    for r in rows:
        b = base.get((r["group"], r.get("baseline")))
        if b and r.get("median_s"):
            r["speedup_vs_baseline"] = b / r["median_s"]
    return rows


def ratio_table(rows: Sequence[dict]) -> str:
    """The after-run summary: per group, each impl's median, rate and speedup over the baseline."""
    if not rows:
        return ""
    w = max(len("group"), *(len(r["group"]) for r in rows))
    lines = [f"{'group':<{w}}  {'impl':<14} {'median ms':>12} {'rate':>18} {'x baseline':>11}"]
    for r in sorted(rows, key=lambda r: (r["group"], r.get("impl") != r.get("baseline"), str(r.get("impl")))):
        rate = f"{r['rate']:.4g} {r['rate_unit']}" if "rate" in r else ""
        sp = r.get("speedup_vs_baseline")
        vs = "(baseline)" if r.get("impl") == r.get("baseline") else ("" if sp is None else f"{sp:.2f}x")
        lines.append(f"{r['group']:<{w}}  {str(r.get('impl', r['name'])):<14} {r['median_s'] * 1e3:12.3f} "
                     f"{rate:>18} {vs:>11}")
    return "\n".join(lines)
