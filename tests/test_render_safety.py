"""`digan render` never mixes, hangs or loses work (issues 8 and 12).

Every case runs the real command — in process through `engine.cli.main` where that is safe (fast:
no interpreter start), in a subprocess where a signal is involved.  Interruptions happen at
deterministic points: DIGAN_TEST_INTERRUPT='segment:K[:SIGNAL]' stops the render right after
segment K is finished (see engine.segments._test_hook), never after a sleep.
"""
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from digan.checkpoint import save_generator
from engine import segments as seg_mod
from engine.cli import main
from engine.renderer import Renderer
from engine.request import RenderRequest
from engine.segments import SegmentedWriter, SegmentError
from engine.sink import native_available
from tests.conftest import REPO, perturbed_generator, saved_checkpoint

av = pytest.importorskip("av")

# 12 frames in segments of 4: three segments, small enough to render in well under a second.
SMALL = ["--frames", "12", "--segment-frames", "4", "--codec", "ffv1", "-q"]


def decode(path) -> np.ndarray:
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def frames_of(G, **req) -> np.ndarray:
    return torch.stack([f for _, _, f in Renderer(G, RenderRequest(**req)).frames()]).numpy()


def run(*args, capsys=None):
    """In-process `digan ...` -> (exit status, stderr)."""
    if capsys is not None:
        capsys.readouterr()
    try:
        rc = main([str(a) for a in args])
    except SystemExit as exc:  # argparse usage errors
        rc = exc.code
    err = capsys.readouterr().err if capsys is not None else ""
    return rc, err


def run_sub(*args, env=None, timeout=300):
    full = dict(os.environ, PYTHONPATH=str(REPO))
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "engine.cli", *map(str, args)], capture_output=True, text=True,
                          env=full, timeout=timeout, cwd=REPO)


def listing(folder: Path):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return saved_checkpoint(tmp_path_factory, "tiny-32", 21)


@pytest.fixture(scope="module")
def cond_ckpt(tmp_path_factory):
    """A class-conditional tiny model (5 classes)."""
    from digan.config import generator_preset
    from digan.networks import Generator
    torch.manual_seed(5)
    G = Generator(dataclasses.replace(generator_preset("tiny-32"), c_dim=5)).eval().requires_grad_(False)
    path = tmp_path_factory.mktemp("cond") / "cond.safetensors"
    save_generator(G, path)
    return path, G


# ---- the model's identity ----------------------------------------------------------------------

def test_model_fingerprint_is_the_weights_not_the_description(ckpt):
    from engine.render_cmd import model_fingerprint
    _, G = ckpt
    G2 = perturbed_generator("tiny-32", 21)  # the same weights, built again
    assert model_fingerprint(G) == model_fingerprint(G2)
    with torch.no_grad():
        next(G2.parameters()).view(-1)[0] += 1e-3
    assert model_fingerprint(G) != model_fingerprint(G2)


def test_resume_after_the_default_model_was_replaced_never_mixes(tmp_path, monkeypatch, capsys):
    """The default model replaced between a render and its --resume (same description string):
    the resume is refused as a different render, and --overwrite renders the new model only."""
    import digan.default as default
    old, new = perturbed_generator("tiny-32", 1), perturbed_generator("tiny-32", 2)
    current = {"G": old}
    monkeypatch.setattr(default, "default_generator", lambda: (current["G"], "trained demo model (same name)"))
    out = tmp_path / "d.mkv"
    monkeypatch.setenv("DIGAN_TEST_INTERRUPT", "segment:0")
    rc, err = run("render", "--seeds", "3", *SMALL, "-o", out, capsys=capsys)
    assert rc == 130 and "--resume" in err, err
    monkeypatch.delenv("DIGAN_TEST_INTERRUPT")
    current["G"] = new
    rc, err = run("render", "--seeds", "3", *SMALL, "-o", out, "--resume", capsys=capsys)
    assert rc == 2 and "different render" in err and "--overwrite" in err, err
    assert not out.exists()
    rc, err = run("render", "--seeds", "3", *SMALL, "-o", out, "--overwrite", capsys=capsys)
    assert rc == 0, err
    assert np.array_equal(decode(out), frames_of(new, seeds=[3], frames=12))  # ffv1: bit-exact


