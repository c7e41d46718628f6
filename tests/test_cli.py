"""The `digan` command end to end: outputs, resume after kill -9, bad requests, bounded memory."""
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.renderer import Renderer
from engine.request import RenderRequest
from tests.conftest import REPO, saved_checkpoint

av = pytest.importorskip("av")


def run_cli(*args, check=True, timeout=300, **kw):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-m", "engine.cli", *map(str, args)], capture_output=True, text=True,
                         env=env, timeout=timeout, cwd=REPO, **kw)
    if check and out.returncode != 0:
        raise AssertionError(f"digan {' '.join(map(str, args))} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return out


def count_frames(path) -> int:
    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(video=0))


def decode(path):
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(s)]
        return np.stack(frames), s


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return saved_checkpoint(tmp_path_factory, "tiny-64", 11)


def test_render_ffv1_equals_renderer_frames(ckpt, tmp_path):
    path, G = ckpt
    out = tmp_path / "v.mkv"
    res = run_cli("render", "-c", path, "--seeds", "3", "--frames", "10", "--fps", "12", "--codec", "ffv1",
                  "--segment-frames", "4", "--output", out, "--preview")
    assert "10/10 frames" in res.stderr
    frames, stream = decode(out)
    assert frames.shape == (10, 64, 64, 3)
    assert stream.average_rate == 12
    ref = torch.stack([f for _, _, f in Renderer(G, RenderRequest(seeds=[3], frames=10)).frames()]).numpy()
    assert np.array_equal(frames, ref)  # lossless and bit-exact through segments + stream copy
    assert (tmp_path / "v.preview.png").stat().st_size > 1000
    assert not (tmp_path / "v.mkv.parts").exists() or not any((tmp_path / "v.mkv.parts").glob("*.tmp"))


@pytest.mark.slow   # ~90 s shared: x264 renders (the fast loop renders in test_render_ffv1_equals_renderer_frames)
def test_render_x264_tags_and_quality(ckpt, tmp_path):
    path, G = ckpt
    out = tmp_path / "v.mp4"
    run_cli("render", "-c", path, "--seeds", "5", "--frames", "9", "--interpolate", "2", "--t-end", "1.5",
            "--output", out, "-q")
    frames, stream = decode(out)
    assert frames.shape == (17, 64, 64, 3)  # (9 - 1) * 2 + 1
    cc = stream.codec_context
    assert cc.name == "h264" and cc.color_primaries == 1 and cc.color_trc == 1 and cc.colorspace == 1
    assert cc.color_range == 1  # limited (tv) range
    req = RenderRequest(seeds=[5], frames=9, interpolate=2, t_end=1.5)
    ref = torch.stack([f for _, _, f in Renderer(G, req).frames()]).numpy().astype(np.float64)
    # Luma PSNR (4:2:0 subsampling alone costs RGB PSNR; see tests/test_sink.py).
    w = np.array([0.2126, 0.7152, 0.0722])
    mse = (((frames.astype(np.float64) - ref) @ w) ** 2).mean()
    assert 10 * np.log10(255 ** 2 / mse) >= 40


@pytest.mark.slow   # ~210 s on the shared 2 cores: grid renders, one file per seed
def test_grid_modes_and_outputs_per_seed(ckpt, tmp_path):
    path, _ = ckpt
    run_cli("render", "-c", path, "--grid", "seeds", "--seeds", "0-3", "--frames", "3", "--codec", "ffv1",
            "--output", tmp_path / "g.mkv", "-q")
    frames, _ = decode(tmp_path / "g.mkv")
    assert frames.shape == (3, 128, 128, 3)
    run_cli("render", "-c", path, "--grid", "motion", "--seeds", "7", "--motion-seeds", "0-2", "--frames", "3",
            "--codec", "ffv1", "--output", tmp_path / "m.mkv", "-q")
    frames, _ = decode(tmp_path / "m.mkv")
    assert frames.shape == (3, 128, 128, 3)
    run_cli("render", "-c", path, "--seeds", "1,2", "--frames", "2", "--codec", "png", "--output",
            tmp_path / "png_{seed}", "-q")
    assert len(list((tmp_path / "png_1").glob("*.png"))) == 2 and len(list((tmp_path / "png_2").glob("*.png"))) == 2


