"""The DIGAN training loop: the official recipe (StyleGAN2-ADA's training_loop with DIGAN's loss).

One step (the official `batch_idx` iteration) on a global batch of B videos:

  G main   fresh z, z_motion, times, labels; loss.accumulate_G; Adam step of G
  D main   fresh fakes (from the G just updated) + the step's reals; loss.accumulate_D; Adam step of D
  D reg    every d_reg_interval steps (step 0, 16, 32, ...): lazy R1 on the same reals, gain 16; Adam step of D
  G_ema    β = 0.5^(B / max(ema_nimg, 1e-8)), ema_nimg = min(ema_kimg·1000, cur_nimg·ema_rampup); buffers copied

G has no regularisation phase (pl_weight 0), but its Adam still gets the lazy-regularisation
correction of G_reg_interval = 4 (lr·4/5, β₂ = 0.99^0.8), exactly as the official code, where the
empty 'Greg' phase still exists.  D: lr·16/17, β₂ = 0.99^(16/17).  Gradients are sanitised
(NaN -> 0, ±Inf -> ±1e5) before every optimizer step.

Randomness.  Every random input of a step (latents, times, fake labels, DiffAugment draws) comes
from ONE CPU torch.Generator seeded from the run seed, drawn for the whole global batch in a fixed
order; a rank uses its slice.  Reals come from a step-indexed sampler: global batch s holds the
clips at positions s·B .. s·B + B - 1 of a stream of per-epoch permutations, and the dataset's own
draws (frame pair, flip) are keyed by (seed, epoch, index).  So a step's inputs depend only on
(seed, step) — not on the number of ranks, the accumulation rounds, the DataLoader workers or a
resume — and resuming restores the generator state and the step.  The global torch/numpy/python
RNGs (not used by the recipe) are saved and restored too.

Multi-GPU / multi-node: launched by torchrun; each rank takes B / world videos, processes them in
rounds of batch_gpu, and gradients are averaged with one all_reduce per phase (StyleGAN3's scheme,
not DDP hooks: G.mapping and G.synthesis are called separately and the R1 phase uses double
backward).  Rounds are averaged like ranks, so any split of the same global batch gives the same
gradient up to summation order (and bit-identical ones for 2 rounds vs 2 ranks).  (The official
code sums rounds instead, which only differs when batch > batch_gpu·gpus, and then only through
Adam's eps.)  Rank 0 writes
checkpoints, previews and logs.  G.mapping's w_avg is a per-rank running mean, as officially.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist

from ..checkpoint.training_state import (
    TrainingProgress,
    gather_global_rng_states,
    load_training_state,
    save_training_state,
)
from ..config import DiscriminatorConfig, GeneratorConfig
from ..distributed import DistEnv, allreduce_grads
from ..networks import Discriminator, Generator
from .augment import DIGAN_POLICY
from .loss import DiganLoss, FakeInputs, SynthesisFn, sample_times, slice_params
from .reports import LOSS_KEYS, ReportWriters, format_row
from .signals import StopSignals, TrainingInterrupted, ignore_stop_signals, self_signal_plan
from .snapshots import snapshot_name

# A snapshot callback: (trainer, path of the snapshot on rank 0, None on other ranks) -> None or
# {metric name: value}; it runs on every rank after every regular snapshot (not after the one
# written when interrupted).  Metrics such as FVD register here.
SnapshotCallback = Callable[["Trainer", Optional[Path]], Optional[Dict[str, float]]]


@dataclass
class TrainConfig:
    batch: int = 64                      # global batch: videos (pairs) per step over all ranks
    batch_gpu: Optional[int] = None      # videos per forward pass on one rank; None = batch / world
    g_lr: float = 0.0025                 # base learning rates, before the lazy-regularisation correction
    d_lr: float = 0.0025
    betas: Tuple[float, float] = (0.0, 0.99)
    eps: float = 1e-8
    g_reg_interval: int = 4              # only corrects G's Adam (DIGAN has no G regulariser)
    d_reg_interval: int = 16             # lazy R1 every this many steps; 0 = never
    r1_gamma: float = 1.0
    augment: str = DIGAN_POLICY          # DiffAugment policy, '' = none
    ema_kimg: Optional[float] = None     # None = batch * 10 / 32 (official 'auto': 20 at batch 64)
    ema_rampup: Optional[float] = 0.05
    seed: int = 0

    def __post_init__(self) -> None:
        self.betas = tuple(float(b) for b in self.betas)
        if self.batch < 1:
            raise ValueError(f"batch must be >= 1, got {self.batch}")
        if self.batch_gpu is not None and self.batch_gpu < 1:
            raise ValueError(f"batch_gpu must be >= 1, got {self.batch_gpu}")
        if self.g_reg_interval < 0 or self.d_reg_interval < 0:
            raise ValueError("reg intervals must be >= 0")
        if self.seed < 0:
            raise ValueError(f"seed must be non-negative, got {self.seed}")

    @property
    def ema_kimg_value(self) -> float:
        return self.batch * 10 / 32 if self.ema_kimg is None else float(self.ema_kimg)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "TrainConfig":
        return cls(**json.loads(text))


# ---- small pieces, each tested on its own ---------------------------------------------------------

def lazy_reg_hparams(lr: float, betas: Sequence[float], reg_interval: int) -> Tuple[float, Tuple[float, ...]]:
    """StyleGAN2's lazy-regularisation correction: lr·k/(k+1), β^(k/(k+1)); unchanged for k = 0."""
    if not reg_interval:
        return lr, tuple(betas)
    ratio = reg_interval / (reg_interval + 1)
    return lr * ratio, tuple(b ** ratio for b in betas)


