"""Where a benchmark ran: device name and git revision, shared by the bench scripts."""
from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Tuple

import torch

REPO = Path(__file__).resolve().parents[1]


def device_name(device: torch.device) -> str:
    """GPU name, or the CPU model and core count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or "cpu"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu} ({os.cpu_count()} cores)"


def git_rev() -> Tuple[str, bool]:
    """(short revision, whether the working tree has changes)."""
    def git(*a):
        return subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    try:
        return git("rev-parse", "--short", "HEAD"), bool(git("status", "--porcelain", "--untracked-files=no"))
    except Exception:
        return "unknown", False