@pytest.mark.parametrize("args,message", [
    (["--frames", "0"], "--frames must be >= 1"),
    (["--frames", "-3"], "--frames must be >= 1"),
    (["--zoom", "1.3"], "base grid"),
    (["--scale", "0"], "--scale must be a positive integer"),
    (["--codec", "vp7"], "codec"),
    (["--fps", "0"], "--fps must be positive"),
    (["--crop", "0,0,500,10"], "does not fit"),
    (["--memory-budget", "lots"], "memory size"),
    (["--memory-budget", "1K"], "too small"),
])
def test_bad_requests_fail_before_any_work(ckpt, tmp_path, args, message):
    path, _ = ckpt
    out = tmp_path / "bad.mp4"
    res = run_cli("render", "-c", path, "--output", out, *args, check=False)
    assert res.returncode == 2, res.stderr
    assert message in res.stderr, res.stderr
    assert not out.exists() and not list(tmp_path.iterdir())


def test_missing_and_corrupt_checkpoints(tmp_path):
    res = run_cli("render", "-c", tmp_path / "nope.safetensors", "--output", tmp_path / "a.mp4", check=False)
    assert res.returncode == 2 and "nope.safetensors" in res.stderr
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    res = run_cli("render", "-c", bad, "--output", tmp_path / "a.mp4", check=False)
    assert res.returncode == 2 and "bad.safetensors" in res.stderr
    assert not (tmp_path / "a.mp4").exists()


def _segment_state(parts: Path):
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in parts.iterdir() if p.name.startswith("seg")
            and not p.name.endswith(".tmp")}


