"""The default model of `digan render`.

If a trained demo model ships in digan/assets/ (see README), it is the default. Otherwise the
default is the official 128x128 architecture with UNTRAINED, deterministic weights drawn from a
fixed seed: it renders abstract moving patterns, not videos of anything. w_avg is set to the mean
of 4096 mapped codes from the same seed so that truncation (psi < 1) behaves as for a trained
model.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Tuple

import torch

from .config import generator_preset
from .networks import Generator

DEFAULT_SEED = 2022
ASSETS = Path(__file__).resolve().parent / "assets"
DEMO_MODEL = ASSETS / "demo_generator.safetensors"


def untrained_generator(preset: str = "digan-128", seed: int = DEFAULT_SEED) -> Generator:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        G = Generator(generator_preset(preset))
        with torch.no_grad():
            z = torch.randn(4096, G.z_dim)
            G.mapping.w_avg.copy_(G.mapping(z, None, skip_w_avg_update=True)[:, 0].mean(0))
    return G.eval().requires_grad_(False)


def default_generator() -> Tuple[Generator, str]:
    """(generator, description)."""
    if DEMO_MODEL.exists():
        from .checkpoint import load_generator
        return load_generator(DEMO_MODEL), f"trained demo model ({DEMO_MODEL.name})"
    return untrained_generator(), f"UNTRAINED official 128x128 architecture, fixed seed {DEFAULT_SEED}"


def load_or_default(path: Optional[str]) -> Tuple[Generator, str]:
    if path is None:
        return default_generator()
    from .checkpoint import load_generator
    return load_generator(path), str(path)
