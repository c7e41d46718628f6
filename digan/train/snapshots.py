"""Snapshot names of `digan train`: network-snapshot-<kimg>.safetensors, and finding the latest one."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

SNAPSHOT_PREFIX = "network-snapshot-"
_OLD_SNAPSHOT_PREFIX = "snapshot-"   # snapshot-<step, 8 digits>.safetensors, written by earlier versions


def snapshot_name(cur_nimg: int) -> str:
    """StyleGAN2-ADA's name, network-snapshot-<kimg, 6 digits>.safetensors with kimg = videos // 1000.

    Two snapshots less than 1 kimg apart share a name: the later replaces the earlier."""
    return f"{SNAPSHOT_PREFIX}{int(cur_nimg) // 1000:06d}.safetensors"


def latest_snapshot(out) -> Optional[Path]:
    """The newest snapshot in `out`: the highest kimg among network-snapshot-*.safetensors, else (a run
    of an earlier version) the highest step among snapshot-*.safetensors; None if there is none."""
    out = Path(out)
    for prefix in (SNAPSHOT_PREFIX, _OLD_SNAPSHOT_PREFIX):   # new names are always the later ones
        found = []
        for p in out.glob(f"{prefix}*.safetensors"):
            number = p.name[len(prefix):-len(".safetensors")]
            if number.isdigit() and p.is_file():
                found.append((int(number), p.name, p))
        if found:
            return max(found)[2]
    return None
