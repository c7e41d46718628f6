"""Trainer: the official recipe's pieces, resume = uninterrupted, torchrun (gloo) = one process, determinism.

Everything runs the 'tiny-32' preset on 32x32 clips with batch 4, on one intra-op thread (the test
machine's cores are shared: two threads contending for them are ~5x slower, and a fixed thread count
keeps CPU reductions in a fixed order, which the exact comparisons below rely on).
"""
import csv
import dataclasses
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from digan.config import discriminator_preset, generator_preset
from digan.datasets import FrameFolderDataset, VideoFolderDataset
from digan.train import cli as train_cli
from digan.train.augment import apply_params, join_pair, split_pair
from digan.train.loop import (
    LOSS_KEYS,
    StepSampler,
    TrainConfig,
    Trainer,
    ema_beta,
    lazy_reg_hparams,
    sanitize_grads,
    update_ema,
)
from digan.train.loss import DiganLoss, FakeInputs, fake_pairs, sample_times
from tests.data_utils import make_frame_folder, torch_threads, write_drifting_videos

REPO = Path(__file__).resolve().parents[1]
TINY = "tiny-32"


@pytest.fixture(autouse=True)
def one_thread():
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def video_dir(tmp_path_factory):
    """Two lossless 32x32 videos of 20 random-ish frames: 2 x 5 = 10 clips of 16 frames."""
    return write_drifting_videos(tmp_path_factory.mktemp("videos"))


@pytest.fixture(scope="module")
def dataset(video_dir):
    return VideoFolderDataset(video_dir, resolution=32)


def tiny_trainer(dataset, **kw):
    workers = kw.pop("workers", 0)
    cfg = TrainConfig(**{"batch": 4, **kw})
    return Trainer(generator_preset(TINY), discriminator_preset(TINY), dataset, cfg, workers=workers)


def floats(stats):
    return {k: v.item() for k, v in stats.items()}


# ---- recipe pieces -------------------------------------------------------------------------------

@pytest.mark.slow   # ~40 s shared; the fast loop trains in test_steps_run_finite_with_lazy_r1
def test_adam_hyperparameters_follow_lazy_regularisation(dataset):
    tr = tiny_trainer(dataset)
    g, d = tr.opt_G.param_groups[0], tr.opt_D.param_groups[0]
    assert g["lr"] == pytest.approx(0.0025 * 4 / 5) and g["betas"] == pytest.approx((0.0, 0.99 ** 0.8))
    assert d["lr"] == pytest.approx(0.0025 * 16 / 17) and d["betas"] == pytest.approx((0.0, 0.99 ** (16 / 17)))
    assert g["eps"] == d["eps"] == 1e-8
    assert lazy_reg_hparams(0.01, (0.0, 0.9), 0) == (0.01, (0.0, 0.9))
    # every parameter is optimised; the EMA copy is a separate module in eval mode
    assert sum(len(pg["params"]) for pg in tr.opt_G.param_groups) == len(list(tr.G.parameters()))
    assert not tr.G_ema.training and tr.G.training
    assert TrainConfig(batch=64).ema_kimg_value == 20 and TrainConfig(batch=32).ema_kimg_value == 10


def test_steps_run_finite_with_lazy_r1(dataset):
    tr = tiny_trainer(dataset, d_reg_interval=2)
    g0 = [p.clone() for p in tr.G.parameters()]
    steps = [floats(tr.step()) for _ in range(3)]
    for s in steps:
        assert all(math.isfinite(v) for v in s.values()), s
        assert {"G_motion", "G_image", "D_motion", "D_image"} <= set(s)
    assert [("R1_motion" in s, "R1_image" in s) for s in steps] == [(True, True), (False, False), (True, True)]
    assert steps[0]["R1_motion"] > 0 and steps[0]["R1_image"] > 0
    assert tr.step_idx == 3 and tr.cur_nimg == 12
    assert any(not torch.equal(a, b) for a, b in zip(g0, tr.G.parameters()))


def test_times_and_fake_pairs():
    g = torch.Generator().manual_seed(0)
    Ts = sample_times(20000, g)
    assert Ts.shape == (20000, 2) and (Ts[:, 0] <= Ts[:, 1]).all() and Ts.min() >= 0 and Ts.max() <= 1
    # sorted pair of X ~ Beta(2,1), Y ~ Beta(1,2): E[min] = ∫(1-t²)(1-t)² dt = 3/10, E[max] = 1 - 3/10
    assert Ts[:, 0].mean().item() == pytest.approx(0.3, abs=0.01)
    assert Ts[:, 1].mean().item() == pytest.approx(0.7, abs=0.01)
    frames = torch.randn(6, 3, 8, 8)
    x = fake_pairs(frames, Ts[:3])
    assert x.shape == (3, 7, 8, 8)
    f, dt = split_pair(x)
    assert torch.equal(f, frames)
    assert torch.equal(dt, (Ts[:3, 1] - Ts[:3, 0]).view(3, 1, 1, 1).expand(3, 1, 8, 8))


