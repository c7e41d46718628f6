"""Rank 0's training reports: the console line, log.csv, stats.jsonl (StyleGAN2-ADA's layout),
metrics.jsonl and optional TensorBoard events."""
from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

LOSS_KEYS = ("G_motion", "G_image", "D_motion", "D_image", "R1_motion", "R1_image", "score_real", "score_fake")
CSV_FIELDS = ("step", "kimg", "time_s") + LOSS_KEYS + ("clips_per_s", "sec_per_kimg")
# stats.jsonl / TensorBoard names, in StyleGAN2-ADA's style ('Loss/G/loss', 'Loss/scores/fake', ...)
STATS_NAMES = {"G_motion": "Loss/G/motion", "G_image": "Loss/G/image", "D_motion": "Loss/D/motion",
               "D_image": "Loss/D/image", "R1_motion": "Loss/r1_motion", "R1_image": "Loss/r1_image",
               "score_real": "Loss/scores/real", "score_fake": "Loss/scores/fake"}


def format_row(row) -> str:
    """The console line of a report row: step, kimg, time, the losses present, throughput."""
    parts = [f"step {row['step']:<7d} kimg {row['kimg']:<9.3f} time {row['time_s']:<9.1f}"]
    for k in LOSS_KEYS:
        if row.get(k) is not None:
            parts.append(f"{k} {row[k]:.4f}")
    if row.get("clips_per_s") is not None:
        parts.append(f"clips/s {row['clips_per_s']:.1f} sec/kimg {row['sec_per_kimg']:.1f}")
    return "  ".join(parts)


def _drop_after(path: Path, step: int, step_of: Callable[[str], Optional[int]]) -> List[str]:
    """Lines of a log file up to `step` (a killed run's tail is redone by the resumed run)."""
    if not path.exists():
        return []
    kept = []
    for line in path.read_text().splitlines():
        s = step_of(line)
        if s is not None and s <= step:
            kept.append(line)
    return kept


class ReportWriters:
    """Rank 0's reports in `out`: log.csv, stats.jsonl (one JSON object per report, StyleGAN2-ADA's
    layout: {"Loss/G/motion": {"num", "mean", "std"}, ..., "Progress/kimg": {...}, "timestamp"}),
    metrics.jsonl (snapshot callbacks) and TensorBoard events when torch.utils.tensorboard imports.
    On resume, rows past the current step are dropped first."""

    def __init__(self, out: Path, step: int, tensorboard: bool):
        out.mkdir(parents=True, exist_ok=True)
        self.out = out
        csv_path, self.stats_path = out / "log.csv", out / "stats.jsonl"
        kept = []
        if csv_path.exists():
            with open(csv_path, newline="") as f:
                kept = [r for r in csv.DictReader(f) if r.get("step", "").isdigit() and int(r["step"]) <= step]
        self._csv_file = open(csv_path, "w", newline="")
        self._csv = csv.DictWriter(self._csv_file, fieldnames=CSV_FIELDS)
        self._csv.writeheader()
        for r in kept:
            self._csv.writerow({k: r.get(k, "") for k in CSV_FIELDS})
        self._csv_file.flush()

        def jsonl_step(line: str) -> Optional[int]:
            try:
                return int(json.loads(line)["Progress/step"]["mean"])
            except (ValueError, KeyError, TypeError):
                return None
        kept_lines = _drop_after(self.stats_path, step, jsonl_step)
        self._stats = open(self.stats_path, "w")
        self._stats.write("".join(line + "\n" for line in kept_lines))
        self._stats.flush()
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:   # the tensorboard package is optional
                SummaryWriter = None
            if SummaryWriter is not None:
                self._tb = SummaryWriter(str(out), purge_step=step + 1)

    @staticmethod
    def record(row, spread, resources) -> Dict[str, object]:
        def scalar(v):
            return {"num": 1, "mean": v, "std": 0.0}

        rec: Dict[str, object] = {"Progress/step": scalar(row["step"]), "Progress/kimg": scalar(row["kimg"]),
                                  "Timing/total_sec": scalar(row["time_s"])}
        if row.get("sec_per_kimg") is not None:   # absent during the warm-up steps
            rec["Timing/sec_per_kimg"] = scalar(row["sec_per_kimg"])
            rec["Timing/clips_per_sec"] = scalar(row["clips_per_s"])
        for k in LOSS_KEYS:
            if row.get(k) is not None:
                num, std = spread[k]
                rec[STATS_NAMES[k]] = {"num": num, "mean": row[k], "std": std}
        for k, v in resources.items():
            rec[f"Resources/{k}"] = scalar(round(v, 4))
        rec["timestamp"] = time.time()
        return rec

    def write(self, row, spread, resources) -> None:
        self._csv.writerow({k: ("" if row.get(k) is None else row[k]) for k in CSV_FIELDS})
        self._csv_file.flush()
        rec = self.record(row, spread, resources)
        self._stats.write(json.dumps(rec) + "\n")
        self._stats.flush()
        if self._tb is not None:
            for name, v in rec.items():
                if name != "timestamp" and name != "Progress/step":
                    self._tb.add_scalar(name, v["mean"], global_step=row["step"], walltime=rec["timestamp"])
            self._tb.flush()

    def write_metrics(self, snapshot: Optional[Path], step: int, cur_nimg: int, metrics: Dict[str, float]) -> None:
        rec = {"snapshot": None if snapshot is None else snapshot.name, "step": step, "kimg": cur_nimg / 1000,
               "results": {k: float(v) for k, v in metrics.items()}, "timestamp": time.time()}
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(rec) + "\n")
        if self._tb is not None:
            for k, v in metrics.items():
                self._tb.add_scalar(f"Metrics/{k}", float(v), global_step=step)

    def close(self) -> None:
        self._csv_file.close()
        self._stats.close()
        if self._tb is not None:
            self._tb.close()
