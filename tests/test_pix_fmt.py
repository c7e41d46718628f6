"""--pix-fmt (issue 12): each accepted pixel format is what the file stores, the fuller formats keep
more of the source, refusals name what the codec takes, and a --resume never mixes formats."""
import os

import numpy as np
import pytest

av = pytest.importorskip("av", reason="PyAV is needed to decode the outputs (pip install av)")

from engine.cli import main  # noqa: E402
from engine.segments import ResumeError, SegmentedWriter  # noqa: E402
from engine.sink import SinkConfigError, available_codecs, make_spec, native_available, open_sink  # noqa: E402
from tests.video_utils import first_mismatch, psnr  # noqa: E402

needs_native = pytest.mark.skipif(not native_available(), reason="engine._framestream is not built")
BACKENDS = [pytest.param("native", marks=needs_native), "pyav"]
H, W, T = 64, 64, 4


def colour_edges(n: int = T) -> np.ndarray:
    """(n, H, W, 3) uint8: ramps in R and G, and a blue checkerboard of 4-pixel squares, so chroma
    changes sharply between neighbouring pixels (what 4:2:0 subsampling loses)."""
    y, x = np.mgrid[0:H, 0:W]
    return np.stack([np.stack([(x * 4 + t * 9) % 256, (y * 4) % 256, ((x // 4 + y // 4) % 2) * 255], -1)
                     for t in range(n)]).astype(np.uint8)


def encode(path, frames, backend, **kw):
    with open_sink(path, W, H, 8, backend=backend, **kw) as s:
        for f in frames:
            s.push(f)
    return path


def decode(path):
    """(stored pix_fmt, frames (N, H, W, 3) RGB): YUV converted back with the BT.709 limited-range
    matrix the file is tagged with (not a decoder's guess)."""
    with av.open(str(path)) as c:
        st = c.streams.video[0]
        out = []
        for f in c.decode(st):
            if f.format.name.startswith("yuv"):
                f = f.reformat(format="rgb24", src_colorspace="ITU709", src_color_range="MPEG",
                               dst_color_range="JPEG")
            out.append(f.to_ndarray(format="rgb24"))
        return st.codec_context.pix_fmt, np.stack(out)


CASES = [  # codec, --pix-fmt, extension, pix_fmt stored in the file
    ("libx264", "yuv420p", ".mp4", "yuv420p"),
    ("libx264", "yuv444p", ".mp4", "yuv444p"),
    ("libx265", "yuv420p", ".mp4", "yuv420p"),
    ("libx265", "yuv444p", ".mkv", "yuv444p"),
    ("libsvtav1", "yuv420p", ".mkv", "yuv420p"),
    ("ffv1", "rgb24", ".mkv", "bgr0"),    # ffv1 takes RGB as bgr0 (no packed rgb24, no 8-bit gbrp)
    ("ffv1", "bgr0", ".mkv", "bgr0"),
    ("ffv1", "yuv444p", ".mkv", "yuv444p"),
    ("ffv1", "yuv420p", ".mkv", "yuv420p"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("codec,pix_fmt,ext,stored", CASES)
def test_file_stores_the_pixel_format_asked(tmp_path, backend, codec, pix_fmt, ext, stored):
    if codec not in available_codecs(backend):
        pytest.skip(f"{codec} is not available to {backend} here")
    path = encode(tmp_path / f"v{ext}", colour_edges(), backend, codec=codec, pix_fmt=pix_fmt)
    got, frames = decode(path)
    assert got == stored and frames.shape == (T, H, W, 3)
    with av.open(str(path)) as c:
        cc = c.streams.video[0].codec_context
        tags = (int(cc.color_primaries), int(cc.color_trc), int(cc.colorspace), int(cc.color_range))
    # YUV: BT.709 primaries, transfer and matrix, limited range; RGB: sRGB, full range
    assert tags == ((1, 13, 0, 2) if stored == "bgr0" else (1, 1, 1, 1))


def test_default_pixel_format_is_unchanged():
    """No --pix-fmt stores what it stored before; naming the default gives the same settings, so a
    --resume with or without it continues the same render."""
    for codec, ext, default, stored in [("libx264", ".mp4", "yuv420p", "yuv420p"), ("ffv1", ".mkv", "rgb24", "bgr0")]:
        spec = make_spec(f"v{ext}", W, H, 8, codec=codec, check_folder=False)
        assert spec.pix_fmt == stored
        assert make_spec(f"v{ext}", W, H, 8, codec=codec, check_folder=False, pix_fmt=default).settings() == \
            spec.settings()


@pytest.mark.parametrize("backend", BACKENDS)
def test_full_chroma_and_rgb_keep_more_of_the_source(tmp_path, backend):
    """At CRF 0 (x264 lossless in YUV) only the chroma subsampling and the RGB <-> YUV rounding are
    left.  Measured on colour_edges(): mean |error| yuv420p 10.9, yuv444p 0.31 (max 2: the 8-bit
    YUV rounding), ffv1 rgb24 0 (bit exact).  The bounds (444 under a tenth of 420, rgb exact) leave
    a wide margin either way and fail at once if 4:4:4 were subsampled after all."""
    src = colour_edges()
    err = {}
    for pix_fmt in ("yuv420p", "yuv444p"):
        _, frames = decode(encode(tmp_path / f"{pix_fmt}.mp4", src, backend, crf=0, pix_fmt=pix_fmt))
        err[pix_fmt] = np.abs(frames.astype(np.int16) - src).mean()
    _, rgb = decode(encode(tmp_path / "rgb.mkv", src, backend, codec="ffv1", pix_fmt="rgb24"))
    assert err["yuv444p"] < err["yuv420p"] / 10, err
    assert err["yuv420p"] > 5, err  # the content really does stress chroma
    assert np.array_equal(rgb, src), first_mismatch(rgb, src)


@needs_native
@pytest.mark.parametrize("codec,pix_fmt,ext", [("ffv1", "yuv444p", ".mkv"), ("ffv1", "rgb24", ".mkv"),
                                               ("libx264", "yuv444p", ".mp4"), ("libx265", "yuv444p", ".mp4")])
def test_native_and_pyav_agree(tmp_path, codec, pix_fmt, ext):
    """Same swscale conversion (bilinear, accurate rounding, BT.709) and encoder options on both
    sides.  Lossless ffv1 must decode identically; for x264/x265 two encoder builds may choose
    differently, so the same quality against the source is required (0.5 dB, as in test_sink; the
    files measured identical here, libavcodec 59 native vs PyAV's 62)."""
    src = colour_edges()
    _, a = decode(encode(tmp_path / f"n{ext}", src, "native", codec=codec, pix_fmt=pix_fmt))
    _, b = decode(encode(tmp_path / f"p{ext}", src, "pyav", codec=codec, pix_fmt=pix_fmt))
    if codec == "ffv1":
        assert np.array_equal(a, b), first_mismatch(a, b)
    else:
        assert abs(psnr(a, src) - psnr(b, src)) < 0.5


@pytest.mark.parametrize("codec,pix_fmt,accepted", [
    ("libx264", "rgb24", "yuv420p, yuv444p; for lossless RGB use codec ffv1"),
    ("libsvtav1", "yuv444p", "it takes yuv420p"),
    ("libx265", "yuv422p", "yuv420p, yuv444p"),
    ("ffv1", "gbrp", "rgb24, bgr0, yuv420p, yuv444p"),
])
def test_refusal_names_the_accepted_formats(codec, pix_fmt, accepted):
    with pytest.raises(SinkConfigError, match=f"{pix_fmt}.*{codec}.*{accepted}"):
        make_spec("v.mkv" if codec != "libx264" else "v.mp4", W, H, 8, codec=codec, pix_fmt=pix_fmt,
                  check_folder=False)


def test_png_and_i420_input_refuse_other_formats(tmp_path):
    with pytest.raises(SinkConfigError, match="PNG frames: they are rgb24"):
        make_spec(str(tmp_path / "frames") + "/", W, H, 8, codec="png", pix_fmt="yuv444p")
    with pytest.raises(SinkConfigError, match="I420 input.*yuv420p"):
        make_spec("v.mp4", W, H, 8, input_format="yuv420p", pix_fmt="yuv444p", check_folder=False)


def run(capsys, *args):
    capsys.readouterr()
    try:
        rc = main([str(a) for a in args])
    except SystemExit as exc:
        rc = exc.code
    return rc, capsys.readouterr().err


SMALL = ["--frames", "8", "--segment-frames", "4", "-q"]  # the default model (32x32), two segments


def test_cli_refuses_before_creating_anything(tmp_path, capsys):
    rc, err = run(capsys, "render", *SMALL, "--codec", "av1", "--pix-fmt", "yuv444p", "-o", tmp_path / "a.mkv")
    assert rc == 2 and "does not fit libsvtav1: it takes yuv420p" in err, err
    rc, err = run(capsys, "render", *SMALL, "--codec", "h264", "--pix-fmt", "rgb24", "-o", tmp_path / "b.mp4")
    assert rc == 2 and "yuv420p, yuv444p" in err and "ffv1" in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert os.listdir(tmp_path) == []


def test_cli_resume_with_another_pixel_format_is_refused(tmp_path, capsys, monkeypatch):
    out = tmp_path / "r.mp4"
    args = ["render", *SMALL, "--codec", "h264", "-o", out]
    monkeypatch.setenv("DIGAN_TEST_INTERRUPT", "segment:0")
    rc, err = run(capsys, *args, "--pix-fmt", "yuv444p")
    assert rc == 130, err
    monkeypatch.delenv("DIGAN_TEST_INTERRUPT")
    rc, err = run(capsys, *args, "--pix-fmt", "yuv420p", "--resume")
    assert rc == 2 and "pix_fmt: 'yuv444p' -> 'yuv420p'" in err, err
    assert not out.exists()
    rc, err = run(capsys, *args, "--pix-fmt", "yuv444p", "--resume")
    assert rc == 0, err
    assert decode(out)[0] == "yuv444p"


def test_writer_resume_with_another_pixel_format_is_refused(tmp_path):
    out = str(tmp_path / "w.mkv")
    src = colour_edges(2)
    kw = dict(total_frames=2, width=W, height=H, fps=8, codec="ffv1", segment_frames=1)
    with SegmentedWriter(out, "req", pix_fmt="yuv444p", **kw) as w:
        w.write_segment(0, [src[0]])
    with pytest.raises(ResumeError, match="pix_fmt: 'yuv444p' -> 'bgr0'"):
        SegmentedWriter(out, "req", pix_fmt="rgb24", resume=True, **kw)
    with SegmentedWriter(out, "req", pix_fmt="yuv444p", resume=True, **kw) as w:
        assert [s.index for s in w.pending_segments()] == [1]
        w.write_segment(1, [src[1]])
        w.finalize()
    assert decode(out)[0] == "yuv444p"