def test_losses_match_their_definitions():
    """G/D logistic losses and both R1 terms recomputed by hand with the same augmentation draws."""
    torch.manual_seed(0)
    from digan.networks import Discriminator, Generator

    G, D = Generator(generator_preset(TINY)), Discriminator(discriminator_preset(TINY))
    loss = DiganLoss(G, D, r1_gamma=1.0)
    g = torch.Generator().manual_seed(1)
    B = 4
    fake = FakeInputs(torch.randn(B, 32, generator=g), torch.randn(B, 32, generator=g), sample_times(B, g),
                      torch.zeros(B, 0))
    real = torch.rand(B, 7, 32, 32, generator=g) * 2 - 1
    aug = loss.sample_augment(B, g)
    c = torch.zeros(B, 0)

    def augmented(x):
        f, dt = split_pair(x)
        return join_pair(apply_params(f, aug.per_frame(2)), dt)

    # G main
    D.requires_grad_(False)
    stats = loss.accumulate_G(fake, aug, gain=1.0)
    with torch.no_grad():
        lm, li, _ = D(augmented(loss.run_G(fake)), c)
    assert stats["G_motion"].item() == pytest.approx(F.softplus(-lm).mean().item(), rel=1e-5)
    assert stats["G_image"].item() == pytest.approx(F.softplus(-li).mean().item(), rel=1e-5)

    # R1: motion head w.r.t. the raw pair (before augmentation), image head w.r.t. the augmented frames
    D.requires_grad_(True)
    stats = loss.accumulate_R1(real, c, aug, gain=16.0)
    x = real.clone().requires_grad_(True)
    lm, _, _ = D(augmented(x), c)
    gm, = torch.autograd.grad(lm.sum(), x)
    frames = split_pair(augmented(real))[0].clone().requires_grad_(True)
    li = D.imageD(frames, None)
    gi, = torch.autograd.grad(li.sum(), frames)
    assert stats["R1_motion"].item() == pytest.approx(gm.square().sum([1, 2, 3]).mean().item(), rel=1e-4)
    assert stats["R1_image"].item() == pytest.approx(gi.square().sum([1, 2, 3]).mean().item(), rel=1e-4)
    # the `logits * 0` terms give every D parameter a gradient, as in the official R1 phase
    assert all(p.grad is not None for p in D.parameters())


def test_ema_beta_formula_and_update():
    # ramp-up: ema_nimg = min(ema_kimg * 1000, cur_nimg * 0.05)
    assert ema_beta(64, 0, 20, 0.05) == 0.0                   # first step: G_ema := G
    assert ema_beta(64, 6400, 20, 0.05) == pytest.approx(0.5 ** (64 / 320))
    assert ema_beta(64, 10 ** 7, 20, 0.05) == pytest.approx(0.5 ** (64 / 20000))
    assert ema_beta(64, 0, 20, None) == pytest.approx(0.5 ** (64 / 20000))
    a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    a.register_buffer("buf", torch.zeros(2))
    b.register_buffer("buf", torch.ones(2))
    w_ema, w = a.weight.detach().clone(), b.weight.detach().clone()
    update_ema(a, b, 0.25)
    torch.testing.assert_close(a.weight, w + 0.25 * (w_ema - w))  # p.lerp(p_ema, β)
    assert torch.equal(a.buf, b.buf)                           # buffers are copied


def test_nan_and_inf_grads_are_sanitised(dataset):
    p = torch.nn.Parameter(torch.zeros(4))
    p.grad = torch.tensor([float("nan"), float("inf"), -float("inf"), 2.0])
    sanitize_grads([p])
    assert p.grad.tolist() == [0.0, 1e5, -1e5, 2.0]
    # in the trainer: a parameter whose gradient is all NaN keeps its value (Adam, β1 = 0, on a zero grad)
    tr = tiny_trainer(dataset, d_reg_interval=0)
    w = tr.G.synthesis.b4.torgb.weight
    w0 = w.detach().clone()
    w.requires_grad_(True)   # (the trainer turns it on for G's phase; hooks stay attached)
    w.register_hook(lambda g: torch.full_like(g, float("nan")))
    w.requires_grad_(False)
    tr.step()
    assert torch.equal(w, w0)
    assert all(torch.isfinite(q).all() for q in tr.G.parameters())


