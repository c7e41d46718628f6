"""Segments of a render: the plan (GOP-aligned frame ranges) and the join of finished segment
files into one video by stream copy (no re-encode).  `engine.segments.SegmentedWriter` writes them.
"""
from __future__ import annotations

from fractions import Fraction
from typing import List, NamedTuple


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

