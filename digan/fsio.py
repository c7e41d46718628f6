"""Files written so that a crash never leaves half of one: atomic replace, fsync, sha256.

One copy of these helpers for the whole project (engine/ imports them from here; digan/ must not
import engine/).  Everything is plain `os`; nothing happens at import time.

  atomic_save(path, save)      save(tmp) writes a temporary file beside `path`, one rename publishes it
  write_json_atomic(path, d)   the same for a JSON document, fsync'd (file and folder) before and after
  fsync_dir(path)              make a rename or a new file in `path` durable
  sha256_file(path)            (hex digest, bytes) of a file, or of a folder of files (names + contents)
  fsync_and_hash(path)         fsync a file (or every file of a folder, and the folder) and hash it
  remove_file(path)            unlink a partial output, but only a regular file (never /dev/full)
"""
from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Any, Callable, Dict, Tuple

_CHUNK = 1 << 20  # bytes read per step while hashing: bounded memory whatever the file size


def remove_file(path) -> None:
    """Delete a partial output, but only a regular file (never a device like /dev/full, or a folder)."""
    try:
        if stat.S_ISREG(os.lstat(path).st_mode):
            os.unlink(path)
    except FileNotFoundError:
        pass


def fsync_dir(path) -> None:
    """fsync a folder, so that the renames and new files in it survive a power cut."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _hash_open_file(f) -> Tuple[str, int]:
    h, size = hashlib.sha256(), 0
    for chunk in iter(lambda: f.read(_CHUNK), b""):
        h.update(chunk)
        size += len(chunk)
    return h.hexdigest(), size


def sha256_file(path) -> Tuple[str, int]:
    """(sha256 hex, size) of a file, or of a folder (each file's name and digest, in sorted order)."""
    if os.path.isdir(path):
        h, size = hashlib.sha256(), 0
        for name in sorted(os.listdir(path)):
            digest, n = sha256_file(os.path.join(path, name))
            h.update(f"{name}\0{digest}\0".encode())
            size += n
        return h.hexdigest(), size
    with open(path, "rb") as f:
        return _hash_open_file(f)


def fsync_and_hash(path) -> Tuple[str, int]:
    """fsync `path` (a file, or each file of a folder and the folder) and return (sha256 hex, size)."""
    if os.path.isdir(path):
        for name in os.listdir(path):
            fsync_and_hash(os.path.join(path, name))
        fsync_dir(path)
        return sha256_file(path)
    with open(path, "rb+") as f:
        os.fsync(f.fileno())
        return _hash_open_file(f)


def atomic_save(path, save: Callable[[Path], Any]) -> Path:
    """save(tmp) writes the whole file to `tmp` (beside `path`, same folder: the rename stays on one
    file system); it then replaces `path` in one rename, so a reader never sees half a file.  The
    temporary file is removed whatever happens."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_json_atomic(path, data: Dict[str, Any]) -> None:
    """Write `data` as JSON (indented, sorted keys), durably: the file is fsync'd before the rename
    and the folder after it, so after a crash the old or the new document is there, whole."""
    path = os.fspath(path)
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        remove_file(tmp)
        raise
    fsync_dir(os.path.dirname(path) or ".")