def run_cli_interrupted(*args, interrupt: str):
    """`digan ...` stopped at a deterministic kill point (engine.segments._test_hook): 'segment:K[:SIGNAL]'
    interrupts it right after segment K is finished, whatever the speed of the machine."""
    env = dict(os.environ, PYTHONPATH=str(REPO), DIGAN_TEST_INTERRUPT=interrupt)
    return subprocess.run([sys.executable, "-m", "engine.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=300, cwd=REPO)


@pytest.mark.slow
def test_kill_9_then_resume_equals_uninterrupted(ckpt, tmp_path):
    path, _ = ckpt
    # 8 segments; kill -9 right after the third one is finished (a deterministic kill point)
    common = ["render", "-c", path, "--seeds", "2", "--frames", "128", "--scale", "2", "--codec", "ffv1",
              "--segment-frames", "16"]
    run_cli(*common, "--output", tmp_path / "full.mkv", "-q")
    ref, _ = decode(tmp_path / "full.mkv")
    out = tmp_path / "killed.mkv"
    parts = Path(str(out) + ".parts")
    killed = run_cli_interrupted(*common, "--output", out, "-q", interrupt="segment:2:SIGKILL")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert not out.exists()
    before = _segment_state(parts)
    assert 3 <= len(before) < 30, before
    res = run_cli(*common, "--output", out, "--resume")
    assert f"resume: {16 * len(before)} frames already rendered" in res.stderr
    after = _segment_state(parts) if parts.exists() else {}
    for name, state in before.items():  # finished segments were reused, not re-rendered
        if name in after:
            assert after[name] == state
    got, _ = decode(out)
    assert np.array_equal(got, ref)


@pytest.mark.slow   # ~100 s shared: torchrun start-up of 2 ranks plus a 1-process render
def test_torchrun_ranks_share_segments(ckpt, tmp_path):
    """Two ranks (gloo, CPU) take segments in turn; rank 0 joins: same frames as one process."""
    path, _ = ckpt
    common = ["render", "-c", path, "--seeds", "6", "--frames", "40", "--codec", "ffv1", "--segment-frames", "8", "-q"]
    run_cli(*common, "--output", tmp_path / "one.mkv")
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    # --standalone: torchrun picks a free port itself (a fixed one collides with parallel runs)
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "engine.cli", *map(str, common), "--output", str(tmp_path / "two.mkv")],
                         env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert np.array_equal(decode(tmp_path / "one.mkv")[0], decode(tmp_path / "two.mkv")[0])


def test_resume_refuses_other_request(ckpt, tmp_path):
    path, _ = ckpt
    out = tmp_path / "r.mkv"
    parts = Path(str(out) + ".parts")
    common = ["render", "-c", path, "--frames", "40", "--codec", "ffv1", "--segment-frames", "8", "--output", out]
    killed = run_cli_interrupted(*common, "--seeds", "1", "--scale", "4", "-q", interrupt="segment:0:SIGKILL")
    assert killed.returncode == -signal.SIGKILL and _segment_state(parts), killed.stderr[-3000:]
    res = run_cli(*common, "--seeds", "2", "--scale", "4", "--resume", check=False)
    assert res.returncode == 2 and "request" in res.stderr.lower()


@pytest.mark.slow   # two CLI runs (48 frames at 128x128)
def test_sigint_leaves_no_corrupt_final_file(ckpt, tmp_path):
    path, _ = ckpt
    out = tmp_path / "i.mkv"
    parts = Path(str(out) + ".parts")
    # 3 segments: the kill point stops it after the first, whatever the speed of the machine, so a
    # long render is not needed (it was 400 frames while the test polled for the first segment)
    args = ["render", "-c", path, "--seeds", "4", "--frames", "48", "--scale", "2", "--codec", "ffv1",
            "--segment-frames", "16", "--output", out, "-q"]
    # Ctrl-C (SIGINT sent to itself) right after the first segment is finished
    proc = run_cli_interrupted(*args, interrupt="segment:0:SIGINT")
    err = proc.stderr
    assert proc.returncode == 130, err
    assert "interrupted" in err
    assert not out.exists()
    assert not list(parts.glob("*.tmp"))  # the segment in flight was discarded
    run_cli(*args, "--resume")
    frames, _ = decode(out)
    assert frames.shape[0] == 48


def info_stdout(capsys, *args):
    """stdout of `digan info ...` run in this process (engine.cli.main; what the command runs):
    the info lines only print, so they need no process of their own (~4 s of start-up each)."""
    from engine.cli import main
    capsys.readouterr()
    assert main(["info", *map(str, args)]) == 0
    return capsys.readouterr().out


def test_info_and_convert(ckpt, tmp_path, capsys):
    from engine.cli import main
    from tests.official_pickle import write_network_pickle
    _, G = ckpt
    marker = tmp_path / "module_src_ran"
    pkl = write_network_pickle(tmp_path / "snap.pkl", G=G, G_ema=G, marker=marker)
    run_cli("convert", pkl, tmp_path / "snap.safetensors")
    assert not marker.exists()
    run_cli("render", "-c", pkl, "--frames", "3", "--codec", "ffv1", "--output", tmp_path / "a.mkv", "-q")
    run_cli("render", "-c", tmp_path / "snap.safetensors", "--frames", "3", "--codec", "ffv1", "--output",
                tmp_path / "b.mkv", "-q")
    assert np.array_equal(decode(tmp_path / "a.mkv")[0], decode(tmp_path / "b.mkv")[0])
    assert "64x64" in info_stdout(capsys, "-c", tmp_path / "snap.safetensors")
    out = info_stdout(capsys)
    assert "model: " in out and ("UNTRAINED" in out or "trained demo model" in out)
    out = info_stdout(capsys, "--preset", "digan-128", "--scale", "8")
    assert "architecture only" in out
    # 7.41 GMAC per 128x128 frame split (9.82 unsplit, DESIGN §3) x 8^2
    assert "per frame at 1024x1024: 474.1 GMAC with split conv0 (628.7 GMAC the official way)" in out
    # A small model is not reported as "0.00 GMAC": the prefix follows the size.
    out = info_stdout(capsys, "--preset", "tiny-32")
    assert re.search(r"per frame at 32x32: [1-9][0-9.]* [kM]MAC with split conv0", out), out
    assert "parameters:" in out
    with pytest.raises(SystemExit) as help_exit:           # argparse prints the help and exits 0
        main(["render", "--help"])
    assert help_exit.value.code == 0
    out = capsys.readouterr().out
    assert "--memory-budget" in out and "--resume" in out


BOUNDED = textwrap.dedent("""
    import sys
    from engine.cli import main
    rc = main(sys.argv[1:])
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            print("PEAK", int(line.split()[1]) * 1024)
    sys.exit(rc)
""")


@pytest.mark.slow
def test_long_render_memory_is_bounded(ckpt, tmp_path):
    """Peak RSS of a 2,000-frame 128x128 render within 10% of a 200-frame one (x264 ultrafast).
    At 128x128 a frame is 48 KiB: a frame kept per frame rendered would add ~85 MiB over the
    1,800 extra frames, 2.5x the 10% slack (~33 MiB of the ~330 MiB peak), so it still fails."""
    path, _ = ckpt
    peaks = {}
    for frames in (200, 2000):
        env = dict(os.environ, PYTHONPATH=str(REPO))
        out = subprocess.run([sys.executable, "-c", BOUNDED, "render", "-c", str(path), "--seeds", "1", "--frames",
                              str(frames), "--scale", "2", "--preset", "ultrafast", "--output",
                              str(tmp_path / f"l{frames}.mp4"), "-q"], env=env, cwd=REPO, capture_output=True,
                             text=True, timeout=900)
        assert out.returncode == 0, out.stderr[-2000:]
        peaks[frames] = int(out.stdout.split("PEAK")[-1])
        assert count_frames(tmp_path / f"l{frames}.mp4") == frames
    print({k: f"{v / 2**20:.0f} MiB" for k, v in peaks.items()})
    assert peaks[2000] <= 1.10 * peaks[200]
