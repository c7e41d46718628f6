"""to_uint8 and rgb_to_yuv420: Triton (interpreter) and torch give identical bytes, and both equal
an fp64 statement of the formulas away from rounding boundaries; argument checks; custom ops."""
import numpy as np
import pytest
import torch

from kernels import rgb_to_yuv420, to_uint8
from tests.kernel_utils import (
    BACKENDS,
    assert_bitwise_equal,
    assert_uint8_matches,
    device_for,
    gpu_compile_stats,
    needs_triton,
    run_poisoned,
)

KR, KB = 0.2126, 0.0722
KG = 1 - KR - KB


# ---- to_uint8 -----------------------------------------------------------------------------------

def away_from_boundaries(shape, seed):
    """Floats whose (x + 1) * 127.5 lies within 0.3 of an integer (0.2 from any .5 boundary), plus
    out-of-range values that must clamp to 0 and 255."""
    g = torch.Generator().manual_seed(seed)
    k = torch.randint(0, 256, shape, generator=g).double()
    d = (torch.rand(shape, generator=g, dtype=torch.float64) - 0.5) * 0.6
    x = ((k + d) / 127.5 - 1.0).float().reshape(-1)
    if x.numel() >= 4:
        x[:4] = torch.tensor([-1.7, -1.004, 1.004, 3.0])
    return x.reshape(shape)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(7, 3), (2, 3, 5, 3), (1,)])
def test_to_uint8_exact(shape, dtype, backend):
    x = away_from_boundaries(shape, seed=len(shape)).to(dtype)
    out = run_poisoned(lambda: to_uint8(x.to(device_for(backend)), backend=backend))
    assert out.shape == x.shape and out.dtype == torch.uint8
    v = (x.double() + 1.0) * 127.5             # the bf16 case rounds the input first: use its value
    # fp32 evaluation of (x + 1) * 127.5 is within 2 ulps of 255 (< 1e-4) of v.
    exact = assert_uint8_matches(out, v, 1e-4)
    if dtype == torch.float32:
        assert exact == out.numel()
    if x.numel() >= 4:
        assert out.reshape(-1)[:4].tolist() == [0, 0, 255, 255], "out-of-range values clamp"


@needs_triton
def test_to_uint8_backends_identical():
    x = torch.randn(3, 17, 19, 3, generator=torch.Generator().manual_seed(0)) * 0.8
    a = to_uint8(x, backend="torch")
    b = to_uint8(x.to(device_for("triton")), backend="triton").cpu()
    assert_bitwise_equal(b, a, "to_uint8 triton vs torch")


# ---- rgb_to_yuv420 ------------------------------------------------------------------------------

def naive_yuv420(frames):
    """fp64 BT.709 limited range, I420 built plane by plane with explicit 2x2 blocks."""
    f = frames.numpy().astype(np.float64)
    F, H, W, _ = f.shape
    R, G, B = f[..., 0], f[..., 1], f[..., 2]
    Y = 16 + 219 * (KR * R + KG * G + KB * B) / 255
    avg = np.zeros((F, H // 2, W // 2, 3))
    for i in range(H // 2):
        for j in range(W // 2):
            avg[:, i, j] = f[:, 2 * i:2 * i + 2, 2 * j:2 * j + 2].mean(axis=(1, 2))
    Ra, Ga, Ba = avg[..., 0], avg[..., 1], avg[..., 2]
    Yp = KR * Ra + KG * Ga + KB * Ba
    U = 128 + 224 * (Ba - Yp) / (2 * (1 - KB)) / 255
    V = 128 + 224 * (Ra - Yp) / (2 * (1 - KR)) / 255
    out = np.concatenate([Y.reshape(F, -1), U.reshape(F, -1), V.reshape(F, -1)], axis=1)
    return torch.from_numpy(out.reshape(F, H * 3 // 2, W))


def make_frames():
    g = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 256, (4, 6, 10, 3), generator=g, dtype=torch.uint8)
    frames[0] = 0                                               # black
    frames[1] = 255                                             # white
    frames[2, :, :5] = torch.tensor([255, 0, 0], dtype=torch.uint8)   # pure red / blue halves
    frames[2, :, 5:] = torch.tensor([0, 0, 255], dtype=torch.uint8)
    return frames


@pytest.mark.parametrize("backend", BACKENDS)
def test_rgb_to_yuv420_matches_fp64(backend):
    frames = make_frames()
    out = run_poisoned(lambda: rgb_to_yuv420(frames.to(device_for(backend)), backend=backend))
    assert out.shape == (4, 9, 10) and out.dtype == torch.uint8
    # fp32 evaluation: coefficients rounded to fp32 and 4 roundings of values <= 255: < 1e-4.
    assert_uint8_matches(out, naive_yuv420(frames), 1e-4)
    out = out.cpu()
    assert (out[0, :6] == 16).all() and (out[0, 6:] == 128).all(), "black: Y 16, U = V = 128"
    assert (out[1, :6] == 235).all() and (out[1, 6:] == 128).all(), "white: Y 235, U = V = 128"
    assert out[2, 0, 0] == 63 and out[2, 0, 9] == 32, "BT.709 luma of pure red / blue"


@needs_triton
def test_rgb_to_yuv420_backends_identical():
    frames = torch.randint(0, 256, (3, 10, 14, 3), generator=torch.Generator().manual_seed(1),
                           dtype=torch.uint8)
    a = rgb_to_yuv420(frames, backend="torch")
    b = rgb_to_yuv420(frames.to(device_for("triton")), backend="triton").cpu()
    assert_bitwise_equal(b, a, "yuv triton vs torch")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("frames,match", [
    (torch.zeros(1, 5, 4, 3, dtype=torch.uint8), "even"),
    (torch.zeros(1, 4, 4, 4, dtype=torch.uint8), "shape"),
    (torch.zeros(4, 4, 3, dtype=torch.uint8), "4-D"),
    (torch.zeros(1, 4, 4, 3), "dtype"),
])
def test_rgb_to_yuv420_value_errors(frames, match, backend):
    with pytest.raises(ValueError, match=match):
        rgb_to_yuv420(frames, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_to_uint8_value_errors(backend):
    with pytest.raises(ValueError, match="dtype"):
        to_uint8(torch.zeros(3, dtype=torch.float64), backend=backend)
    with pytest.raises(ValueError, match="backend"):
        to_uint8(torch.zeros(3), backend="gpu")


def test_custom_ops_fake_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode():
        y = torch.ops.digan.rgb_to_yuv420(torch.empty(2, 4, 6, 3, dtype=torch.uint8))
        u = torch.ops.digan.to_uint8(torch.empty(5, 3))
    assert y.shape == (2, 6, 6) and y.dtype == torch.uint8
    assert u.shape == (5, 3) and u.dtype == torch.uint8


@needs_triton
def test_custom_ops_opcheck():
    dev = device_for("triton")
    torch.library.opcheck(torch.ops.digan.to_uint8.default, (torch.randn(4, 3, device=dev),))
    frames = torch.randint(0, 256, (1, 4, 6, 3), dtype=torch.uint8, device=dev)
    torch.library.opcheck(torch.ops.digan.rgb_to_yuv420.default, (frames,))


@pytest.mark.slow
@needs_triton
def test_compiles_for_hopper():
    """Compiles for sm_90 (no GPU needed) without contracting mul + add into FMAs (bytes equal to
    the torch reference depend on it)."""
    stats = gpu_compile_stats("rgb")
    assert stats["yuv420"]["fma.rn"] == 0 and stats["to_uint8"]["fma.rn"] == 0, stats
