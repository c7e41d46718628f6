"""The parts folder of a segmented render: its locks, its manifest and journal, and the rules for
opening it again (resume, overwrite, refuse).  See `engine.segments` for the layout and the rules.

`PartsFolder` is the part of `engine.segments.SegmentedWriter` that owns the folder; the writer
sets the attributes listed in its docstring before calling `_open_parts`.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from typing import Any, Dict, Iterator, List, Optional

from digan.fsio import fsync_dir, remove_file, sha256_file, write_json_atomic

from .concat import Segment

MANIFEST_FORMAT = "digan-segments/2"
READABLE_FORMATS = ("digan-segments/1", MANIFEST_FORMAT)  # /1: no journal
MANIFEST_NAME = "manifest.json"
JOURNAL_NAME = "journal.jsonl"
RENDER_LOCK = ".render.lock"
_OWN_FILE = re.compile(r"^(seg_\d{5}(\.\w+)?(\.tmp)?|manifest\.json(\.\d+\.tmp)?|journal\.jsonl|\.lock|"
                       r"\.render\.lock|\.rank\d+\.lock|\.digan-probe-.*)$")


class ResumeError(ValueError):
    """The parts folder cannot be used for this render; the message says what to do."""


def remove_segment(path: str) -> None:
    """Remove a segment file or PNG segment folder (regular files and folders only)."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        remove_file(path)


