"""A render as GOP-aligned segments: each one an independent file, finished atomically, listed
with its checksum in a manifest, joined at the end by stream copy (no re-encode).

Layout for ``out.mp4``::

    out.mp4.parts/manifest.json        request hash, frame ranges, codec settings, finished segments
                                       (compacted when a render opens the folder)
    out.mp4.parts/journal.jsonl        one line appended (and fsync'd) per finished segment: the cost
                                       per segment does not grow with the number of segments
    out.mp4.parts/seg_00000.mp4        frames [0, 64)   (keyframe first: a fresh encoder per segment)
    out.mp4.parts/seg_00001.mp4.tmp    being written; renamed (after fsync) only when complete
    out.mp4.parts/.render.lock         held (flock) for the life of the render: a second render into
                                       the same output is refused at once
    out.mp4                            written as out.mp4.tmp by `finalize`, fsync'd, renamed

A PNG output (a folder, or codec 'png') works the same way with one folder of frames per segment
(``frames.parts/seg_00003/frame_000192.png`` ...); `finalize` moves the frames into the folder.

Guarantees: an interrupted render (Ctrl-C, SIGTERM, kill -9, full disk) loses at most the segments
in flight; their .tmp files are dropped, finished segments stay, the final file is never partial.
A writer that ends (`close`) without any finished segment removes its parts folder, so a request
that fails early never leaves a folder behind to block the corrected command.

Opening rules (the CLI's ``--resume`` is ``resume=True``, ``--overwrite`` is ``overwrite=True``):
  * another live render holding the folder: refused (`ResumeError`), whatever the flags.
  * a folder this module did not write: refused, whatever the flags.
  * no finished segment there (a render that died before finishing one): simply starts.
  * same request, resume: every finished segment whose file still has the manifest's size and
    sha256, and was encoded by the same encoder build, is kept; the rest are rendered again.
  * same request but other settings (codec, CRF, size, fps, segment length...) with resume:
    refused (the fields are named).
  * finished segments there and neither resume nor overwrite: refused, naming both choices
    (a rerun never silently deletes finished work).  A different request is refused the same way.
  * overwrite: the old segments are deleted and the render starts over.

Ranks: with ``world_size > 1`` rank r renders segments r, r + world_size, ...; each rank holds
``.rank<r>.lock`` and a shared ``.render.lock`` for its life, the journal is appended under a
short file lock, and rank 0 calls `finalize` after a barrier.
"""
from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import re
import shutil
from fractions import Fraction
from typing import Any, Callable, Dict, Iterable, Iterator, List, NamedTuple, Optional

from .sink import PngSink, SinkConfigError, SinkSpec, _remove_partial, libavcodec_versions, make_spec, open_spec

MANIFEST_FORMAT = "digan-segments/2"
READABLE_FORMATS = ("digan-segments/1", MANIFEST_FORMAT)  # /1: no journal
MANIFEST_NAME = "manifest.json"
JOURNAL_NAME = "journal.jsonl"
RENDER_LOCK = ".render.lock"
_OWN_FILE = re.compile(r"^(seg_\d{5}(\.\w+)?(\.tmp)?|manifest\.json(\.\d+\.tmp)?|journal\.jsonl|\.lock|"
                       r"\.render\.lock|\.rank\d+\.lock|\.digan-probe-.*)$")


class ResumeError(ValueError):
    """The parts folder cannot be used for this render; the message says what to do."""


class SegmentError(ValueError):
    """Segments are missing or damaged when joining them; the message says how to continue
    (a ValueError, so the CLI reports it in one line with exit status 2)."""


class Segment(NamedTuple):
    """(index, start, end): frames [start, end)."""
    index: int
    start: int   # first frame (inclusive)
    end: int     # last frame + 1

    @property
    def frames(self) -> int:
        return self.end - self.start


def plan_segments(total_frames: int, segment_frames: int) -> List[Segment]:
    """[0, total) cut every `segment_frames` frames (the last one may be shorter)."""
    return [Segment(i, s, min(s + segment_frames, total_frames))
            for i, s in enumerate(range(0, total_frames, segment_frames))]


# ---------------------------------------------------------------------------------------------
# Files, durably


