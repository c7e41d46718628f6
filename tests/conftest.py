"""Shared pytest set-up and fixtures: TRITON_INTERPRET, the `gpu` marker, the fixed-order
interpreter dot, and the official fixtures from ../shared/fixtures (or $DIGAN_FIXTURES)."""
import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("DIGAN_FIXTURES", REPO.parent / "shared" / "fixtures"))


def pytest_configure(config):
    # Triton's kernels run in its CPU interpreter unless told otherwise (TRITON_INTERPRET=0 on a
    # CUDA machine runs them compiled). Set once here, before any test module imports a kernel:
    # Triton picks interpreter or compiler when a @triton.jit decorator runs.
    os.environ.setdefault("TRITON_INTERPRET", "1")


def _compiled_gpu_available() -> bool:
    from kernels._common import interpreter_enabled
    return torch.cuda.is_available() and not interpreter_enabled()


def pytest_collection_modifyitems(config, items):
    """`gpu` tests assert properties of the compiled kernels: skip them without a CUDA device or
    under TRITON_INTERPRET=1 (on a GPU machine: TRITON_INTERPRET=0 pytest -m gpu)."""
    if _compiled_gpu_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device and TRITON_INTERPRET=0 (compiled kernels)")
    tests_dir = Path(__file__).resolve().parent
    for item in items:
        if "gpu" in item.keywords and tests_dir in Path(item.path).resolve().parents:
            item.add_marker(skip)


@pytest.fixture
def fixed_order_dot(monkeypatch):
    """Under TRITON_INTERPRET=1 the interpreter's tl.dot becomes a fixed-order fp64 sum (see
    tests/kernel_utils.patch_interpreter_dot) for this test, so kernel tests check the kernel and
    not the host BLAS behind numpy's matmul. No-op for compiled kernels. Yields whether active."""
    from tests.kernel_utils import patch_interpreter_dot
    yield patch_interpreter_dot(monkeypatch)


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


def saved_checkpoint(tmp_path_factory, preset: str, seed: int):
    """(path, G): a perturbed generator of a preset saved in our format in a fresh temp folder."""
    from digan.checkpoint import save_generator
    G = perturbed_generator(preset, seed)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    save_generator(G, path)
    return path, G


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.fixture(scope="session")
def position_independent_host_math():
    """For tests of the torch (CPU) path's tile identity: they rest on the host's BLAS and vector
    math giving a row the same bits wherever it sits (checked by test_platform_canary.py). Where
    that fails these tests skip, naming the cause, and the canary fails instead: the failure is
    your BLAS's, not the engine's."""
    from tests.kernel_utils import host_math_problems
    bad = host_math_problems()
    if bad:
        pytest.skip("your BLAS / vector math is not row-position independent on this host "
                    f"(see tests/test_platform_canary.py): {bad[0]}")