# ---- one render per output at a time -----------------------------------------------------------

def test_second_render_into_a_busy_output_is_refused(ckpt, tmp_path, capsys):
    path, _ = ckpt
    out = tmp_path / "busy.mkv"
    holder = SegmentedWriter(str(out), "someone-else", total_frames=12, width=32, height=32, fps=16, codec="ffv1",
                             segment_frames=4)
    before = listing(tmp_path)
    rc, err = run("render", "-c", path, *SMALL, "-o", out, capsys=capsys)
    assert rc == 2 and "another render is writing" in err and len(err.strip().splitlines()) == 1, err
    assert listing(tmp_path) == before  # nothing of the first render touched
    for flags in (["--resume"], ["--overwrite"]):  # no flag takes a live render's folder
        rc, err = run("render", "-c", path, *SMALL, "-o", out, *flags, capsys=capsys)
        assert rc == 2 and "another render is writing" in err, err
    holder.close()  # no segment finished: its folder goes, and the output is free
    assert not Path(str(out) + ".parts").exists()
    rc, err = run("render", "-c", path, *SMALL, "-o", out, capsys=capsys)
    assert rc == 0, err


def test_two_renders_started_together(ckpt, tmp_path):
    """Started at the same moment: one renders, the other is refused cleanly (busy, or the output
    already exists) — never both failing, never a traceback."""
    path, G = ckpt
    out = tmp_path / "same.mkv"
    args = [sys.executable, "-m", "engine.cli", "render", "-c", str(path), "--seeds", "4",
            "--frames", "48", "--segment-frames", "4", "--codec", "ffv1", "-q", "-o", str(out)]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    procs = [subprocess.Popen(args, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    for p in procs:
        p.stdout.close()
        p.stderr.close()
    assert sorted(rc for rc, _ in results) == [0, 2], results
    loser = next(err for rc, err in results if rc == 2)
    assert "Traceback" not in loser and len(loser.strip().splitlines()) == 1, loser
    assert "another render is writing" in loser or "already exists" in loser, loser
    assert np.array_equal(decode(out), frames_of(G, seeds=[4], frames=48))


# ---- refused requests leave nothing behind -------------------------------------------------------

@pytest.mark.parametrize("bad,fix", [
    (["--label", "3"], []),                                 # a label for an unconditional model
    (["--codec", "libsvtav1"], ["--codec", "ffv1"]),        # 32x32: SVT-AV1 needs at least 64x64
    (["--codec", "ffv1", "-o", "{out}.mp4"], []),           # ffv1 does not go in .mp4
])
def test_late_refusal_leaves_no_parts_folder(ckpt, tmp_path, capsys, bad, fix):
    path, _ = ckpt
    out = tmp_path / "late.mkv"
    base = ["render", "-c", path, "--frames", "6", "--segment-frames", "4", "-q", "-o", out]
    bad = [a.replace("{out}", str(tmp_path / "late")) for a in bad]
    rc, err = run(*base, *bad, capsys=capsys)
    assert rc == 2 and err.startswith("digan render: error:") and len(err.strip().splitlines()) == 1, err
    assert listing(tmp_path) == []  # not even a parts folder
    rc, err = run(*base, "--codec", "ffv1", *fix, capsys=capsys)  # the corrected command is not blocked
    assert rc == 0, err
    assert decode(out).shape == (6, 32, 32, 3)


def test_failure_before_the_first_segment_removes_the_parts_folder(ckpt, tmp_path, monkeypatch, capsys):
    path, _ = ckpt
    out = tmp_path / "f.mkv"
    real = seg_mod.SegmentedWriter.write_segment

    def failing(self, index, frames):
        raise OSError(28, "No space left on device", self.segment_path(index))
    monkeypatch.setattr(seg_mod.SegmentedWriter, "write_segment", failing)
    rc, err = run("render", "-c", path, *SMALL, "-o", out, capsys=capsys)
    assert rc == 2 and "No space left" in err, err
    assert listing(tmp_path) == []
    monkeypatch.setattr(seg_mod.SegmentedWriter, "write_segment", real)
    rc, err = run("render", "-c", path, *SMALL, "-o", out, capsys=capsys)
    assert rc == 0, err


# ---- the manifest costs the same per segment however long the render ----------------------------

@pytest.mark.parametrize("segments", [3, 300])
def test_manifest_is_append_only(tmp_path, monkeypatch, segments):
    """Finishing a segment appends one journal line and rewrites nothing: the manifest written when
    the folder was opened stays byte-identical, and no whole-file rewrite happens."""
    frame = np.arange(16 * 16 * 3, dtype=np.uint8).reshape(16, 16, 3)  # any non-constant content
    w = SegmentedWriter(str(tmp_path / "a.mkv"), "req", total_frames=segments, width=16, height=16, fps=8,
                        codec="ffv1", segment_frames=1, keep_parts=True)
    parts = Path(w.parts_dir)
    header = (parts / "manifest.json").read_bytes()
    rewrites = []
    # the manifest's writer, where it lives now
    monkeypatch.setattr("engine.manifest.write_json_atomic", lambda *a, **k: rewrites.append(a))
    for s in w.pending_segments()[:3]:
        w.write_segment(s.index, [frame])
    assert rewrites == [] and (parts / "manifest.json").read_bytes() == header
    lines = (parts / "journal.jsonl").read_text().splitlines()
    assert [json.loads(line)["add"]["index"] for line in lines] == [0, 1, 2]
    # one line per segment, the same length whatever the total (a single record, no table)
    assert max(map(len, lines)) < 400
    w.close()


def test_torn_journal_line_is_ignored(tmp_path):
    frame = np.arange(16 * 16 * 3, dtype=np.uint8).reshape(16, 16, 3)
    out = tmp_path / "t.mkv"
    w = SegmentedWriter(str(out), "req", total_frames=3, width=16, height=16, fps=8, codec="ffv1", segment_frames=1)
    w.write_segment(0, [frame])
    w.close()
    journal = Path(w.parts_dir) / "journal.jsonl"
    with open(journal, "a") as f:
        f.write('{"add": {"index": 1, "sha')  # a kill in the middle of an append
    w = SegmentedWriter(str(out), "req", total_frames=3, width=16, height=16, fps=8, codec="ffv1", segment_frames=1,
                        resume=True)
    assert [s.index for s in w.pending_segments()] == [1, 2]
    w.run(lambda a, b: [frame] * (b - a))
    assert decode(out).shape == (3, 16, 16, 3)


# ---- bad input: one line, exit 2, nothing written ------------------------------------------------

BAD = [
    (["--psi", "nan"], "--psi/--trunc must be a finite number"),
    (["--psi", "inf"], "--psi/--trunc must be a finite number"),
    (["--trunc=-inf"], "--psi/--trunc must be a finite number"),
    (["--memory-budget", "inf"], "--memory-budget"),
    (["--zoom", "inf"], "--zoom must be a finite number"),
    (["--zoom", "nan"], "--zoom must be a finite number"),
    (["--interpolate", "1e9"], "at most 10,000,000"),
    (["--frames", "100000000"], "at most 10,000,000"),
    (["--interpolate", "1.5"], "--interpolate"),
    (["--device", "foo"], "--device 'foo' is not a device"),
    (["--device", "tpu"], "--device"),
    (["--seeds", "x"], "--seeds wants integers"),
    (["--seeds", "3-1"], "--seeds: the range '3-1' is empty"),
    (["--seeds", "0-1000000000000"], "--seeds '0-1000000000000' gives more than"),
    (["--motion-seeds", "a"], "--motion-seeds wants integers"),
    (["--seeds", "0,1", "--motion-seeds", "1,2,3"], "--motion-seeds"),
    (["--label", "1,x"], "--label/--class wants integers"),
    (["--label", "2"], "--label/--class: this model is unconditional"),
    (["--fps", "inf"], "--fps must be a finite number"),
    (["-o", "{tmp}/v.avi"], "no encoder here writes .avi files"),
    (["-o", "{tmp}/v.webm", "--codec", "libx264"], "no encoder here writes .webm files"),
    (["-o", "{tmp}/v.gif", "--codec", "ffv1"], "no encoder here writes .gif files"),
    (["-o", "{tmp}/frames", "--codec", "libx264"], "is a folder name"),
    (["-o", "{tmp}/v.gif", "--codec", "png"], "looks like a file"),
    (["--scale", "512"], "refuses frames of 16384x16384"),   # 32 * 512: the encoder's own limit
    (["--scale", "600"], "too large"),
    (["-y", "-n"], "not allowed with argument"),
]


@pytest.mark.parametrize("args,message", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_is_one_line_exit_2(ckpt, tmp_path, capsys, args, message):
    path, _ = ckpt
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    rc, err = run("render", "-c", path, "--frames", "2", "-o", tmp_path / "out.mp4", *args, capsys=capsys)
    assert rc == 2, err
    assert message in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert listing(tmp_path) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_cuda(ckpt, tmp_path, capsys):
    path, _ = ckpt
    rc, err = run("render", "-c", path, "--device", "cuda", "-o", tmp_path / "c.mp4", capsys=capsys)
    assert rc == 2 and "CUDA is not available" in err and len(err.strip().splitlines()) == 1, err
    assert listing(tmp_path) == []


def test_segment_error_is_a_one_line_error(ckpt, tmp_path, capsys, monkeypatch):
    path, _ = ckpt

    def broken(self):
        raise SegmentError("segment(s) [1] changed or vanished since they were written")
    monkeypatch.setattr(seg_mod.SegmentedWriter, "finalize", broken)
    rc, err = run("render", "-c", path, *SMALL, "-o", tmp_path / "s.mkv", capsys=capsys)
    assert rc == 2 and err.startswith("digan render: error: segment(s) [1] changed"), err


@pytest.mark.skipif(not native_available(), reason="needs the native encoder beside PyAV")
def test_resume_native_segments_with_pyav_encoder(ckpt, tmp_path, monkeypatch, capsys):
    """Segments of the native encoder, resumed with --encoder pyav (another libavcodec): they are
    encoded again instead of failing at the join — and every later --resume works too."""
    path, G = ckpt
    out = tmp_path / "mix.mp4"
    common = ["render", "-c", path, "--seeds", "8", "--frames", "12", "--segment-frames", "4", "-q", "-o", out]
    monkeypatch.setenv("DIGAN_TEST_INTERRUPT", "segment:1")
    rc, err = run(*common, "--encoder", "native", capsys=capsys)
    assert rc == 130, err
    monkeypatch.delenv("DIGAN_TEST_INTERRUPT")
    rc, err = run(*common, "--encoder", "pyav", "--resume", capsys=capsys)
    assert rc == 0, err
    assert decode(out).shape == (12, 32, 32, 3)
    rc, err = run(*common, "--encoder", "pyav", "--resume", "-y", capsys=capsys)  # the next resume, too
    assert rc == 0, err


def test_resume_with_encoder_auto_keeps_the_segments_encoder(ckpt, tmp_path, monkeypatch, capsys):
    """PyAV segments resumed with --encoder auto (which would pick native here): the resume goes on
    with PyAV, reusing the finished segments instead of encoding them again."""
    path, G = ckpt
    out = tmp_path / "auto.mkv"
    common = ["render", "-c", path, "--seeds", "8", *SMALL, "-o", out]
    monkeypatch.setenv("DIGAN_TEST_INTERRUPT", "segment:1")
    assert run(*common, "--encoder", "pyav", capsys=capsys)[0] == 130
    monkeypatch.delenv("DIGAN_TEST_INTERRUPT")
    rc, err = run(*[a for a in common if a != "-q"], "--resume", capsys=capsys)
    assert rc == 0, err
    assert "resume: 8 frames already rendered" in err and "another encoder build" not in err, err
    assert np.array_equal(decode(out), frames_of(G, seeds=[8], frames=12))


# ---- interruptions: Ctrl-C and SIGTERM -----------------------------------------------------------

@pytest.mark.parametrize("how,rc_expected", [("segment:1", 130), ("segment:1:SIGTERM", 143),
                                             ("segment:1:SIGINT", 130)])
def test_interrupt_names_resume_and_resume_completes(ckpt, tmp_path, how, rc_expected):
    path, G = ckpt
    out = tmp_path / "i.mkv"
    args = ["render", "-c", path, "--seeds", "9", *SMALL, "-o", out]
    res = run_sub(*args, env={"DIGAN_TEST_INTERRUPT": how})
    assert res.returncode == rc_expected, res.stderr
    assert "Traceback" not in res.stderr and "--resume" in res.stderr, res.stderr
    assert "2 of 3 segments" in res.stderr, res.stderr
    assert not out.exists()
    parts = Path(str(out) + ".parts")
    assert not [p for p in parts.iterdir() if p.name.endswith(".tmp")]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    res = run_sub(*args, "--resume")
    assert res.returncode == 0, res.stderr
    assert np.array_equal(decode(out), frames_of(G, seeds=[9], frames=12))


def test_rerun_without_resume_keeps_finished_segments(ckpt, tmp_path, monkeypatch, capsys):
    path, G = ckpt
    out = tmp_path / "r.mkv"
    args = ["render", "-c", path, "--seeds", "2", *SMALL, "-o", out]
    monkeypatch.setenv("DIGAN_TEST_INTERRUPT", "segment:1")
    assert run(*args, capsys=capsys)[0] == 130
    monkeypatch.delenv("DIGAN_TEST_INTERRUPT")
    parts = Path(str(out) + ".parts")
    segs = sorted(p.name for p in parts.glob("seg_*"))
    assert segs == ["seg_00000.mkv", "seg_00001.mkv"]
    rc, err = run(*args, capsys=capsys)
    assert rc == 2 and "--resume" in err and "--overwrite" in err and len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in parts.glob("seg_*")) == segs  # nothing deleted
    rc, err = run(*args, "--overwrite", capsys=capsys)
    assert rc == 0, err
    assert np.array_equal(decode(out), frames_of(G, seeds=[2], frames=12))


def test_existing_output_needs_overwrite(ckpt, tmp_path, capsys):
    path, G = ckpt
    out = tmp_path / "o.mkv"
    out.write_bytes(b"precious")
    args = ["render", "-c", path, "--seeds", "1", *SMALL, "-o", out]
    for flags in ([], ["-n"], ["--no-overwrite"], ["--resume"]):
        rc, err = run(*args, *flags, capsys=capsys)
        assert rc == 2 and "already exists" in err and "-y/--overwrite" in err, (flags, err)
        assert out.read_bytes() == b"precious" and listing(tmp_path) == ["o.mkv"]
    rc, err = run(*args, "-y", capsys=capsys)
    assert rc == 0, err
    assert np.array_equal(decode(out), frames_of(G, seeds=[1], frames=12))
    # the contact sheet beside the video is an output too
    (tmp_path / "p.preview.png").write_bytes(b"precious")
    pargs = ["render", "-c", path, "--seeds", "1", *SMALL, "--preview", "-o", tmp_path / "p.mkv"]
    rc, err = run(*pargs, capsys=capsys)
    assert rc == 2 and "p.preview.png already exists" in err, err
    assert (tmp_path / "p.preview.png").read_bytes() == b"precious" and not (tmp_path / "p.mkv").exists()
    assert run(*pargs, "-y", capsys=capsys)[0] == 0
    assert (tmp_path / "p.preview.png").read_bytes() != b"precious"
    # a PNG folder with frames in it counts as an existing output; -y replaces all its frames
    folder = tmp_path / "png"
    assert run("render", "-c", path, "--frames", "5", "-q", "--codec", "png", "-o", folder, capsys=capsys)[0] == 0
    rc, err = run("render", "-c", path, "--frames", "3", "-q", "--codec", "png", "-o", folder, capsys=capsys)
    assert rc == 2 and "already exists" in err, err
    assert run("render", "-c", path, "--frames", "3", "-q", "--codec", "png", "-o", folder, "-y",
               capsys=capsys)[0] == 0
    assert sorted(os.listdir(folder)) == [f"frame_{i:06d}.png" for i in range(3)]


# ---- the official scripts' flag names and ffmpeg's codec names -----------------------------------

def test_official_flag_aliases_give_identical_outputs(cond_ckpt, tmp_path, capsys):
    path, G = cond_ckpt
    ours = ["render", "-c", path, "--psi", "0.7", "--label", "3", "--seeds", "5", *SMALL, "-o", tmp_path / "a.mkv"]
    theirs = ["render", "--network", path, "--trunc", "0.7", "--class", "3", "--seeds", "5", *SMALL,
              "--outdir", tmp_path / "out"]
    assert run(*ours, capsys=capsys)[0] == 0
    rc, err = run(*theirs, capsys=capsys)
    assert rc == 0, err
    a, b = decode(tmp_path / "a.mkv"), decode(tmp_path / "out" / "seed0005.mkv")  # ffv1 goes in .mkv
    assert np.array_equal(a, b) and a.shape == (12, 32, 32, 3)
    ref = frames_of(G, seeds=[5], frames=12, psi=0.7, labels=[3])
    assert np.array_equal(a, ref)


def test_outdir_one_file_per_seed(ckpt, tmp_path, capsys):
    path, _ = ckpt
    rc, err = run("render", "-c", path, "--seeds", "1,12", "--frames", "3", "-q", "--outdir", tmp_path / "d",
                  capsys=capsys)
    assert rc == 0, err
    assert sorted(os.listdir(tmp_path / "d")) == ["seed0001.mp4", "seed0012.mp4"]


@pytest.mark.parametrize("alias,codec", [("h264", "libx264"), ("hevc", "libx265"), ("av1", "libsvtav1"),
                                         ("FFV1", "ffv1")])
def test_ffmpeg_codec_names(ckpt, tmp_path, capsys, alias, codec):
    path, _ = ckpt
    ext = ".mkv" if codec == "ffv1" else ".mp4"
    scale = ["--scale", "2"] if codec == "libsvtav1" else []  # SVT-AV1 wants >= 64x64
    common = ["render", "-c", path, "--seeds", "6", "--frames", "4", "--preset", "ultrafast", "-q", *scale]
    if codec == "ffv1":
        common = [a for a in common if a not in ("--preset", "ultrafast")]
    assert run(*common, "--codec", alias, "-o", tmp_path / f"a{ext}", capsys=capsys)[0] == 0
    assert run(*common, "--codec", codec, "-o", tmp_path / f"b{ext}", capsys=capsys)[0] == 0
    # the same encoder with the same options: the same decoded frames
    assert np.array_equal(decode(tmp_path / f"a{ext}"), decode(tmp_path / f"b{ext}"))
    with av.open(str(tmp_path / f"a{ext}")) as c:
        # (PyAV names an AV1 stream by its decoder, libdav1d)
        assert c.streams.video[0].codec_context.name in {"libx264": ("h264",), "libx265": ("hevc",),
                                                         "libsvtav1": ("av1", "libdav1d"), "ffv1": ("ffv1",)}[codec]


def test_version(capsys):
    rc, _ = run("--version")
    out = capsys.readouterr().out
    assert rc == 0 and out.startswith("digan 0.1.0 (torch ")