def _remove_segment(path: str) -> None:
    """Remove a segment file or PNG segment folder (regular files and folders only)."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        _remove_partial(path)


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_and_hash(path: str) -> tuple:
    """fsync `path` (a file, or each file of a folder and the folder) and return (sha256 hex, size)."""
    if os.path.isdir(path):
        for name in os.listdir(path):
            fsync_and_hash(os.path.join(path, name))
        fsync_dir(path)
        return sha256_file(path)
    h = hashlib.sha256()
    size = 0
    with open(path, "rb+") as f:
        os.fsync(f.fileno())
        f.seek(0)
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def sha256_file(path: str) -> tuple:
    """(sha256 hex, size) of a file, or of a PNG segment folder (names and contents, sorted)."""
    if os.path.isdir(path):
        h, size = hashlib.sha256(), 0
        for name in sorted(os.listdir(path)):
            digest, n = sha256_file(os.path.join(path, name))
            h.update(f"{name}\0{digest}\0".encode())
            size += n
        return h.hexdigest(), size
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def write_json_atomic(path: str, data: Dict[str, Any]) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        _remove_partial(tmp)
        raise
    fsync_dir(os.path.dirname(path) or ".")


# ---------------------------------------------------------------------------------------------
# Joining segments by stream copy


def concat_segments(paths: List[str], starts: List[int], counts: List[int], fps: Fraction, out_path: str,
                    container: str) -> int:
    """Stream-copy the segment files, in order, into `out_path` (muxer `container`); returns the
    number of packets (= frames) written.

    Presentation times are offset by each segment's first frame.  Decode times are rebuilt as
    sorted(pts) - D with one D for the whole file (the largest reordering of any segment), which
    keeps them increasing across the joins whatever the container stored (Matroska keeps none)."""
    import av

    # Pass 1: timestamps and codec parameters of every segment, no decoding.
    infos = []
    for path, count in zip(paths, counts):
        with av.open(path) as inp:
            ist = inp.streams.video[0]
            pts = [p.pts for p in inp.demux(ist) if p.size]
            if len(pts) != count or any(p is None for p in pts):
                raise SegmentError(f"segment {path!r} holds {len(pts)} frames with timestamps, expected {count}: "
                                   "render it again (--resume)")
            srt = sorted(pts)
            shift = max(s - p for s, p in zip(srt, pts)) * ist.time_base
            infos.append((ist.time_base, bytes(ist.codec_context.extradata or b""), shift))
    extradata0 = infos[0][1]
    bad = [i for i, info in enumerate(infos) if info[1] != extradata0]
    if bad:
        err = SegmentError(f"segments {bad} were encoded with other codec parameters than segment 0 (a different "
                           "encoder build); they are now marked pending: run the same command with --resume to "
                           "encode them again")
        err.positions = bad  # positions in `paths`, for the caller to mark pending
        raise err
    delay = max(info[2] for info in infos)  # seconds

    # Pass 2: copy packets with shifted timestamps.
    frames = 0
    with av.open(out_path, "w", format=container) as out:
        ost = None
        for path, start, (tb, _, _) in zip(paths, starts, infos):
            with av.open(path) as inp:
                ist = inp.streams.video[0]
                if ost is None:
                    try:
                        ost = out.add_stream_from_template(ist)
                    except av.codec.codec.UnknownCodecError:
                        # PyAV looks for an *encoder* named like the decoder (libdav1d for AV1):
                        # copy the parameters without one.
                        ost = out.add_stream_from_template(ist, opaque=True)
                    tag = ist.codec_context.codec_tag.strip("\x00 ")
                    if container in ("mp4", "mov") and tag:
                        ost.codec_context.codec_tag = tag  # keep e.g. hvc1 (the muxer would pick hev1)
                offset = round(Fraction(start) / fps / tb)
                d = -(-delay // tb) if delay else 0  # ceil, in this segment's time base
                frame_dur = max(1, round(1 / fps / tb))
                packets = [p for p in inp.demux(ist) if p.size]
                srt = sorted(p.pts for p in packets)
                for pkt, s in zip(packets, srt):
                    pkt.pts = pkt.pts + offset
                    pkt.dts = s + offset - d
                    if not pkt.duration:
                        pkt.duration = frame_dur
                    pkt.stream = ost
                    out.mux(pkt)
                    frames += 1
    return frames


# ---------------------------------------------------------------------------------------------


class SegmentedWriter:
    """Writes one video as segments, resumably.  Typical use::

        with SegmentedWriter("out.mp4", request_hash, total_frames=256, width=W, height=H, fps=24,
                             resume=args.resume) as w:
            for seg in w.pending_segments():
                w.write_segment(seg.index, frames_for(seg.start, seg.end))   # iterable of (H, W, 3)
            path = w.finalize()

    Everything is checked in the constructor before any frame is made (sink settings as in
    `engine.sink.make_spec`, segment length, gop dividing it, the parts folder and its lock).
    The writer holds the parts folder's lock until `finalize` or `close` (or until it is garbage
    collected); leaving the `with` block closes it."""

    def __init__(self, out_path, request_hash: str, total_frames: int, width: int, height: int, fps,
                 codec: str = "libx264", crf: Optional[int] = None, preset: Optional[str] = "medium",
                 gop: Optional[int] = None, backend: str = "auto", segment_frames: int = 64,
                 resume: bool = False, queue_size: int = 8, input_format: str = "rgb24", rank: int = 0,
                 world_size: int = 1, keep_parts: bool = False, overwrite: bool = False,
                 replace_output: bool = True):
        out_path = os.fspath(out_path)
        if not isinstance(request_hash, str) or not request_hash:
            raise SinkConfigError("request_hash must be a non-empty string")
        if isinstance(total_frames, bool) or not isinstance(total_frames, int) or total_frames < 1:
            raise SinkConfigError(f"total_frames must be an integer >= 1, got {total_frames!r}")
        if isinstance(segment_frames, bool) or not isinstance(segment_frames, int) or segment_frames < 1:
            raise SinkConfigError(f"segment_frames must be an integer >= 1, got {segment_frames!r}")
        if gop is not None and isinstance(gop, int) and gop >= 1 and segment_frames % gop:
            raise SinkConfigError(f"gop {gop} does not divide segment_frames {segment_frames}: keyframes would not "
                                  f"line up across segments; use a gop that divides it (e.g. {segment_frames})")
        if not (0 <= rank < world_size):
            raise SinkConfigError(f"rank {rank} is outside world_size {world_size}")
        spec = make_spec(out_path, width, height, fps, codec, crf, preset, gop, backend, queue_size, input_format)
        try:
            import av  # noqa: F401 - joining segments uses PyAV
        except ImportError as exc:
            raise SinkConfigError(f"segmented output needs PyAV to join the segments ({exc}): pip install av") from None
        self.png = spec.backend == "png"  # a folder of frame_000000.png ...

        self.out_path = out_path
        self.request_hash = request_hash
        self.total_frames = total_frames
        self.segment_frames = segment_frames
        self.spec: SinkSpec = spec
        self.rank, self.world_size = rank, world_size
        self.keep_parts = keep_parts
        self.replace_output = replace_output  # False: an existing output is an error, even one that
        # appears while this render runs (another process's): the join never clobbers it
        self.parts_dir = out_path.rstrip("/" + os.sep) + ".parts"
        self.ext = "" if self.png else {"mp4": ".mp4", "matroska": ".mkv", "mov": ".mov"}[spec.container]
        self.segments = plan_segments(total_frames, segment_frames)
        self.rendered: List[int] = []  # segments written by this object, in order (for logs and tests)
        self.reencode: List[int] = []  # finished segments of another encoder build, rendered again
        self._encoder = f"{spec.backend} libavcodec {libavcodec_versions().get(spec.backend, '?')}"
        self._done: Dict[int, Dict[str, Any]] = {}
        self._held: List[Any] = []  # open lock files held for the writer's life
        self._open_parts(resume, overwrite)

    # -- public ---------------------------------------------------------------------------

    def my_segments(self) -> List[Segment]:
        return [s for s in self.segments if s.index % self.world_size == self.rank]

    def pending_segments(self) -> List[Segment]:
        """This rank's segments still to render, in order."""
        return [s for s in self.my_segments() if s.index not in self._done]

    def segment_path(self, index: int) -> str:
        """The finished segment: a video file, or a folder of PNGs in PNG mode."""
        return os.path.join(self.parts_dir, f"seg_{index:05d}{self.ext}")

    def write_segment(self, index: int, frames: Iterable) -> Dict[str, Any]:
        """Encode segment `index` from `frames` (an iterable of frames (H, W, 3), or of batches
        (N, H, W, 3)) — exactly `segment.frames` of them.  The file is written as .tmp, fsync'd,
        renamed, then recorded by one line appended to the journal.  On any exception, Ctrl-C
        included, the .tmp file is removed and the exception propagates; finished segments are
        untouched."""
        if not self._held:
            raise SegmentError(f"this writer for {self.out_path!r} is closed")
        if not 0 <= index < len(self.segments):
            raise IndexError(f"segment {index} does not exist (0..{len(self.segments) - 1})")
        seg = self.segments[index]
        final = self.segment_path(index)
        tmp = final + ".tmp"
        sink = None
        try:
            _remove_segment(tmp)
            if self.png:
                sink = PngSink(self.spec.with_path(tmp), start_index=seg.start)
            else:
                sink = open_spec(self.spec.with_path(tmp))
            n = 0
            frame_ndim = len(sink._shape)
            for item in frames:
                batch = item if len(getattr(item, "shape", ())) == frame_ndim + 1 else (item,)
                for frame in batch:
                    if n >= seg.frames:
                        raise ValueError(f"segment {index} holds {seg.frames} frames ({seg.start}..{seg.end - 1}); "
                                         "the iterable gave more")
                    sink.push(frame)
                    n += 1
            if n != seg.frames:
                raise ValueError(f"segment {index} holds {seg.frames} frames ({seg.start}..{seg.end - 1}); "
                                 f"the iterable gave {n}")
            sink.close()
            digest, size = fsync_and_hash(tmp)
            _remove_segment(final)  # a re-render of a finished segment (a folder cannot be replaced)
            os.replace(tmp, final)
            fsync_dir(self.parts_dir)
        except BaseException:
            if sink is not None:
                sink.abort()
            _remove_segment(tmp)
            raise
        record = {"index": index, "start": seg.start, "end": seg.end, "frames": seg.frames,
                  "file": os.path.basename(final), "bytes": size, "sha256": digest, "encoder": self._encoder,
                  "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        self._append_journal({"add": record})
        self._done[index] = record
        self.rendered.append(index)
        _test_hook("segment", index)
        return record

    def run(self, produce: Callable[[int, int], Iterable], finalize: bool = True) -> Optional[str]:
        """Write every pending segment with `produce(start, end)` -> frames, then (rank 0 of a
        single process) join them.  With several ranks call `finalize` on rank 0 after a barrier."""
        for seg in self.pending_segments():
            self.write_segment(seg.index, produce(seg.start, seg.end))
        if finalize and self.world_size == 1:
            return self.finalize()
        return None

    def manifest(self) -> Dict[str, Any]:
        """The folder's manifest with the journal applied (header and every finished segment)."""
        with self._locked():
            return self._read_manifest() or dict(self._header(), segments={})

    def finished_segments(self) -> List[int]:
        """Indices of every finished segment recorded in the folder (all ranks)."""
        with self._locked():
            m = self._read_manifest()
        return sorted(int(k) for k in (m or {}).get("segments", {}))

    def finalize(self) -> str:
        """Check every segment against the manifest, join them by stream copy into the output
        (written as .tmp, fsync'd, renamed), remove the parts folder (unless keep_parts) and
        release the lock."""
        with self._locked():
            m = self._read_manifest()
        done = (m or {}).get("segments", {})
        missing = [s.index for s in self.segments if str(s.index) not in done]
        if missing:
            raise SegmentError(f"{len(missing)} segment(s) not rendered yet: {missing[:10]}"
                               f"{'...' if len(missing) > 10 else ''}; render them (--resume) before joining")
        damaged = []
        for s in self.segments:
            rec = done[str(s.index)]
            path = self.segment_path(s.index)
            try:
                ok = sha256_file(path) == (rec["sha256"], rec["bytes"])
            except FileNotFoundError:
                ok = False
            if not ok:
                damaged.append(s.index)
        if damaged:
            self._mark_pending(damaged)
            raise SegmentError(f"segment(s) {damaged} changed or vanished since they were written (checksum "
                               "mismatch); they are now marked pending: render again with --resume")

        if self.png:
            return self._finalize_png()
        tmp = self.out_path + ".tmp"
        try:
            n = concat_segments([self.segment_path(s.index) for s in self.segments],
                                [s.start for s in self.segments], [s.frames for s in self.segments],
                                self.spec.fps, tmp, self.spec.container)
            if n != self.total_frames:
                raise SegmentError(f"joined {n} frames, expected {self.total_frames}")
            fsync_and_hash(tmp)
            if self.replace_output:
                os.replace(tmp, self.out_path)
            else:
                try:
                    os.link(tmp, self.out_path)  # atomic, and fails instead of replacing
                except FileExistsError:
                    raise SegmentError(f"{self.out_path} appeared while this render ran (another process wrote "
                                       "it): the finished segments stay; pass -y/--overwrite and --resume to "
                                       "replace it") from None
                os.unlink(tmp)
            fsync_dir(os.path.dirname(os.path.abspath(self.out_path)))
        except SegmentError as exc:
            _remove_partial(tmp)
            if getattr(exc, "positions", None):
                self._mark_pending([self.segments[i].index for i in exc.positions])
            raise
        except BaseException:
            _remove_partial(tmp)
            raise
        self._finish()
        return self.out_path

    def _finalize_png(self) -> str:
        """Move every frame into the output folder (each move atomic), then drop the parts."""
        os.makedirs(self.out_path, exist_ok=True)
        if not self.replace_output and any(n.endswith(".png") for n in os.listdir(self.out_path)):
            raise SegmentError(f"{self.out_path} got PNG frames while this render ran (another process wrote "
                               "them): the finished segments stay; pass -y/--overwrite and --resume to replace them")
        for name in os.listdir(self.out_path):  # frames of an earlier render (overwritten on purpose)
            if re.match(r"^frame_\d{6}\.png$", name):
                _remove_partial(os.path.join(self.out_path, name))
        moved = 0
        for s in self.segments:
            src = self.segment_path(s.index)
            for name in sorted(os.listdir(src)):
                os.replace(os.path.join(src, name), os.path.join(self.out_path, name))
                moved += 1
        fsync_dir(self.out_path)
        if moved != self.total_frames:
            raise SegmentError(f"moved {moved} frames into {self.out_path!r}, expected {self.total_frames}")
        self._finish()
        return self.out_path

    def close(self) -> None:
        """Release the folder's lock.  A folder in which no segment was ever finished is removed
        (it holds nothing worth resuming, and would only block the next command)."""
        if not self._held:
            return
        try:
            if self.world_size == 1 and os.path.isdir(self.parts_dir) and not self.keep_parts:
                try:
                    empty = not self.finished_segments()
                except ResumeError:
                    empty = False
                if empty:
                    shutil.rmtree(self.parts_dir, ignore_errors=True)
        finally:
            self._release()

    def __enter__(self) -> "SegmentedWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:  # a dropped writer must not keep the folder locked
        try:
            self._release()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    # -- parts folder, lock and manifest --------------------------------------------------

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

    def _finish(self) -> None:
        if not self.keep_parts:
            shutil.rmtree(self.parts_dir, ignore_errors=True)
        self._release()

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
                self.png and os.path.isdir(self.out_path) and not any(n.endswith(".png") for n in os.listdir(self.out_path))):
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
            _remove_segment(self.segment_path(s.index) + ".tmp")  # leftovers of a killed run
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
                _remove_segment(self.segment_path(i))
        for i in mine:  # files of ours that never reached the manifest
            if i not in self._done:
                _remove_segment(self.segment_path(i))
        m.update(header)
        write_json_atomic(self.manifest_path, m)
        _remove_partial(self.journal_path)  # folded into the manifest just written

    def _wipe(self) -> None:
        for name in os.listdir(self.parts_dir):
            if name.startswith("seg_"):
                _remove_segment(os.path.join(self.parts_dir, name))
        _remove_partial(self.journal_path)

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


def _test_hook(event: str, index: int) -> None:
    """Deterministic kill points for tests: DIGAN_TEST_INTERRUPT='segment:K[:SIGNAL]' interrupts
    the process right after segment K is finished (KeyboardInterrupt, or the named signal sent to
    itself, e.g. SIGTERM)."""
    spec = os.environ.get("DIGAN_TEST_INTERRUPT")
    if not spec:
        return
    parts = spec.split(":")
    if parts[0] != event or len(parts) < 2 or parts[1] != str(index):
        return
    if len(parts) > 2:
        import signal
        os.kill(os.getpid(), getattr(signal, parts[2]))
        return
    raise KeyboardInterrupt