def test_step_sampler_positions():
    s = StepSampler(n=5, batch=4, lo=2, hi=4, seed=3, start_step=1)
    keys = next(iter(s))
    assert [k[0] for k in keys] == [1, 1]                      # positions 6, 7 are in epoch 1
    assert [k[1] for k in keys] == s.perm(1)[1:3].tolist()
    assert sorted(s.perm(0).tolist()) == list(range(5)) and not torch.equal(s.perm(0), s.perm(1))


def test_class_conditional_fakes_use_dataset_labels(tmp_path):
    root = make_frame_folder(tmp_path / "frames", [16, 16, 16], classes=["a", "b"])
    ds = FrameFolderDataset(root, resolution=32, use_labels=True)
    assert ds.c_dim == 2
    g_cfg = dataclasses.replace(generator_preset(TINY), c_dim=2)
    d_cfg = dataclasses.replace(discriminator_preset(TINY), c_dim=2)
    tr = Trainer(g_cfg, d_cfg, ds, TrainConfig(batch=4, d_reg_interval=1))
    c = tr._fake_labels(400)
    assert c.shape == (400, 2) and torch.equal(c.sum(1), torch.ones(400))
    assert c[:, 0].mean().item() == pytest.approx(2 / 3, abs=0.08)  # videos 0 and 2 are class 'a'
    assert all(math.isfinite(v) for v in floats(tr.step()).values())


# ---- reproducibility -----------------------------------------------------------------------------

@pytest.mark.slow   # ~210 s on the shared 2 cores: two trainings of several steps
def test_same_steps_twice_give_identical_losses(dataset):
    """20 steps, twice (the second with a DataLoader worker process): identical losses and weights."""
    runs = []
    for workers in (0, 1):
        tr = tiny_trainer(dataset, d_reg_interval=4, workers=workers)
        runs.append(([floats(tr.step()) for _ in range(20)], tr))
    assert runs[0][0] == runs[1][0]
    for a, b in zip(runs[0][1].G_ema.state_dict().values(), runs[1][1].G_ema.state_dict().values()):
        assert torch.equal(a, b)


def _train(args):
    parser = train_cli.argparse.ArgumentParser()
    train_cli.add_train_args(parser)
    assert train_cli.run_train(parser.parse_args([str(a) for a in args])) == 0


def _csv_losses(path):
    with open(path, newline="") as f:
        return {int(r["step"]): {k: r[k] for k in LOSS_KEYS} for r in csv.DictReader(f)}


def _snapshot(path):
    from safetensors.torch import load_file
    return load_file(str(path))


SNAP = "network-snapshot-000000.safetensors"   # batch 4: every step of these runs is below 1 kimg


def _assert_same_snapshots(a_path, b_path):
    a, b = _snapshot(a_path), _snapshot(b_path)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k                      # weights, EMA, Adam moments, RNG states


@pytest.mark.slow   # ~110 s shared: three `digan train` runs
def test_kill_and_resume_equals_uninterrupted(video_dir, tmp_path, capsys, monkeypatch):
    """8 steps in one go vs. the same run stopped by Ctrl-C (SIGINT, delivered by the test hook right
    after step 6): the snapshot written on the way out resumes to 8 with identical losses and state.
    Then the crash case: resuming from an older snapshot (step 4, a run that was SIGKILLed later)
    replaces the log rows past it and again ends identical."""
    from digan.train.signals import SELF_SIGNAL_ENV, TrainingInterrupted

    common = ["--data", video_dir, "--tiny", "--batch", 4, "--r1-every", 3, "--workers", 0, "--device", "cpu",
              "--log-every", 1, "--preview-every", 4, "--seed", 7]
    _train(common + ["--out", tmp_path / "full", "--steps", 8, "--snapshot-every", 0])
    _train(common + ["--out", tmp_path / "cut", "--steps", 4, "--snapshot-every", 0])
    (tmp_path / "cut" / SNAP).rename(tmp_path / "step4.safetensors")
    monkeypatch.setenv(SELF_SIGNAL_ENV, "6:INT")
    with pytest.raises(TrainingInterrupted) as info:
        _train(common + ["--out", tmp_path / "cut", "--steps", 8, "--snapshot-every", 0,
                         "--resume", tmp_path / "step4.safetensors"])
    monkeypatch.delenv(SELF_SIGNAL_ENV)
    assert info.value.step == 6 and info.value.snapshot == tmp_path / "cut" / SNAP
    out = capsys.readouterr().out
    assert "stopped by SIGINT after step 6" in out and "--resume" in out
    assert sorted(_csv_losses(tmp_path / "cut" / "log.csv")) == list(range(1, 7))
    _train(common + ["--out", tmp_path / "cut", "--steps", 8, "--snapshot-every", 0, "--resume"])   # latest
    out = capsys.readouterr().out
    assert f"resumed from {tmp_path / 'cut' / SNAP} at step 6" in out

    full, cut = _csv_losses(tmp_path / "full" / "log.csv"), _csv_losses(tmp_path / "cut" / "log.csv")
    assert sorted(full) == sorted(cut) == list(range(1, 9))
    assert full == cut                                         # every loss, to the last printed digit
    assert full[1]["R1_motion"] and full[4]["R1_motion"] and not full[2]["R1_motion"]
    _assert_same_snapshots(tmp_path / "full" / SNAP, tmp_path / "cut" / SNAP)
    previews = sorted(p.name for p in (tmp_path / "full" / "previews").iterdir())
    assert previews == ["fakes-00000004.png", "fakes-00000008.png", "reals.png"]

    # crash recovery from the step-4 snapshot: the log's rows 5..8 are dropped and redone
    _train(common + ["--out", tmp_path / "cut", "--steps", 8, "--snapshot-every", 0,
                     "--resume", tmp_path / "step4.safetensors"])
    assert "clips/s" in capsys.readouterr().out                # 4 steps: timed after the 2 warm-up steps
    assert _csv_losses(tmp_path / "cut" / "log.csv") == full
    _assert_same_snapshots(tmp_path / "full" / SNAP, tmp_path / "cut" / SNAP)


