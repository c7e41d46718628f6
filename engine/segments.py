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

Modules: the plan and the stream-copy join are engine/concat.py; the parts folder (locks, manifest,
journal, the opening rules above) is engine/manifest.py's `PartsFolder`; this one writes segments.
"""
from __future__ import annotations

import datetime
import os
import re
import shutil
from typing import Any, Callable, Dict, Iterable, List, Optional

from digan.fsio import fsync_and_hash, fsync_dir, sha256_file
from digan.fsio import remove_file as _remove_partial

from .codecs import EXT_BY_CONTAINER
from .concat import Segment, SegmentError, concat_segments, plan_segments
from .manifest import PartsFolder, ResumeError, recorded_backends, remove_segment  # noqa: F401 - public names
from .sink import PngSink, SinkConfigError, SinkSpec, libavcodec_versions, make_spec, open_spec


class SegmentedWriter(PartsFolder):
    """Writes one video as segments, resumably.  Typical use::

        with SegmentedWriter("out.mp4", request_hash, total_frames=256, width=W, height=H, fps=24,
                             resume=args.resume) as w:
            for seg in w.pending_segments():
                w.write_segment(seg.index, frames_for(seg.start, seg.end))   # iterable of (H, W, 3)
            path = w.finalize()

    Everything is checked in the constructor before any frame is made (sink settings as in
    `engine.sink.make_spec`, pix_fmt included, segment length, gop dividing it, the parts folder
    and its lock; the folder's rules are `engine.manifest.PartsFolder`'s).
    The writer holds the parts folder's lock until `finalize` or `close` (or until it is garbage
    collected); leaving the `with` block closes it."""

    def __init__(self, out_path, request_hash: str, total_frames: int, width: int, height: int, fps,
                 codec: str = "libx264", crf: Optional[int] = None, preset: Optional[str] = "medium",
                 gop: Optional[int] = None, backend: str = "auto", segment_frames: int = 64,
                 resume: bool = False, queue_size: int = 8, input_format: str = "rgb24", rank: int = 0,
                 world_size: int = 1, keep_parts: bool = False, overwrite: bool = False,
                 replace_output: bool = True, pix_fmt: Optional[str] = None):
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
        spec = make_spec(out_path, width, height, fps, codec, crf, preset, gop, backend, queue_size, input_format,
                         pix_fmt=pix_fmt)
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
        self.ext = "" if self.png else EXT_BY_CONTAINER[spec.container]
        self.segments = plan_segments(total_frames, segment_frames)
        self.rendered: List[int] = []  # segments written by this object, in order (for logs and tests)
        self.reencode: List[int] = []  # finished segments of another encoder build, rendered again
        self._encoder = f"{spec.backend} libavcodec {libavcodec_versions().get(spec.backend, '?')}"
        self._done: Dict[int, Dict[str, Any]] = {}
        self._held: List[Any] = []  # open lock files held for the writer's life
        self._open_parts(resume, overwrite)

    # -- public ---------------------------------------------------------------------------

    def pending_segments(self) -> List[Segment]:
        """This rank's segments still to render, in order."""
        return [s for s in self.my_segments() if s.index not in self._done]

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
            remove_segment(tmp)
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
            remove_segment(final)  # a re-render of a finished segment (a folder cannot be replaced)
            os.replace(tmp, final)
            fsync_dir(self.parts_dir)
        except BaseException:
            if sink is not None:
                sink.abort()
            remove_segment(tmp)
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
        except Exception:
            pass

    def _finish(self) -> None:
        if not self.keep_parts:
            shutil.rmtree(self.parts_dir, ignore_errors=True)
        self._release()


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
