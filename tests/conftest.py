"""Shared pytest fixtures: official fixtures from ../shared/fixtures (or $DIGAN_FIXTURES)."""
import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("DIGAN_FIXTURES", REPO.parent / "shared" / "fixtures"))


def fixture_path(name: str) -> Path:
    path = FIXTURES / name
    if not path.exists():
        pytest.skip(f"official fixture {path} not found (set DIGAN_FIXTURES)")
    return path


@pytest.fixture(scope="session")
def official_g():
    """(Generator loaded with the official 64px small weights, dict of fixture tensors)."""
    from safetensors.torch import load_file

    from digan.config import generator_preset
    from digan.networks import Generator

    fx = load_file(str(fixture_path("official_digan_64_small.safetensors")))
    G = Generator(generator_preset("small-64")).eval().requires_grad_(False)
    G.load_state_dict({k[2:]: v for k, v in fx.items() if k.startswith("G.")}, strict=True)
    return G, fx


@pytest.fixture(scope="session")
def official_d():
    from safetensors.torch import load_file

    from digan.config import discriminator_preset
    from digan.networks import Discriminator

    fx = load_file(str(fixture_path("official_digan_D_64_small.safetensors")))
    D = Discriminator(discriminator_preset("small-64")).eval().requires_grad_(False)
    D.load_state_dict({k[2:]: v for k, v in fx.items() if k.startswith("D.")}, strict=True)
    return D, fx


def perturbed_generator(preset: str, seed: int):
    """A random generator of a preset whose biases are perturbed by 0.1 N(0, 1), so that no
    parameter sits at its initial constant (as in the official fixtures)."""
    from digan.config import generator_preset
    from digan.networks import Generator

    torch.manual_seed(seed)
    G = Generator(generator_preset(preset)).eval()
    with torch.no_grad():
        for n, p in G.named_parameters():
            if n.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    return G


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()