@pytest.mark.slow   # ~95 s shared: torchrun with 2 ranks plus one process
def test_torchrun_two_ranks_equal_one_process(video_dir, tmp_path):
    """2 gloo ranks x 2 videos vs. one process doing the same global batch of 4 in 2 rounds of 2.

    Each rank's inputs are the same slice of the same global draws and reals as the matching round;
    the trainer forms each round's gradient on its own and adds rounds like the all_reduce adds ranks
    ((g_a + g_b) / 2 either way, exact in fp32 for two terms), and both runs use one thread, so the
    weights, EMA and Adam moments must be bit-identical.  (With more ranks or rounds, only the
    summation order of the gradient terms would differ: ~1e-7 relative per step.)  w_avg (G.mapping's
    running mean of w, unused by training) is a per-rank / per-round statistic, as in the official code,
    and is not compared; logged statistics are averaged in a different order (rel 1e-6)."""
    common = ["--data", video_dir, "--tiny", "--batch", 4, "--steps", 3, "--r1-every", 2, "--workers", 0,
              "--device", "cpu", "--log-every", 1, "--preview-every", 0, "--snapshot-every", 0, "--seed", 3]
    _train(common + ["--out", tmp_path / "one", "--batch-gpu", 2])
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(
        [str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "digan.train.cli"] + [str(a) for a in common + ["--out", tmp_path / "two"]]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "on 2 rank(s) x 1 round(s) of 2" in proc.stdout

    a = _snapshot(tmp_path / "one" / SNAP)
    b = _snapshot(tmp_path / "two" / SNAP)
    compared = 0
    for k in a:
        if k.startswith(("G.", "D.", "G_ema.", "opt_")) and not k.endswith("w_avg"):
            assert torch.equal(a[k], b[k]), (k, (a[k] - b[k]).abs().max().item())
            compared += 1
    assert compared > 100
    la, lb = _csv_losses(tmp_path / "one" / "log.csv"), _csv_losses(tmp_path / "two" / "log.csv")
    for step in la:
        for k in LOSS_KEYS:
            if la[step][k]:
                assert float(lb[step][k]) == pytest.approx(float(la[step][k]), rel=1e-6), (step, k)


def test_train_cli_kernels_option_matches_reference(video_dir, tmp_path, capsys):
    """`digan train --kernels fp32` runs G's synthesis on the fused kernels: the first step's losses
    equal the reference path's to fp32 round-off (different summation order, ~1e-6; the trajectory
    itself is chaotic at the official lr, see tests/test_fast_synthesis.py), later ones are finite."""
    common = ["--data", video_dir, "--tiny", "--batch", 4, "--r1-every", 2, "--workers", 0, "--device", "cpu",
              "--log-every", 1, "--preview-every", 0, "--seed", 3, "--steps", 3, "--snapshot-every", 0]
    _train(common + ["--out", tmp_path / "ref"])
    _train(common + ["--out", tmp_path / "fast", "--kernels", "fp32"])
    assert "synthesis on the fused kernels (fp32)" in capsys.readouterr().out
    ref, fast = _csv_losses(tmp_path / "ref" / "log.csv"), _csv_losses(tmp_path / "fast" / "log.csv")
    assert sorted(fast) == [1, 2, 3]
    for key, value in ref[1].items():  # CSV strings; empty where a loss was not computed that step
        assert bool(value) == bool(fast[1][key]), key
        if value:
            assert abs(float(fast[1][key]) - float(value)) <= 1e-5 * max(1.0, abs(float(value))), key
    assert all(abs(float(v)) < 1e6 for row in fast.values() for v in row.values() if v)
