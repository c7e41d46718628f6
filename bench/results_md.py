"""Rewrite one marked block of bench/RESULTS.md (no torch import: gpu_check uses it on any machine)."""
from __future__ import annotations

from pathlib import Path


def replace_block(md: Path, begin: str, end: str, body: str, new_section: str) -> None:
    """Put `body` between the markers `begin` and `end` of `md`; where the markers are missing,
    append `new_section` (a heading and a paragraph) followed by the marked block."""
    block = f"{begin}\n{body}\n{end}"
    text = md.read_text() if md.exists() else "# Benchmark results\n"
    i = text.find(begin)
    j = text.find(end, i + len(begin)) if i >= 0 else -1
    if i >= 0 and j >= 0:
        text = text[:i] + block + text[j + len(end):]
    else:
        text = text.rstrip() + "\n\n" + new_section + block + "\n"
    md.write_text(text)