def ema_beta(batch: int, cur_nimg: int, ema_kimg: float, ema_rampup: Optional[float]) -> float:
    ema_nimg = ema_kimg * 1000
    if ema_rampup is not None:
        ema_nimg = min(ema_nimg, cur_nimg * ema_rampup)
    return 0.5 ** (batch / max(ema_nimg, 1e-8))


@torch.no_grad()
def update_ema(G_ema: torch.nn.Module, G: torch.nn.Module, beta: float) -> None:
    for p_ema, p in zip(G_ema.parameters(), G.parameters()):
        p_ema.copy_(p.lerp(p_ema, beta))
    for b_ema, b in zip(G_ema.buffers(), G.buffers()):
        b_ema.copy_(b)


@torch.no_grad()
def sanitize_grads(params: Sequence[torch.nn.Parameter]) -> None:
    """NaN -> 0, +Inf -> 1e5, -Inf -> -1e5 in place (StyleGAN2-ADA's misc.nan_to_num)."""
    for p in params:
        if p.grad is not None:
            torch.nan_to_num(p.grad, nan=0.0, posinf=1e5, neginf=-1e5, out=p.grad)


def _mix_seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)[0])


# ---- data ----------------------------------------------------------------------------------------

class _EpochIndexed(torch.utils.data.Dataset):
    """dataset[(epoch, index)]: sets the dataset's epoch (its own draws are keyed by it) then loads."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        epoch, index = key
        if hasattr(self.dataset, "set_epoch") and getattr(self.dataset, "epoch", None) != epoch:
            self.dataset.set_epoch(epoch)
        return self.dataset[index]


class StepSampler(torch.utils.data.Sampler):
    """Infinite batch sampler: for step s = start_step, start_step+1, ... yields this rank's keys
    [(epoch, index)] for global positions s·batch + lo .. s·batch + hi - 1 of the stream made of
    one permutation of the n clips per epoch (permutation e drawn from (seed, e))."""

    def __init__(self, n: int, batch: int, lo: int, hi: int, seed: int, start_step: int = 0):
        if n < 1:
            raise ValueError("empty dataset")
        self.n, self.batch, self.lo, self.hi, self.seed, self.start_step = n, batch, lo, hi, seed, start_step
        self._perms: Dict[int, torch.Tensor] = {}

    def perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            if len(self._perms) > 2:
                self._perms.pop(min(self._perms))
            g = torch.Generator().manual_seed(_mix_seed(self.seed, 0x5A3B1E, epoch))
            self._perms[epoch] = torch.randperm(self.n, generator=g)
        return self._perms[epoch]

    def keys(self, step: int) -> List[Tuple[int, int]]:
        out = []
        for j in range(self.lo, self.hi):
            epoch, i = divmod(step * self.batch + j, self.n)
            out.append((epoch, int(self.perm(epoch)[i])))
        return out

    def __iter__(self):
        step = self.start_step
        while True:
            yield self.keys(step)
            step += 1


# ---- previews --------------------------------------------------------------------------------------

def frames_to_uint8(x: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) in [-1, 1] -> uint8 (N, H, W, 3): rint((x + 1)·127.5) clipped."""
    return ((x.detach().float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


@torch.no_grad()
def render_grid(G: Generator, z: torch.Tensor, z_motion: torch.Tensor, c: torch.Tensor, frames: int = 8) -> np.ndarray:
    """One row per video, `frames` columns at t = linspace(0, 1, frames): uint8 contact sheet."""
    from digan.images import contact_sheet

    Ts = torch.linspace(0, 1, frames, device=z.device).repeat(z.shape[0])
    img = G.synthesis(G.mapping(z, c), Ts, z_motion)                # (n*frames, 3, H, W)
    return contact_sheet(list(frames_to_uint8(img)), cols=frames)


# ---- the trainer -------------------------------------------------------------------------------------

def build_networks(g_cfg: GeneratorConfig, d_cfg: DiscriminatorConfig, seed: int):
    """G, D from a fixed seed (identical on every rank), without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_mix_seed(seed, 0x6E7))
        G = Generator(g_cfg)
        D = Discriminator(d_cfg)
    return G, D


class Trainer:
    """Holds G, D, G_ema, the optimizers, the random streams and the data position.

    dataset: ds[i] -> (x (7, R, R) float in [-1, 1] + ΔT plane, c (c_dim,)); optional set_epoch,
    label(i) (fast label lookup for fake labels) and load_clip(i) (reals preview)."""

    def __init__(self, g_cfg: GeneratorConfig, d_cfg: DiscriminatorConfig, dataset, cfg: TrainConfig,
                 device="cpu", env: Optional[DistEnv] = None, workers: int = 0,
                 synthesis: Optional[SynthesisFn] = None):
        self.cfg, self.env, self.device = cfg, env or DistEnv(), torch.device(device)
        self.g_cfg, self.d_cfg = g_cfg, d_cfg
        W = self.env.world_size
        if cfg.batch % W:
            raise ValueError(f"batch {cfg.batch} is not divisible by the number of ranks {W}")
        self.batch_rank = cfg.batch // W
        self.batch_gpu = cfg.batch_gpu or self.batch_rank
        if self.batch_rank % self.batch_gpu:
            raise ValueError(f"per-rank batch {self.batch_rank} is not divisible by batch_gpu {self.batch_gpu}")
        self.rounds = self.batch_rank // self.batch_gpu
        if g_cfg.c_dim != d_cfg.c_dim:
            raise ValueError(f"G has c_dim {g_cfg.c_dim} but D has {d_cfg.c_dim}")
        if g_cfg.img_resolution != d_cfg.img_resolution:
            raise ValueError("G and D resolutions differ")
        self.dataset = dataset
        self.workers = workers

        G, D = build_networks(g_cfg, d_cfg, cfg.seed)
        self.G = G.train().requires_grad_(False).to(self.device)
        self.D = D.train().requires_grad_(False).to(self.device)
        self.G_ema = copy.deepcopy(self.G).eval()
        if W > 1:   # identical by construction; broadcast anyway so a rank can never drift
            for t in [*self.G.parameters(), *self.G.buffers(), *self.D.parameters(), *self.D.buffers(),
                      *self.G_ema.parameters(), *self.G_ema.buffers()]:
                dist.broadcast(t.data, src=0)
        self.loss = DiganLoss(self.G, self.D, cfg.r1_gamma, cfg.augment, synthesis)

        g_lr, g_betas = lazy_reg_hparams(cfg.g_lr, cfg.betas, cfg.g_reg_interval)
        d_lr, d_betas = lazy_reg_hparams(cfg.d_lr, cfg.betas, cfg.d_reg_interval)
        self.opt_G = torch.optim.Adam(self.G.parameters(), lr=g_lr, betas=g_betas, eps=cfg.eps)
        self.opt_D = torch.optim.Adam(self.D.parameters(), lr=d_lr, betas=d_betas, eps=cfg.eps)

        self.rng = torch.Generator().manual_seed(_mix_seed(cfg.seed, 0x7A1))   # same on every rank
        self.step_idx = 0            # steps done
        self.cur_nimg = 0            # videos seen (global)
        self.elapsed = 0.0           # training seconds before this process (restored on resume)
        self._data_iter = None
        self._last_snapshot_step: Optional[int] = None
        self.snapshot_callbacks: List[SnapshotCallback] = []   # after every regular snapshot, every rank
        # global RNGs: not used by the recipe, seeded per rank for anything else that draws from them
        torch.manual_seed(_mix_seed(cfg.seed, 0x91, self.env.rank))
        np.random.seed(_mix_seed(cfg.seed, 0x92, self.env.rank) % 2 ** 32)
        random.seed(_mix_seed(cfg.seed, 0x93, self.env.rank))

    # -- random inputs -----------------------------------------------------------------------------
    def _fake_labels(self, n: int) -> torch.Tensor:
        """Labels of n uniformly drawn clips: the dataset's label distribution (official get_label)."""
        c_dim = self.g_cfg.c_dim
        if c_dim == 0:
            return torch.zeros(n, 0)
        idx = torch.randint(len(self.dataset), (n,), generator=self.rng).tolist()
        label = getattr(self.dataset, "label", None)
        rows = [label(i) if label is not None else self.dataset[i][1] for i in idx]
        return torch.stack([r.to(torch.float32) for r in rows])

    def draw_fakes(self, n: int) -> FakeInputs:
        """Global draws for n fake videos in a fixed order: z, z_motion, times, labels."""
        z = torch.randn(n, self.g_cfg.z_dim, generator=self.rng)
        z_motion = torch.randn(n, self.g_cfg.w_dim, generator=self.rng)
        Ts = sample_times(n, self.rng)
        return FakeInputs(z, z_motion, Ts, self._fake_labels(n))

    def _next_reals(self) -> Tuple[torch.Tensor, torch.Tensor]:
        if self._data_iter is None:
            lo = self.env.rank * self.batch_rank
            sampler = StepSampler(len(self.dataset), self.cfg.batch, lo, lo + self.batch_rank, self.cfg.seed,
                                  start_step=self.step_idx)
            loader = torch.utils.data.DataLoader(
                _EpochIndexed(self.dataset), batch_sampler=sampler, num_workers=self.workers,
                pin_memory=self.device.type == "cuda", persistent_workers=self.workers > 0,
                prefetch_factor=2 if self.workers > 0 else None,
                worker_init_fn=ignore_stop_signals if self.workers > 0 else None,
                generator=torch.Generator().manual_seed(self.cfg.seed))
            self._data_iter = iter(loader)
        x, c = next(self._data_iter)
        return (x.to(self.device, torch.float32, non_blocking=True),
                c.to(self.device, torch.float32, non_blocking=True).reshape(x.shape[0], -1))

    # -- one phase ---------------------------------------------------------------------------------
    def _phase(self, module: torch.nn.Module, opt: torch.optim.Optimizer, interval: int,
               run) -> Dict[str, torch.Tensor]:
        """One phase: run(local_slice, global_slice, gain) per round, gradients summed round by round
        and over ranks, divided by rounds·ranks, sanitised, one optimizer step.

        Each round's gradient is formed on its own before being added, so a global batch split as
        2 rounds on one rank or 1 round on each of 2 ranks sums the same two terms the same way
        (bit-identical; D's phases backpropagate twice per round, which would otherwise associate
        the additions differently)."""
        opt.zero_grad(set_to_none=True)
        module.requires_grad_(True)
        base = self.env.rank * self.batch_rank
        stats: List[Dict[str, torch.Tensor]] = []
        total: Optional[Dict[torch.nn.Parameter, torch.Tensor]] = None
        for k in range(self.rounds):
            lsl = slice(k * self.batch_gpu, (k + 1) * self.batch_gpu)
            gsl = slice(base + lsl.start, base + lsl.stop)
            stats.append(run(lsl, gsl, float(interval)))
            if self.rounds > 1:
                if total is None:
                    total = {p: p.grad for p in module.parameters() if p.grad is not None}
                else:
                    for p, g in total.items():
                        g.add_(p.grad)
                for p in total:
                    p.grad = None
        module.requires_grad_(False)
        if total is not None:
            for p, g in total.items():
                p.grad = g
        params = [p for p in module.parameters() if p.grad is not None]
        allreduce_grads(params, self.env.world_size)                  # sum over ranks / world
        if self.rounds > 1:
            for p in params:
                p.grad.div_(self.rounds)
        sanitize_grads(params)
        opt.step()
        return {k: torch.stack([s[k] for s in stats]).mean() for k in stats[0]}

    def step(self) -> Dict[str, torch.Tensor]:
        """One training step; returns the step's statistics (0-d tensors, averaged over rounds and ranks).

        R1 keys are present only on regularisation steps."""
        cfg, B, dev, loss = self.cfg, self.cfg.batch, self.device, self.loss
        real, real_c = self._next_reals()                                # (B/W, 7, R, R), (B/W, c_dim)
        stats: Dict[str, torch.Tensor] = {}

        # G main
        fake = self.draw_fakes(B)
        aug = loss.sample_augment(B, self.rng)
        stats.update(self._phase(self.G, self.opt_G, 1, lambda lsl, gsl, gain: loss.accumulate_G(
            fake[gsl].to(dev), slice_params(aug, gsl), gain)))

        # D main
        fake = self.draw_fakes(B)
        aug_fake = loss.sample_augment(B, self.rng)
        aug_real = loss.sample_augment(B, self.rng)
        stats.update(self._phase(self.D, self.opt_D, 1, lambda lsl, gsl, gain: loss.accumulate_D(
            real[lsl], real_c[lsl], fake[gsl].to(dev), slice_params(aug_fake, gsl), slice_params(aug_real, gsl),
            gain)))

        # D reg: lazy R1
        if cfg.d_reg_interval and cfg.r1_gamma != 0 and self.step_idx % cfg.d_reg_interval == 0:
            aug_r1 = loss.sample_augment(B, self.rng)
            stats.update(self._phase(self.D, self.opt_D, cfg.d_reg_interval, lambda lsl, gsl, gain: loss.accumulate_R1(
                real[lsl], real_c[lsl], slice_params(aug_r1, gsl), gain)))

        # G_ema
        update_ema(self.G_ema, self.G, ema_beta(B, self.cur_nimg, cfg.ema_kimg_value, cfg.ema_rampup))
        self.cur_nimg += B
        self.step_idx += 1

        if self.env.world_size > 1:   # statistics of the global batch (for logs; identical on all ranks)
            keys = sorted(stats)
            flat = torch.stack([stats[k] for k in keys])
            dist.all_reduce(flat)
            stats = dict(zip(keys, flat / self.env.world_size))
        return stats

    # -- checkpoints -------------------------------------------------------------------------------
    def save(self, path) -> Optional[Path]:
        """Collective: every rank calls it; rank 0 writes G, D, G_ema, both optimizers, every RNG state
        and the step (our safetensors format, digan.checkpoint.training_state)."""
        rng_states = gather_global_rng_states(self.device, self.env.world_size)
        self._last_snapshot_step = self.step_idx
        if not self.env.is_main:
            return None
        progress = TrainingProgress(
            step=self.step_idx, cur_nimg=self.cur_nimg, elapsed=self.elapsed_total(),
            world_size=self.env.world_size, config=self.cfg.to_json(),
            # the sampler position is a function of the step (global batch s = positions s·B ..)
            data_position=self.step_idx * self.cfg.batch,
            data_epoch=self.step_idx * self.cfg.batch // max(len(self.dataset), 1))
        return save_training_state(path, G=self.G, D=self.D, G_ema=self.G_ema, optimizers=self._optimizers(),
                                   train_rng=self.rng, rank_rng_states=rng_states, progress=progress)

    def load(self, path) -> None:
        """Restores everything `save` wrote; the next step continues exactly where the saved run stood."""
        progress = load_training_state(path, G=self.G, D=self.D, G_ema=self.G_ema, optimizers=self._optimizers(),
                                       train_rng=self.rng, rank=self.env.rank, world_size=self.env.world_size,
                                       device=self.device)
        self.step_idx = progress.step
        self.cur_nimg = progress.cur_nimg
        self.elapsed = progress.elapsed
        self._data_iter = None   # the sampler restarts at the restored step
        self._last_snapshot_step = self.step_idx

    def _optimizers(self) -> Dict[str, torch.optim.Optimizer]:
        return {"opt_G": self.opt_G, "opt_D": self.opt_D}   # the names are the snapshot's tensor prefixes

    def elapsed_total(self) -> float:
        return self.elapsed + (time.time() - self._t_start if getattr(self, "_t_start", None) else 0.0)

    # -- the loop --------------------------------------------------------------------------------------
    def train(self, total_steps: int, out_dir=None, log_every: int = 20, snapshot_every: int = 1000,
              preview_every: int = 500, warmup_steps: int = 2, preview_videos: int = 4, preview_frames: int = 8,
              print_fn=print, progress: bool = True, tensorboard: bool = True) -> List[Dict[str, float]]:
        """Runs until step `total_steps` (counting steps already done); returns the logged rows.

        Every log_every steps (and after step 1 and at the end): a line `step kimg time losses clips/s sec/kimg`
        (throughput skips the first warmup_steps steps of this process), the same as a row of
        <out>/log.csv, one JSON object in <out>/stats.jsonl (StyleGAN2-ADA's layout) and, when
        `torch.utils.tensorboard` imports, TensorBoard scalars in <out>.  A tqdm bar on stderr
        counts steps from the first one.  Snapshots <out>/network-snapshot-<kimg>.safetensors every
        snapshot_every steps and at the end (then `snapshot_callbacks`), preview grids
        <out>/previews/fakes-<step>.png (G_ema, fixed latents) every preview_every steps.

        SIGINT (Ctrl-C) or SIGTERM: the step in flight finishes, a snapshot is written, and
        TrainingInterrupted (a KeyboardInterrupt) is raised; a second signal aborts at once."""
        from tqdm import tqdm

        out = Path(out_dir) if out_dir is not None else None
        main = self.env.is_main and out is not None
        writers = ReportWriters(out, self.step_idx, tensorboard) if main else None
        grid = self._preview_latents(preview_videos) if (main and preview_every) else None
        if main and preview_every and self.step_idx == 0:
            self._write_reals(out / "previews" / "reals.png", preview_videos, preview_frames)
        self_signal = self_signal_plan() if self.env.is_main else None
        rows: List[Dict[str, float]] = []
        self._t_start = time.time()
        start_step = self.step_idx
        acc: Dict[str, List[torch.Tensor]] = {}
        t_mark, n_mark = (time.time(), start_step) if warmup_steps <= 0 else (None, None)
        # The bar starts before the first step, which is the slowest (R1, allocations, worker start).
        bar = tqdm(total=total_steps, initial=self.step_idx, desc="train", unit="step", file=sys.stderr,
                   dynamic_ncols=True, mininterval=0.5, disable=not (self.env.is_main and progress))

        def say(line: str) -> None:
            with tqdm.external_write_mode():      # the line goes above the bar, not through it
                print_fn(line)

        stopped = 0
        try:
            with StopSignals() as signals:
                while self.step_idx < total_steps:
                    stats = self.step()
                    bar.update(1)
                    for k, v in stats.items():
                        acc.setdefault(k, []).append(v)
                    done = self.step_idx >= total_steps
                    if self.step_idx - start_step == warmup_steps and t_mark is None:
                        self._sync()
                        t_mark, n_mark = time.time(), self.step_idx
                    # step 1 of a run is reported too (StyleGAN2-ADA's tick 0): losses within a minute
                    if (log_every and (self.step_idx % log_every == 0 or self.step_idx == 1)) or done:
                        row, spread = self._log_row(acc, t_mark, n_mark)
                        acc = {}
                        if t_mark is not None:
                            t_mark, n_mark = time.time(), self.step_idx
                        rows.append(row)
                        if self.env.is_main:
                            say(format_row(row))
                            bar.set_postfix_str(f"kimg {row['kimg']:.3f}", refresh=False)
                            if writers is not None:
                                writers.write(row, spread, self._resources())
                    if out is not None and ((snapshot_every and self.step_idx % snapshot_every == 0) or done):
                        self._after_snapshot(self.save(out / snapshot_name(self.cur_nimg)), writers, say)
                    if main and preview_every and (self.step_idx % preview_every == 0 or done):
                        self._write_preview(out / "previews" / f"fakes-{self.step_idx:08d}.png", grid, preview_frames)
                    if self_signal is not None and self.step_idx == self_signal[0]:
                        os.kill(os.getpid(), self_signal[1])   # test hook: a deterministic "kill" after this step
                    stopped = self._agree_stop(signals.signum)
                    if stopped and not done:
                        break
                    stopped = 0   # a signal during the last step: the run is complete anyway
        finally:
            bar.close()
            if writers is not None:
                writers.close()
            self.elapsed = self.elapsed_total()
            self._t_start = None
        if stopped:
            snapshot = None
            if out is not None:
                snapshot = out / snapshot_name(self.cur_nimg)
                if self._last_snapshot_step != self.step_idx:
                    self.save(snapshot)
            raise TrainingInterrupted(stopped, self.step_idx, self.cur_nimg, snapshot)
        return rows

    # -- stopping, snapshots, reports --------------------------------------------------------------------
    def _agree_stop(self, signum: Optional[int]) -> int:
        """The signal number if any rank was asked to stop, else 0; every rank stops after the same step
        (a snapshot is a collective)."""
        flag = int(signum or 0)
        if self.env.world_size > 1:
            t = torch.tensor([flag], dtype=torch.int64, device=self.device if self.device.type == "cuda" else "cpu")
            dist.all_reduce(t, op=dist.ReduceOp.MAX)                  # sync point across ranks, once per step
            flag = int(t.item())
        return flag

    def _after_snapshot(self, path: Optional[Path], writers, say) -> None:
        """Runs `snapshot_callbacks` on every rank (path is None except on rank 0); a callback's dict of
        metrics is printed and appended to <out>/metrics.jsonl by rank 0."""
        for callback in self.snapshot_callbacks:
            result = callback(self, path)
            if result and self.env.is_main:
                say(f"metrics at step {self.step_idx}: " + "  ".join(f"{k} {v:.4g}" for k, v in result.items()))
                if writers is not None:
                    writers.write_metrics(path, self.step_idx, self.cur_nimg, result)

    def _resources(self) -> Dict[str, float]:
        import resource

        # ru_maxrss is in KiB on Linux (bytes on macOS); peak, like StyleGAN2-ADA's peak_gpu_mem_gb
        scale = 1 if sys.platform == "darwin" else 1024
        res = {"peak_cpu_mem_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2 ** 30}
        if self.device.type == "cuda":
            res["peak_gpu_mem_gb"] = torch.cuda.max_memory_allocated(self.device) / 2 ** 30
        return res

    # -- logging helpers ---------------------------------------------------------------------------------
    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)                       # sync point: honest timings

    def _log_row(self, acc, t_mark, n_mark) -> Tuple[Dict[str, Optional[float]], Dict[str, Tuple[int, float]]]:
        """(row: step, kimg, time and the interval's mean losses; spread: loss -> (steps, std over them))."""
        self._sync()
        row: Dict[str, Optional[float]] = {"step": self.step_idx, "kimg": round(self.cur_nimg / 1000, 6),
                                           "time_s": round(self.elapsed_total(), 3)}
        spread: Dict[str, Tuple[int, float]] = {}
        for k in LOSS_KEYS:   # .item(): sync point, once per log interval
            row[k] = None
            if k in acc:
                v = torch.stack(acc[k]).double()
                row[k] = float(v.mean().item())
                spread[k] = (len(acc[k]), float(v.std(correction=0).item()))
        row["clips_per_s"] = row["sec_per_kimg"] = None
        if t_mark is not None and self.step_idx > n_mark:
            rate = (self.step_idx - n_mark) * self.cfg.batch / max(time.time() - t_mark, 1e-9)
            row["clips_per_s"], row["sec_per_kimg"] = round(rate, 3), round(1000 / rate, 3)
        return row, spread

    def _preview_latents(self, n: int):
        g = torch.Generator().manual_seed(_mix_seed(self.cfg.seed, 0x9E))
        z = torch.randn(n, self.g_cfg.z_dim, generator=g)
        z_motion = torch.randn(n, self.g_cfg.w_dim, generator=g)
        c = torch.zeros(n, 0)
        if self.g_cfg.c_dim:
            idx = torch.randint(len(self.dataset), (n,), generator=g).tolist()
            label = getattr(self.dataset, "label", None)
            c = torch.stack([(label(i) if label else self.dataset[i][1]).float() for i in idx])
        return z.to(self.device), z_motion.to(self.device), c.to(self.device)

    def _write_preview(self, path: Path, grid, frames: int) -> None:
        from digan.images import write_png

        path.parent.mkdir(parents=True, exist_ok=True)
        write_png(path, render_grid(self.G_ema, *grid, frames=frames))

    def _write_reals(self, path: Path, n: int, frames: int) -> None:
        from digan.images import contact_sheet, sample_indices, write_png

        load_clip = getattr(self.dataset, "load_clip", None)
        if load_clip is None:
            return
        g = torch.Generator().manual_seed(_mix_seed(self.cfg.seed, 0x9F))
        idx = torch.randint(len(self.dataset), (n,), generator=g).tolist()
        tiles = []
        for i in idx:
            clip = load_clip(i).numpy()                                  # (T, R, R, 3) uint8
            tiles += [clip[k] for k in sample_indices(len(clip), frames)]
        path.parent.mkdir(parents=True, exist_ok=True)
        write_png(path, contact_sheet(tiles, cols=min(frames, len(tiles))))
