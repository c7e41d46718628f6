"""Segmented rendering: atomic segments, manifest, stream-copy join, resume after kill -9 and
Ctrl-C, refusing foreign folders, clear errors on full disks and unwritable paths."""
import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

av = pytest.importorskip("av", reason="PyAV is needed to join and decode segments (pip install av)")

from engine import segments as seg_mod  # noqa: E402
from engine.segments import ResumeError, SegmentedWriter, SegmentError  # noqa: E402
from engine.sink import SinkConfigError, native_available  # noqa: E402
from tests.video_utils import decode_video, first_mismatch, psnr, synthetic_clip, synthetic_frame  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
H, W, TOTAL, SEG = 48, 64, 36, 8  # five segments of 8 frames and one of 4
# DIGAN_TEST_BACKEND=pyav runs these with the PyAV sink where the native one is built
BACKEND = os.environ.get("DIGAN_TEST_BACKEND") or ("native" if native_available() else "pyav")


@pytest.fixture(scope="module")
def clip():
    return synthetic_clip(TOTAL, H, W)


def writer(out, request="req-A", **kw):
    args = dict(total_frames=TOTAL, width=W, height=H, fps=24, codec="ffv1", segment_frames=SEG, backend=BACKEND)
    args.update(kw)
    return SegmentedWriter(str(out), request, **args)


def parts_files(out):
    parts = Path(str(out) + ".parts")
    return sorted(os.listdir(parts)) if parts.exists() else []


def test_ffv1_segments_equal_single_pass(tmp_path, clip):
    from engine.sink import open_sink
    single = tmp_path / "single.mkv"
    with open_sink(single, W, H, 24, codec="ffv1", backend=BACKEND) as s:
        s.push_batch(clip)
    w = writer(tmp_path / "seg.mkv", keep_parts=True)
    assert [(s.start, s.end) for s in w.pending_segments()] == [(0, 8), (8, 16), (16, 24), (24, 32), (32, 36)]
    out = w.run(lambda a, b: clip[a:b])
    d, ref = decode_video(out), decode_video(single)
    assert d.frames.shape == (TOTAL, H, W, 3) and d.fps == 24
    assert np.array_equal(d.frames, ref.frames), first_mismatch(d.frames, ref.frames)
    assert np.array_equal(d.frames, clip)
    header = json.loads((tmp_path / "seg.mkv.parts" / "manifest.json").read_text())
    assert header["segments"] == {}  # finished segments went to the append-only journal
    journal = (tmp_path / "seg.mkv.parts" / "journal.jsonl").read_text().splitlines()
    assert [json.loads(line)["add"]["index"] for line in journal] == [0, 1, 2, 3, 4]
    m = w.manifest()
    assert m["request_hash"] == "req-A" and m["total_frames"] == TOTAL
    assert m["ranges"][-1] == [32, 36] and m["settings"]["codec"] == "ffv1"
    for i, rec in m["segments"].items():
        path = tmp_path / "seg.mkv.parts" / rec["file"]
        assert seg_mod.sha256_file(str(path)) == (rec["sha256"], rec["bytes"])
        assert rec["frames"] == len(decode_video(path).frames)


@pytest.mark.parametrize("ext", [".mp4", ".mkv", ".mov"])
def test_x264_segments_join_by_stream_copy(tmp_path, clip, ext):
    out = SegmentedWriter(str(tmp_path / f"v{ext}"), "req", TOTAL, W, H, 24, segment_frames=SEG, gop=SEG,
                          backend=BACKEND).run(lambda a, b: clip[a:b])
    d = decode_video(out)
    assert d.frames.shape == (TOTAL, H, W, 3) and d.fps == 24
    assert (d.color_primaries, d.color_trc, d.colorspace, d.color_range) == (1, 1, 1, 1)
    assert d.keyframes == [0, 8, 16, 24, 32]
    # in order, each frame closest to its own source
    assert all(psnr(d.frames[i], clip[i]) > psnr(d.frames[i], clip[i + 1]) + 3 for i in range(TOTAL - 1))
    assert not Path(out + ".parts").exists() and not Path(out + ".tmp").exists()


CHILD = r"""
import os, signal, sys
from engine.segments import SegmentedWriter
from tests.video_utils import synthetic_frame
out, backend = sys.argv[1], sys.argv[2]
w = SegmentedWriter(out, "req-A", total_frames=36, width=64, height=48, fps=24, codec="ffv1",
                    segment_frames=8, resume=True, backend=backend, keep_parts=True)
def frames(a, b):
    for i in range(a, b):
        if i == 20:  # the kill point: segment 2 (frames 16..23) is open and half written
            os.kill(os.getpid(), signal.SIGKILL)
        yield synthetic_frame(i, 48, 64)
for seg in w.pending_segments():
    w.write_segment(seg.index, frames(seg.start, seg.end))
    print("done", seg.index, flush=True)
"""


