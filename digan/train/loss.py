"""DIGAN's losses: the official OurStyleGAN2Loss (src/training/loss.py) with DIGAN's settings.

The official configuration (configs/digan.yml) turns path-length regularisation and style mixing off
(pl_weight 0, style_mixing_prob 0) and sets r1_gamma = 1, so three terms are left, each on BOTH
discriminator heads (motion head `videoD` on the 7-channel pair, image head `imageD` on its frames):

  G main   softplus(-l_motion(fake)).mean() + softplus(-l_image(fake)).mean()       (equal weights, summed
           exactly as the official `(loss_Gmain.mean() + loss_Gimg_main.mean()).mul(gain)`)
  D main   softplus(l(fake)).mean() + softplus(-l(real)).mean(), for both heads, summed
  D R1     (γ/2)·Σ(∂l_motion/∂x_real)² per sample, gradient w.r.t. the RAW real pair (before DiffAugment;
           the ΔT channel included), plus (γ/2)·Σ(∂l_image/∂frames)² w.r.t. the AUGMENTED real frames
           the image head sees; the batch mean of each, summed. Lazy: every 16 steps with gain 16.

Every term is multiplied by `gain` (the phase interval: 1, or 16 for R1) before backward; the
trainer averages the gradients of accumulation rounds and ranks.  The R1 phase adds `logits * 0`
like the official code so that every parameter that reaches the logits gets a (zero) gradient:
Adam then steps those parameters too (decaying their second moment), exactly as officially.

Randomness is not drawn here: every function takes its inputs (latents, times, labels, DiffAugment
draws) from the caller, so the trainer controls the random streams (resume, multi-GPU splits).

The generator's synthesis is reached through one callable (`DiganLoss.synthesis`, by default
`G.synthesis`), the seam where a fast path (bf16 kernels with their backward) is swapped in.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Callable, Dict, Optional

import torch
import torch.nn.functional as F

from .augment import DIGAN_POLICY, AugmentParams, apply_params, join_pair, parse_policy, sample_params, split_pair

# (ws (B, num_ws, w_dim), Ts (B, 2), z_motion (B, w_dim)) -> frames (2B, 3, H, W), (b t) order
SynthesisFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


# ---- random inputs, drawn by the caller ----------------------------------------------------------

def sample_times(n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Two times per video, t ~ Beta(2, 1) and t ~ Beta(1, 2), sorted: (n, 2) float32 in [0, 1].

    Drawn by inverse CDF (Beta(2,1): √u, Beta(1,2): 1 - √u) from one uniform pair per video; the
    official code samples the same distributions with torch.distributions.Beta."""
    u = torch.rand(n, 2, generator=generator, dtype=torch.float32)
    t = torch.stack([u[:, 0].sqrt(), 1.0 - u[:, 1].sqrt()], dim=1)
    return t.sort(dim=1).values


@dataclass
class FakeInputs:
    """Everything the generator needs for B fake pairs."""
    z: torch.Tensor         # (B, z_dim) content code
    z_motion: torch.Tensor  # (B, w_dim) motion code
    Ts: torch.Tensor        # (B, 2) sorted frame times
    c: torch.Tensor         # (B, c_dim) one-hot labels; (B, 0) when unconditional

    def __getitem__(self, sl: slice) -> "FakeInputs":
        return FakeInputs(*(getattr(self, f.name)[sl] for f in fields(self)))

    def to(self, device) -> "FakeInputs":
        return FakeInputs(*(getattr(self, f.name).to(device) for f in fields(self)))


def slice_params(params: Optional[AugmentParams], sl: slice) -> Optional[AugmentParams]:
    return None if params is None else params.map(lambda t: t[sl])


def fake_pairs(frames: torch.Tensor, Ts: torch.Tensor) -> torch.Tensor:
    """frames (2B, 3, H, W) in (b t) order, Ts (B, 2) -> the discriminator's input (B, 7, H, W)
    [frame at t0, frame at t1, ΔT = t1 - t0 plane] (the official `convert`)."""
    B = Ts.shape[0]
    H, W = frames.shape[-2:]
    dt = (Ts[:, 1] - Ts[:, 0]).to(frames.dtype).view(B, 1, 1, 1).expand(B, 1, H, W)
    return join_pair(frames, dt)


# ---- the loss --------------------------------------------------------------------------------

