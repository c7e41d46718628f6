"""Names every part of digan.checkpoint shares: the format constants, the errors, small helpers."""
from __future__ import annotations

import os
import re
from typing import Union

PathLike = Union[str, os.PathLike]

FORMAT = "digan-engine"
FORMAT_VERSION = "1"
KINDS = ("generator", "discriminator", "training")
NETWORK_PREFIXES = ("G.", "D.", "G_ema.")


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded: corrupt, truncated, inconsistent or of unknown format."""


class UnsafeCheckpointError(CheckpointError):
    """A pickle that references a global outside the allow-list (it could run code when loaded)."""


def _torch_refusal(e: BaseException) -> str:
    """' (it references the global X)' from torch's weights-only refusal message, if it names one."""
    m = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e)) or re.search(r"GLOBAL ([\w.]+)", str(e))
    return f" (it references the global {m.group(1)})" if m else f" ({_first_line(e)})"


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0] if s else type(e).__name__


def _existing(path: PathLike) -> str:
    p = os.fspath(path)
    if not os.path.exists(p):
        raise FileNotFoundError(f"checkpoint {p} does not exist")
    if os.path.isdir(p):
        raise CheckpointError(f"{p} is a directory, not a checkpoint file")
    return p