def test_kill9_then_resume(tmp_path, clip):
    out = tmp_path / "r.mkv"
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    # The child SIGKILLs itself while writing segment 2 (a deterministic point: no cleanup runs).
    child = subprocess.run([sys.executable, "-c", CHILD, str(out), BACKEND], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=300)
    assert child.returncode == -signal.SIGKILL, f"child was not killed: {child.stderr}"
    assert child.stdout.split() == ["done", "0", "done", "1"], child.stderr
    parts = Path(str(out) + ".parts")
    finished = {i: parts / f"seg_{i:05d}.mkv" for i in (0, 1)}
    before = {i: (p.stat().st_ino, p.stat().st_mtime_ns) for i, p in finished.items()}
    assert not out.exists()
    assert (parts / "seg_00002.mkv.tmp").exists()  # killed mid-segment

    w = writer(out, resume=True, keep_parts=True)
    pending = [s.index for s in w.pending_segments()]
    assert pending[:1] == [2] and 0 not in pending and 1 not in pending
    assert not any(n.endswith(".tmp") for n in parts_files(out))  # the killed segment's partial file
    w.run(lambda a, b: (synthetic_frame(i, H, W) for i in range(a, b)))
    assert w.rendered == pending
    assert {i: (p.stat().st_ino, p.stat().st_mtime_ns) for i, p in finished.items()} == before
    d = decode_video(out)
    assert np.array_equal(d.frames, clip), first_mismatch(d.frames, clip)


def test_other_request_is_refused(tmp_path, clip):
    w = writer(tmp_path / "o.mkv")
    w.write_segment(0, clip[:SEG])
    w.close()
    for resume in (True, False):
        with pytest.raises(ResumeError, match="different render.*delete that folder, pass --overwrite"):
            writer(tmp_path / "o.mkv", request="req-B", resume=resume)
    assert "seg_00000.mkv" in parts_files(tmp_path / "o.mkv")
    w = writer(tmp_path / "o.mkv", request="req-B", overwrite=True)  # replaces the other render
    assert len(w.pending_segments()) == 5 and "seg_00000.mkv" not in parts_files(tmp_path / "o.mkv")


def test_resume_with_other_settings_is_refused(tmp_path, clip):
    writer(tmp_path / "s.mp4", codec="libx264").write_segment(0, clip[:SEG])
    with pytest.raises(ResumeError, match=r"crf: 18 -> 22"):
        writer(tmp_path / "s.mp4", codec="libx264", crf=22, resume=True)
    with pytest.raises(ResumeError, match="--resume to continue it, or with --overwrite"):
        writer(tmp_path / "s.mp4", codec="libx264", crf=22)  # neither flag: never deletes finished work
    w = writer(tmp_path / "s.mp4", codec="libx264", crf=22, overwrite=True)  # starts over
    assert len(w.pending_segments()) == 5
    assert parts_files(tmp_path / "s.mp4") == [".lock", ".render.lock", "manifest.json"]


def test_same_request_without_resume_is_refused_overwrite_starts_over(tmp_path, clip):
    writer(tmp_path / "a.mkv").write_segment(0, clip[:SEG])
    assert len(writer(tmp_path / "a.mkv", resume=True).pending_segments()) == 4
    with pytest.raises(ResumeError, match="1 finished segment.*--resume.*--overwrite"):
        writer(tmp_path / "a.mkv")
    assert "seg_00000.mkv" in parts_files(tmp_path / "a.mkv")
    assert len(writer(tmp_path / "a.mkv", overwrite=True).pending_segments()) == 5
    assert "seg_00000.mkv" not in parts_files(tmp_path / "a.mkv")


def test_foreign_folder_is_refused(tmp_path):
    parts = tmp_path / "f.mkv.parts"
    parts.mkdir()
    (parts / "holiday.jpg").write_bytes(b"x")
    with pytest.raises(ResumeError, match="not a segment folder"):
        writer(tmp_path / "f.mkv", resume=True)


def test_keyboard_interrupt_mid_segment(tmp_path, clip):
    out = tmp_path / "k.mkv"
    w = writer(out)
    w.write_segment(0, clip[:SEG])

    def interrupted():
        yield from clip[SEG:SEG + 3]
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        w.write_segment(1, interrupted())
    assert parts_files(out) == [".lock", ".render.lock", "journal.jsonl", "manifest.json", "seg_00000.mkv"]
    assert not out.exists() and not Path(str(out) + ".tmp").exists()
    assert [s.index for s in w.pending_segments()] == [1, 2, 3, 4]
    assert np.array_equal(decode_video(w.run(lambda a, b: clip[a:b])).frames, clip)


