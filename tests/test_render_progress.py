"""digan render's progress: a tqdm bar per frame, counted from the reused frames after --resume,
and a final summary line; --gif alone writes the preview."""
import re

import pytest

from tests.test_render_safety import run

pytest.importorskip("av")

# 12 frames in three segments of 4, lossless: fast, and segments to interrupt between.
ARGS = ["--seeds", "1", "--frames", "12", "--segment-frames", "4", "--codec", "ffv1"]


def test_tqdm_bar_and_summary(tmp_path, capsys):
    out = tmp_path / "a.mkv"
    rc, err = run("render", *ARGS, "-o", out, capsys=capsys)
    assert rc == 0, err
    assert re.search(r"a\.mkv: 100%\|.*\| 12/12 frames \[.*frame/s\]", err), err   # tqdm's bar, in frames
    assert re.search(rf"wrote {re.escape(str(out))}: 12 frames 32x32, [0-9.]+ MiB, 12 rendered in [0-9.]+ s "
                     r"\([0-9.]+ fps\)", err), err


def test_progress_after_resume_counts_only_new_frames(tmp_path, capsys, monkeypatch):
    out = tmp_path / "r.mkv"
    monkeypatch.setenv("DIGAN_TEST_INTERRUPT", "segment:0")          # stop after the first segment
    rc, err = run("render", *ARGS, "-o", out, capsys=capsys)
    assert rc == 130 and "--resume" in err, err
    monkeypatch.delenv("DIGAN_TEST_INTERRUPT")
    rc, err = run("render", *ARGS, "-o", out, "--resume", capsys=capsys)
    assert rc == 0, err
    # The bar starts at the 4 reused frames; the rate and the summary count the 8 rendered now.
    assert "resume: 4 frames already rendered" in err and " 12/12 frames [" in err, err
    assert "12 frames 32x32 (4 reused by --resume)" in err and ", 8 rendered in " in err, err


def test_quiet_prints_no_bar(tmp_path, capsys):
    rc, err = run("render", *ARGS, "-q", "-o", tmp_path / "q.mkv", capsys=capsys)
    assert rc == 0 and "12/12" not in err and "wrote" not in err, err


def test_gif_alone_writes_the_preview(tmp_path, capsys):
    from digan.images import gif_colour_count
    rc, err = run("render", *ARGS, "--gif", "-o", tmp_path / "g.mkv", capsys=capsys)
    assert rc == 0, err
    assert (tmp_path / "g.preview.png").exists() and (tmp_path / "g.preview.gif").exists()
    assert gif_colour_count(tmp_path / "g.preview.gif") > 16      # a fitted palette, not a handful of colours