class DiganLoss:
    """Accumulates gradients for one phase of one round; returns detached per-round statistics.

    G, D: the (unwrapped) networks; the caller sets requires_grad on the phase's module.
    synthesis: the generator's synthesis callable (the fast-path seam); default G.synthesis."""

    def __init__(self, G: torch.nn.Module, D: torch.nn.Module, r1_gamma: float = 1.0,
                 augment_policy: str = DIGAN_POLICY, synthesis: Optional[SynthesisFn] = None):
        self.G, self.D = G, D
        self.r1_gamma = float(r1_gamma)
        self.augment_policy = augment_policy
        self.policy_ops = parse_policy(augment_policy)
        self.synthesis: SynthesisFn = synthesis if synthesis is not None else G.synthesis

    def sample_augment(self, n: int, generator: Optional[torch.Generator] = None) -> Optional[AugmentParams]:
        """DiffAugment draws for n pairs (one per pair, shared by its two frames); None if no policy."""
        if not self.policy_ops:
            return None
        R = self.D.img_resolution
        return sample_params(n, R, R, self.augment_policy, generator)

    def run_G(self, fake: FakeInputs) -> torch.Tensor:
        """-> fake pairs (B, 7, H, W).  The mapping updates w_avg in training mode, as officially."""
        ws = self.G.mapping(fake.z, fake.c)                     # (B, num_ws, w_dim)
        frames = self.synthesis(ws, fake.Ts, fake.z_motion)     # (2B, 3, H, W)
        return fake_pairs(frames, fake.Ts)

    def run_D(self, x: torch.Tensor, c: torch.Tensor, aug: Optional[AugmentParams]):
        """x (B, 7, H, W) -> (motion logits (B, 1), image logits (2B, 1), augmented frames (2B, 3, H, W)).

        DiffAugment is applied to the pair's frames with one draw per pair; ΔT is left untouched."""
        if aug is not None:
            frames, dt = split_pair(x)
            x = join_pair(apply_params(frames, aug.to(x.device).per_frame(2)), dt)
        return self.D(x, c)

    def accumulate_G(self, fake: FakeInputs, aug: Optional[AugmentParams], gain: float) -> Dict[str, torch.Tensor]:
        """G main: non-saturating loss on both heads; backward with `gain`."""
        gen = self.run_G(fake)
        l_motion, l_image, _ = self.run_D(gen, fake.c, aug)
        loss_motion = F.softplus(-l_motion).mean()   # -log sigmoid(l)
        loss_image = F.softplus(-l_image).mean()
        (loss_motion + loss_image).mul(gain).backward()
        return {"G_motion": loss_motion.detach(), "G_image": loss_image.detach()}

    def accumulate_D(self, real: torch.Tensor, real_c: torch.Tensor, fake: FakeInputs,
                     aug_fake: Optional[AugmentParams], aug_real: Optional[AugmentParams],
                     gain: float) -> Dict[str, torch.Tensor]:
        """D main: fakes pushed down, reals pushed up, both heads; two backwards (fake, then real)."""
        gen = self.run_G(fake).detach()   # G's parameters do not require grad in this phase
        f_motion, f_image, _ = self.run_D(gen, fake.c, aug_fake)
        loss_fake_motion = F.softplus(f_motion).mean()
        loss_fake_image = F.softplus(f_image).mean()
        (loss_fake_motion + loss_fake_image).mul(gain).backward()

        r_motion, r_image, _ = self.run_D(real.detach(), real_c, aug_real)
        loss_real_motion = F.softplus(-r_motion).mean()
        loss_real_image = F.softplus(-r_image).mean()
        (loss_real_motion + loss_real_image).mul(gain).backward()
        return {"D_motion": (loss_fake_motion + loss_real_motion).detach(),
                "D_image": (loss_fake_image + loss_real_image).detach(),
                "score_real": r_motion.detach().mean(), "score_fake": f_motion.detach().mean()}

    def accumulate_R1(self, real: torch.Tensor, real_c: torch.Tensor, aug: Optional[AugmentParams],
                      gain: float) -> Dict[str, torch.Tensor]:
        """Lazy R1 on reals: motion head w.r.t. the raw pair, image head w.r.t. its augmented frames."""
        x = real.detach().requires_grad_(True)                             # (B, 7, H, W), before DiffAugment
        l_motion, l_image, frames = self.run_D(x, real_c, aug)
        # Two separate gradients: the image head's logits also depend on x (through the frames), so
        # d(l_motion + l_image)/dx would mix the heads; the motion head does not read `frames`.
        g_motion, = torch.autograd.grad(outputs=[l_motion.sum()], inputs=[x], create_graph=True)
        g_image, = torch.autograd.grad(outputs=[l_image.sum()], inputs=[frames], create_graph=True)
        r1_motion = g_motion.square().sum(dim=[1, 2, 3])                   # (B,)
        r1_image = g_image.square().sum(dim=[1, 2, 3])                     # (2B,)
        loss = ((l_motion * 0 + r1_motion[:, None] * (self.r1_gamma / 2)).mean()
                + (l_image * 0 + r1_image[:, None] * (self.r1_gamma / 2)).mean())
        loss.mul(gain).backward()
        return {"R1_motion": r1_motion.detach().mean(), "R1_image": r1_image.detach().mean()}