class PartsFolder:
    """The parts folder `parts_dir` of one output, held locked for the object's life.

    Set by the subclass before `_open_parts`: parts_dir, out_path, request_hash, total_frames,
    segment_frames, segments (the plan), spec (its settings() go in the manifest), rank, world_size,
    png, ext (segment file extension, '' for PNG folders), replace_output, _encoder (backend and
    libavcodec version), _done (finished segments kept: index -> record), reencode (kept but of
    another encoder build), _held (lock files held)."""

    def my_segments(self) -> List[Segment]:
        return [s for s in self.segments if s.index % self.world_size == self.rank]

    def segment_path(self, index: int) -> str:
        """The finished segment: a video file, or a folder of PNGs in PNG mode."""
        return os.path.join(self.parts_dir, f"seg_{index:05d}{self.ext}")

    def manifest(self) -> Dict[str, Any]:
        """The folder's manifest with the journal applied (header and every finished segment)."""
        with self._locked():
            return self._read_manifest() or dict(self._header(), segments={})

    def finished_segments(self) -> List[int]:
        """Indices of every finished segment recorded in the folder (all ranks)."""
        with self._locked():
            m = self._read_manifest()
        return sorted(int(k) for k in (m or {}).get("segments", {}))


    @property
    def manifest_path(self) -> str:
        return os.path.join(self.parts_dir, MANIFEST_NAME)

    @property
    def journal_path(self) -> str:
        return os.path.join(self.parts_dir, JOURNAL_NAME)

    def _header(self) -> Dict[str, Any]:
        return {"format": MANIFEST_FORMAT, "request_hash": self.request_hash, "total_frames": self.total_frames,
                "segment_frames": self.segment_frames, "settings": self.spec.settings(),
                "ranges": [[s.start, s.end] for s in self.segments]}


    def _release(self) -> None:
        held, self._held = getattr(self, "_held", []), []
        for f in held:
            f.close()  # closing the file drops its flock

    def _hold(self, name: str, shared: bool) -> bool:
        """Take a non-blocking flock on parts_dir/name for the writer's life; False if another
        process holds it.  Retries when the folder was replaced meanwhile (a render finishing
        removes its folder while holding the lock)."""
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: no protection between processes
            self._held.append(open(os.devnull))
            return True
        path = os.path.join(self.parts_dir, name)
        for _ in range(10):
            os.makedirs(self.parts_dir, exist_ok=True)
            f = open(path, "a")
            try:
                fcntl.flock(f.fileno(), (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
            except BlockingIOError:
                f.close()
                return False
            try:
                same = os.stat(path).st_ino == os.fstat(f.fileno()).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self._held.append(f)
                return True
            f.close()  # we locked a file of a folder that is gone: lock the new one
        raise ResumeError(f"{self.parts_dir!r} keeps being replaced by another process: retry")

    def _lock_for_life(self) -> None:
        busy = ResumeError(f"another render is writing into {self.parts_dir!r} right now (it holds the folder's "
                           f"lock): wait for it to finish, or write to another output path")
        if self.world_size == 1:
            if not self._hold(RENDER_LOCK, shared=False):
                raise busy
            return
        if not self._hold(RENDER_LOCK, shared=True) or not self._hold(f".rank{self.rank}.lock", shared=False):
            self._release()
            raise busy

    def _open_parts(self, resume: bool, overwrite: bool) -> None:
        existed = os.path.isdir(self.parts_dir)
        try:
            os.makedirs(self.parts_dir, exist_ok=True)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot create the segment folder: {exc.strerror}", self.parts_dir) from None
        if existed:  # refuse a foreign folder before leaving any file of ours in it
            names = os.listdir(self.parts_dir)
            foreign = sorted(n for n in names if not _OWN_FILE.match(n))
            if foreign and MANIFEST_NAME not in names:
                raise ResumeError(f"{self.parts_dir!r} exists but holds no manifest and other files "
                                  f"({', '.join(foreign[:5])}): it is not a segment folder; move it away "
                                  "or choose another output path")
        try:
            self._lock_for_life()
            with self._locked():
                self._check_and_compact(resume, overwrite)
        except BaseException:
            if not existed and not self._held:
                pass  # another render owns the folder it just made: leave it alone
            elif not existed:
                shutil.rmtree(self.parts_dir, ignore_errors=True)
            self._release()
            raise

    def _check_and_compact(self, resume: bool, overwrite: bool) -> None:
        if not self.replace_output and self.rank == 0 and os.path.lexists(self.out_path) and not (
                self.png and os.path.isdir(self.out_path)
                and not any(n.endswith(".png") for n in os.listdir(self.out_path))):
            raise ResumeError(f"{self.out_path} already exists: pass -y/--overwrite to replace it, or choose "
                              "another output path")
        m = self._read_manifest()
        if m is None:
            foreign = sorted(n for n in os.listdir(self.parts_dir) if not _OWN_FILE.match(n))
            if foreign:
                raise ResumeError(f"{self.parts_dir!r} exists but holds no manifest and other files "
                                  f"({', '.join(foreign[:5])}): it is not a segment folder; move it away "
                                  "or choose another output path")
        mine = {s.index for s in self.my_segments()}
        finished = sorted(int(k) for k in (m or {}).get("segments", {}))
        if self.world_size > 1:  # other ranks of this same run may have finished theirs already
            finished = [i for i in finished if i in mine]
        choices = ("run the same command with --resume to continue it, or with --overwrite to start over")
        if m is not None and m.get("request_hash") != self.request_hash:
            theirs = str(m.get("request_hash"))[:16]
            if finished and not overwrite:
                raise ResumeError(
                    f"{self.parts_dir!r} holds {len(finished)} finished segment(s) of a different render (request "
                    f"{theirs}, this one is {self.request_hash[:16]}): delete that folder, pass --overwrite to "
                    "replace it, or write to another output path")
            self._wipe()
            m = None
        header = self._header()
        if m is not None:
            diff = [k for k in header if k not in ("ranges", "format") and m.get(k) != header[k]]
            if diff and resume and not overwrite:
                fields = []
                for k in diff:
                    if k == "settings":
                        old, new = m.get(k) or {}, header[k]
                        fields += [f"{f}: {old.get(f)!r} -> {new.get(f)!r}" for f in new if old.get(f) != new.get(f)]
                    else:
                        fields.append(f"{k}: {m.get(k)!r} -> {header[k]!r}")
                raise ResumeError(f"cannot resume into {self.parts_dir!r}: same request but other settings "
                                  f"({'; '.join(fields)}); rerun with the original settings, or with --overwrite "
                                  "(instead of --resume) to start over")
            if finished and not resume and not overwrite:
                raise ResumeError(f"{self.parts_dir!r} holds {len(finished)} finished segment(s) of this render: "
                                  f"{choices}")
            if diff or overwrite:  # everything there is obsolete
                self._wipe()
                m = None
        if m is None:
            m = dict(header, segments={})
        for s in self.my_segments():
            remove_segment(self.segment_path(s.index) + ".tmp")  # leftovers of a killed run
        segs = m.setdefault("segments", {})
        for key in list(segs):
            i = int(key)
            if i not in mine:
                continue
            rec = segs[key]
            keep = False
            try:
                keep = sha256_file(self.segment_path(i)) == (rec.get("sha256"), rec.get("bytes"))
            except FileNotFoundError:
                keep = False
            if keep and rec.get("encoder") != self._encoder:
                # Another encoder build (e.g. native, now pyav) writes other codec parameters, and
                # segments with different parameters cannot be joined by stream copy.
                keep = False
                self.reencode.append(i)
            if keep:
                self._done[i] = rec
            else:
                del segs[key]
                remove_segment(self.segment_path(i))
        for i in mine:  # files of ours that never reached the manifest
            if i not in self._done:
                remove_segment(self.segment_path(i))
        m.update(header)
        write_json_atomic(self.manifest_path, m)
        remove_file(self.journal_path)  # folded into the manifest just written

    def _wipe(self) -> None:
        for name in os.listdir(self.parts_dir):
            if name.startswith("seg_"):
                remove_segment(os.path.join(self.parts_dir, name))
        remove_file(self.journal_path)

    def _read_manifest(self) -> Optional[Dict[str, Any]]:
        """The manifest with the journal applied (a torn last line, from a kill mid-append, is
        ignored: its segment is simply rendered again)."""
        try:
            with open(self.manifest_path) as f:
                m = json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise ResumeError(f"cannot read {self.manifest_path!r} ({exc}): delete the parts folder to start "
                              "over") from None
        if not isinstance(m, dict) or m.get("format") not in READABLE_FORMATS:
            raise ResumeError(f"{self.manifest_path!r} is not a {MANIFEST_FORMAT} manifest: delete the parts folder "
                              "or choose another output path")
        segs = m.setdefault("segments", {})
        try:
            with open(self.journal_path) as f:
                lines = f.read().split("\n")
        except FileNotFoundError:
            lines = []
        for line in lines:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and isinstance(entry.get("add"), dict) and "index" in entry["add"]:
                segs[str(entry["add"]["index"])] = entry["add"]
            elif isinstance(entry, dict) and "drop" in entry:
                segs.pop(str(entry["drop"]), None)
        return m

    def _append_journal(self, entry: Dict[str, Any]) -> None:
        """One line, appended and fsync'd: O(1) per segment whatever the number of segments."""
        line = json.dumps(entry, sort_keys=True) + "\n"
        with self._locked():
            new = not os.path.exists(self.journal_path)
            fd = os.open(self.journal_path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                if os.fstat(fd).st_size and not self._ends_with_newline(fd):
                    line = "\n" + line  # after a torn line: keep ours whole
                os.write(fd, line.encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            if new:
                fsync_dir(self.parts_dir)

    @staticmethod
    def _ends_with_newline(fd: int) -> bool:
        size = os.fstat(fd).st_size
        return os.pread(fd, 1, size - 1) == b"\n"

    def _mark_pending(self, indices: List[int]) -> None:
        for i in indices:
            self._append_journal({"drop": i})
            self._done.pop(i, None)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Short exclusive lock on the parts folder (ranks share one manifest and journal)."""
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: single process only
            yield
            return
        with open(os.path.join(self.parts_dir, ".lock"), "a") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)



def recorded_backends(out_path) -> set:
    """Encoder backends ('native', 'pyav', 'png') of the finished segments in `out_path`'s parts
    folder (empty when there is none or it cannot be read): lets a resume with encoder 'auto'
    continue with the encoder that wrote them, so that they join without encoding them again."""
    parts = os.fspath(out_path).rstrip("/" + os.sep) + ".parts"
    recs = []
    try:
        with open(os.path.join(parts, MANIFEST_NAME)) as f:
            recs = list((json.load(f).get("segments") or {}).values())
    except (OSError, ValueError, AttributeError):
        return set()
    try:
        with open(os.path.join(parts, JOURNAL_NAME)) as f:
            for line in f:
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                if isinstance(entry, dict) and isinstance(entry.get("add"), dict):
                    recs.append(entry["add"])
    except OSError:
        pass
    return {str(r.get("encoder", "")).split(" ")[0] for r in recs if isinstance(r, dict)} - {""}