def test_full_disk_keeps_finished_segments(tmp_path, clip, monkeypatch):
    out = tmp_path / "d.mkv"
    w = writer(out)
    w.write_segment(0, clip[:SEG])
    real_open = seg_mod.open_spec

    def full_disk(spec):  # the sink's writes fail like a full disk after two frames
        sink = real_open(spec)
        push = sink.push

        def failing(frame):
            if sink.frames_written == 2:
                raise OSError(errno.ENOSPC, "writing a packet: No space left on device", spec.path)
            push(frame)
        sink.push = failing
        return sink

    monkeypatch.setattr(seg_mod, "open_spec", full_disk)
    with pytest.raises(OSError) as info:
        w.write_segment(1, clip[SEG:2 * SEG])
    assert info.value.errno == errno.ENOSPC and "seg_00001" in info.value.filename
    assert parts_files(out) == [".lock", ".render.lock", "journal.jsonl", "manifest.json", "seg_00000.mkv"]
    monkeypatch.undo()
    w.close()
    w2 = writer(out, resume=True)
    assert [s.index for s in w2.pending_segments()] == [1, 2, 3, 4]
    assert np.array_equal(decode_video(w2.run(lambda a, b: clip[a:b])).frames, clip)


def test_unwritable_output_fails_before_any_work(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OSError, match="cannot write output files") as info:
        writer(blocker / "v.mkv")
    assert str(blocker) in info.value.filename


def test_damaged_segment_is_caught_and_rerendered(tmp_path, clip):
    out = tmp_path / "x.mkv"
    w = writer(out, keep_parts=True)
    for s in w.pending_segments():
        w.write_segment(s.index, clip[s.start:s.end])
    seg2 = Path(str(out) + ".parts") / "seg_00002.mkv"
    data = bytearray(seg2.read_bytes())
    data[-20] ^= 0xFF
    seg2.write_bytes(bytes(data))
    with pytest.raises(SegmentError, match=r"\[2\] changed"):
        w.finalize()
    assert not out.exists()
    w.close()
    w2 = writer(out, resume=True)
    assert [s.index for s in w2.pending_segments()] == [2]
    assert np.array_equal(decode_video(w2.run(lambda a, b: clip[a:b])).frames, clip)


def test_png_segments(tmp_path, clip):
    out = str(tmp_path / "frames") + "/"
    w = writer(out, codec="png")
    assert [(i, a, b) for i, a, b in w.pending_segments()][-1] == (4, 32, 36)  # plain tuples too
    w.write_segment(0, clip[:SEG])
    w.close()
    w = writer(out, codec="png", resume=True)
    assert w.run(lambda a, b: clip[a:b]) == out and w.rendered == [1, 2, 3, 4]
    names = sorted(os.listdir(out))
    assert names == [f"frame_{i:06d}.png" for i in range(TOTAL)]
    for i in (0, 9, 35):
        with av.open(os.path.join(out, names[i])) as c:
            assert np.array_equal(next(c.decode(video=0)).to_ndarray(format="rgb24"), clip[i])
    assert not Path(str(tmp_path / "frames.parts")).exists()


def test_bad_segment_requests(tmp_path, clip):
    with pytest.raises(SinkConfigError, match="gop 3 does not divide segment_frames 8"):
        writer(tmp_path / "g.mp4", codec="libx264", gop=3)
    w = writer(tmp_path / "c.mkv")
    with pytest.raises(ValueError, match="holds 8 frames.*gave 5"):
        w.write_segment(0, clip[:5])
    with pytest.raises(ValueError, match="gave more"):
        w.write_segment(0, clip[:9])
    with pytest.raises(SegmentError, match="not rendered yet"):
        w.finalize()
    assert parts_files(tmp_path / "c.mkv") == [".lock", ".render.lock", "manifest.json"]
    w.close()  # no segment was ever finished: the folder goes
    assert not Path(str(tmp_path / "c.mkv") + ".parts").exists()


def test_output_appearing_meanwhile_is_not_clobbered(tmp_path, clip):
    """replace_output=False (the CLI without -y): an output written by someone else while this
    render ran is kept, the join fails naming -y, and the finished segments stay for --resume."""
    out = tmp_path / "n.mkv"
    w = writer(out, replace_output=False)
    for s in w.pending_segments():
        w.write_segment(s.index, clip[s.start:s.end])
    out.write_bytes(b"someone else's")
    with pytest.raises(SegmentError, match="appeared while this render ran.*-y/--overwrite"):
        w.finalize()
    assert out.read_bytes() == b"someone else's" and not Path(str(out) + ".tmp").exists()
    w.close()
    with pytest.raises(ResumeError, match="already exists"):
        writer(out, resume=True, replace_output=False)
    w = writer(out, resume=True)  # replace_output=True (-y): reuses every segment
    assert w.pending_segments() == [] and np.array_equal(decode_video(w.finalize()).frames, clip)
