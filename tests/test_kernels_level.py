"""fmm_level (one fused kernel per level): Triton (interpreter) against the per-layer Triton chain
(bitwise), the per-layer torch chain (the spec) and an fp64 numpy statement with a propagated
rounding bound; tile invariance; poisoned outputs; argument checks; dispatch."""
import math

import numpy as np
import pytest
import torch

from kernels.level import fmm_level, fmm_level_chain, fmm_level_reference, fmm_level_triton, level_config
from kernels.linear import SQRT2
from tests.kernel_utils import (
    BACKENDS,
    U32,
    assert_bitwise_equal,
    assert_uint8_matches,
    assert_within,
    device_for,
    needs_triton,
    run_poisoned,
)

# Interpreter-mode tl.dot is a fixed-order sum here (tests/conftest.fixed_order_dot): the tests
# check the kernel, not the host BLAS behind numpy's matmul.
pytestmark = pytest.mark.usefixtures("fixed_order_dot")

ARGS = ("w_emb", "bias0", "conv_W", "conv_b", "rgb_W", "rgb_b")


def make_level(seed, *, C, E, L, F, h, w, precision="fp32", pre=True, img=True, clamp=2.5,
               rgb_clamp=1.5, R=3):
    """Random non-zero inputs of one level call: (positional args, keyword args), CPU tensors."""
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=g)                        # noqa: E731
    dt = torch.bfloat16 if precision == "bf16" else torch.float32
    M = F * h * w
    args = [(rnd(C, 2 * E) / math.sqrt(2 * E)).to(dt), rnd(C) * 0.3,
            (rnd(L, C, C) * 1.2 / math.sqrt(C)).to(dt), rnd(L, C) * 0.3,
            (rnd(R, C) / math.sqrt(C)).to(dt), rnd(R) * 0.2]
    kw = dict(emb_A=rnd(E, 2) * 3.0, emb_b=rnd(F, E), xs=torch.rand(w, generator=g) * 3 - 1.5,
              ys=torch.rand(h, generator=g) * 3 - 1.5, clamp=clamp, rgb_clamp=rgb_clamp,
              precision=precision)
    if pre:
        mp = max(1, M // 4)
        kw.update(pre_add=rnd(mp, C), pre_index=torch.randint(0, mp, (M,), generator=g))
    if img:
        mq = max(1, M // 4 + 1)
        kw.update(img=rnd(mq, R) * 0.5, img_index=torch.randint(0, mq, (M,), generator=g))
    return args, kw


def to_device(args, kw, device):
    mv = lambda v: v.to(device) if isinstance(v, torch.Tensor) else v   # noqa: E731
    return [mv(a) for a in args], {k: mv(v) for k, v in kw.items()}


def level_fp64(args, kw, gain=SQRT2) -> torch.Tensor:
    """fp64 numpy statement of the level (M, R): the embedding is sin/cos of the exact phase
    A0*x + A1*y + b of the fp32 inputs, then every layer in fp64 (no rounding at all)."""
    w_emb, b0, conv_W, conv_b, rgb_W, rgb_b = [a.double().numpy() for a in args]
    A, b = kw["emb_A"].double().numpy(), kw["emb_b"].double().numpy()
    xs, ys = kw["xs"].double().numpy(), kw["ys"].double().numpy()
    F, E = b.shape
    h, w = len(ys), len(xs)
    f, rem = np.divmod(np.arange(F * h * w), h * w)
    i, j = np.divmod(rem, w)
    phase = A[None, :, 0] * xs[j][:, None] + A[None, :, 1] * ys[i][:, None] + b[f]     # (M, E)

    def act(y):
        y = np.where(y > 0, y, 0.2 * y) * gain
        return y if kw.get("clamp") is None else np.clip(y, -kw["clamp"], kw["clamp"])

    y = np.concatenate([np.sin(phase), np.cos(phase)], axis=1) @ w_emb.T + b0
    if kw.get("pre_add") is not None:
        y = y + kw["pre_add"].double().numpy()[kw["pre_index"].numpy()]
    x = act(y)
    for Wl, bl in zip(conv_W, conv_b):
        x = act(x @ Wl.T + bl)
    y = x @ rgb_W.T + rgb_b
    if kw.get("rgb_clamp") is not None:
        y = np.clip(y, -kw["rgb_clamp"], kw["rgb_clamp"])
    if kw.get("img") is not None:
        y = y + kw["img"].double().numpy()[kw["img_index"].numpy()]
    return torch.from_numpy(y)


# fp32 tolerance, relative to the output's rms: the project's fp32 parity bound (issue 11: <= 1e-5
# against the official fixtures). A worst-case bound propagated through L + 2 layers (|W| row sums
# times the gain per layer) is ~1e-2 here, useless; the measured error of both fused and per-layer
# paths is 2e-7 .. 1e-6 of the rms at these shapes (a few fp32 roundings per layer), 10x below.
TOL_FP32 = 1e-5
# bf16: the criterion for bf16 frames, uint8 PSNR against fp32 >= 40 dB (measured here
# 55-57 dB at these shapes: each layer rounds its operands and activation to 8 significant bits).
MIN_PSNR_BF16 = 40.0


def to_uint8_fp64(y: torch.Tensor) -> torch.Tensor:
    return torch.round(((y + 1) * 127.5).clamp(0, 255))


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float((a.double() - b.double()).pow(2).mean())
    return math.inf if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


SHAPES = [  # (C, E, L, F, h, w): odd row counts, partial chunks, C not a power of 2, no extra conv
    (32, 16, 2, 2, 5, 7),
    (64, 24, 2, 3, 3, 11),
    (48, 16, 1, 2, 9, 9),
    (32, 8, 0, 1, 13, 5),
]


# ---- against the per-layer chains and the fp64 statement -----------------------------------------

@needs_triton
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_fused_equals_per_layer_triton_chain(shape, precision):
    """Same K chunks in the same order, same epilogue operations, activations rounded where the
    chain stores them: the per-layer Triton chain's bits, fp32 image and uint8 alike."""
    C, E, L, F, h, w = shape
    dev = device_for("triton")
    args, kw = to_device(*make_level(C + E + L, C=C, E=E, L=L, F=F, h=h, w=w, precision=precision), dev)
    for u8 in (False, True):
        got = run_poisoned(lambda: fmm_level_triton(*args, out_uint8=u8, **kw))
        want = fmm_level_chain(*args, out_uint8=u8, backend="triton", **kw)
        assert_bitwise_equal(got, want, f"fused vs per-layer Triton chain ({precision}, uint8={u8})")


@needs_triton
@pytest.mark.parametrize("precision", ["tf32", "fp32-ieee"])
def test_fused_equals_chain_other_fp32_modes(precision):
    """tf32 (operands rounded in the kernel) and fp32-ieee (the FMA dot) too: symmetric products,
    so the transposed convs keep the chain's bits without _mma_t's reordering."""
    C, E, L, F, h, w = SHAPES[1]
    dev = device_for("triton")
    args, kw = to_device(*make_level(C + E, C=C, E=E, L=L, F=F, h=h, w=w, precision=precision), dev)
    got = run_poisoned(lambda: fmm_level_triton(*args, out_uint8=True, **kw))
    want = fmm_level_chain(*args, out_uint8=True, backend="triton", **kw)
    assert_bitwise_equal(got, want, f"fused vs per-layer Triton chain ({precision})")


@needs_triton
@pytest.mark.parametrize("shape", SHAPES[:3])
def test_fused_fp32_against_fp64_and_reference(shape):
    C, E, L, F, h, w = shape
    args, kw = make_level(7 * C + E, C=C, E=E, L=L, F=F, h=h, w=w)
    y64 = level_fp64(args, kw)
    tol = TOL_FP32 * float(y64.pow(2).mean().sqrt())
    dargs, dkw = to_device(args, kw, device_for("triton"))
    got = run_poisoned(lambda: fmm_level_triton(*dargs, **dkw)).cpu()
    assert_within(got, y64, tol, "fused fp32 vs fp64 statement")
    ref = fmm_level_reference(*args, **kw)
    assert_within(ref, y64, tol, "torch reference fp32 vs fp64 statement")
    # Both lie within tol of the exact value, so within 2 tol of each other.
    assert_within(got, ref, 2 * tol, "fused fp32 vs torch reference")
    u8 = run_poisoned(lambda: fmm_level_triton(*dargs, out_uint8=True, **dkw)).cpu()
    # The kernel's uint8 is the fp32 image converted in fp32 (the same operations, exactly)...
    v = ((got + 1.0) * 127.5).clamp(0.0, 255.0).round()
    assert_bitwise_equal(u8, v.to(torch.uint8), "uint8 vs the fp32 image converted")
    # ... so against the exact value it is rint() wherever that is farther than the image's
    # tolerance (x 127.5) plus the conversion's two fp32 roundings (<= 2 ulp of 256) from a .5.
    checked = assert_uint8_matches(u8, (y64 + 1) * 127.5, 127.5 * tol + 2 * 256 * U32)
    assert checked > 0.9 * u8.numel()


@needs_triton
@pytest.mark.parametrize("shape", SHAPES[1:3])
def test_fused_bf16_against_fp64(shape):
    """bf16 (operands, folded weights and activations rounded to bf16): uint8 frames against the
    exact ones by PSNR, fused and torch reference alike."""
    C, E, L, F, h, w = shape
    args, kw = make_level(11, C=C, E=E, L=L, F=F, h=h, w=w, precision="bf16")
    exact = to_uint8_fp64(level_fp64(args, kw))
    dargs, dkw = to_device(args, kw, device_for("triton"))
    got = fmm_level_triton(*dargs, out_uint8=True, **dkw).cpu()
    assert psnr(got, exact) >= MIN_PSNR_BF16
    assert psnr(fmm_level_reference(*args, out_uint8=True, **kw), exact) >= MIN_PSNR_BF16


# ---- tiles ----------------------------------------------------------------------------------------

def _sub_tile(kw, F, h, w, frames, rows):
    """Keyword args of the sub-tile frames f0:f1, tile rows i0:i1 (all columns) of a level call."""
    (f0, f1), (i0, i1) = frames, rows
    sub = dict(kw, emb_b=kw["emb_b"][f0:f1], ys=kw["ys"][i0:i1])
    for k in ("pre_index", "img_index"):
        sub[k] = kw[k].view(F, h, w)[f0:f1, i0:i1].reshape(-1)
    return sub


@needs_triton
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_tile_invariance(precision):
    """Rows rendered in another tile (other frames, other first row: other row blocks of the
    kernel, other positions inside a block) keep their bits."""
    C, E, L, F, h, w = 32, 16, 2, 3, 11, 13           # 143 rows per frame: 3 blocks of 64
    dev = device_for("triton")
    args, kw = to_device(*make_level(5, C=C, E=E, L=L, F=F, h=h, w=w, precision=precision), dev)
    for u8 in (False, True):
        whole = fmm_level_triton(*args, out_uint8=u8, **kw).view(F, h, w, 3)
        for frames, rows in (((1, 3), (3, 10)), ((0, 1), (1, 11)), ((2, 3), (0, 11))):
            part = fmm_level_triton(*args, out_uint8=u8, **_sub_tile(kw, F, h, w, frames, rows))
            want = whole[frames[0]:frames[1], rows[0]:rows[1]].reshape(-1, 3)
            assert_bitwise_equal(part, want, f"sub-tile {frames} x {rows} ({precision}, uint8={u8})")


@needs_triton
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_first_level_without_parent(precision):
    """The first level (b4: conv0 is embedding-only, no parent part, no parent image): the
    HAS_PRE / HAS_POST-off variant has the chain's bits too."""
    dev = device_for("triton")
    args, kw = to_device(*make_level(17, C=64, E=24, L=1, F=2, h=4, w=4, precision=precision, pre=False,
                                     img=False), dev)
    for u8 in (False, True):
        got = run_poisoned(lambda: fmm_level_triton(*args, out_uint8=u8, **kw))
        want = fmm_level_chain(*args, out_uint8=u8, backend="triton", **kw)
        assert_bitwise_equal(got, want, f"first level, fused vs chain ({precision}, uint8={u8})")


@needs_triton
@pytest.mark.parametrize("block_m,num_warps", [(16, 2), (16, 4), (32, 4), (64, 8)])
def test_row_block_changes_no_bits(monkeypatch, block_m, num_warps):
    """Every BLOCK_M / warps level_config picks for some arch (sm_80 takes 16 x 2 at C = 256):
    the per-layer chain's bits (the K chunks do not depend on them)."""
    import dataclasses

    import kernels.level as k_level
    saved = k_level.level_config
    monkeypatch.setattr(k_level, "level_config", lambda *a, **k: dataclasses.replace(
        saved(*a, **k), BLOCK_M=block_m, num_warps=num_warps))
    C, E, L, F, h, w = 48, 16, 2, 2, 5, 7
    for precision in ("fp32", "bf16"):
        args, kw = to_device(*make_level(23, C=C, E=E, L=L, F=F, h=h, w=w, precision=precision),
                             device_for("triton"))
        got = run_poisoned(lambda: fmm_level_triton(*args, out_uint8=True, **kw))
        want = fmm_level_chain(*args, out_uint8=True, backend="triton", **kw)
        assert_bitwise_equal(got, want, f"BLOCK_M={block_m}, {num_warps} warps ({precision})")


@needs_triton
@pytest.mark.parametrize("precision,programs,block_m", [("fp32", 1, 16), ("fp32", 7, 16), ("bf16", 3, 64),
                                                        ("bf16", 7, 16)])
def test_scratch_design_changes_no_bits(monkeypatch, programs, block_m, precision):
    """The scratch design (activations in per-program buffers; fp32 and tf32 always, bf16 where
    the registers spill, e.g. sm_80's b64) forced for both precisions: the per-layer chain's
    bits whatever the number of programs (each walking several row blocks: 10 blocks of 16 rows
    here, or 2 of 64) and the rows per block, the image and act_out's activation; poisoned."""
    import dataclasses

    import kernels.level as k_level
    saved = k_level.level_config
    monkeypatch.setattr(k_level, "_fits_registers", lambda *a: False)
    monkeypatch.setattr(k_level, "_scratch_programs", lambda device: programs)   # on a GPU too
    monkeypatch.setattr(k_level, "level_config", lambda *a, **k: dataclasses.replace(saved(*a, **k), BLOCK_M=block_m))
    assert saved(48, 16, 3, precision).scratch if precision == "fp32" else True
    for (C, E, L, F, h, w), act_out in (((48, 16, 2, 2, 5, 7), False), ((32, 8, 0, 1, 13, 5), True),
                                        ((48, 16, 1, 2, 9, 9), True)):
        args, kw = to_device(*make_level(31 + L, C=C, E=E, L=L, F=F, h=h, w=w, precision=precision),
                             device_for("triton"))
        for u8 in ((False, True) if not act_out else (False,)):
            if act_out:
                img = run_poisoned(lambda: fmm_level_triton(*args, act_out=True, **kw)[0])
                act = run_poisoned(lambda: fmm_level_triton(*args, act_out=True, **kw)[1])
                want_img, want_act = fmm_level_chain(*args, act_out=True, backend="triton", **kw)
                assert_bitwise_equal(act, want_act, f"scratch act_out ({precision}, L={L})")
            else:
                img = run_poisoned(lambda: fmm_level_triton(*args, out_uint8=u8, **kw))
                want_img = fmm_level_chain(*args, out_uint8=u8, backend="triton", **kw)
            assert_bitwise_equal(img, want_img, f"scratch design ({precision}, L={L}, uint8={u8})")


# ---- out=: the frame buffer view ------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["triton", "chain-triton", "chain-torch"])
@pytest.mark.parametrize("u8", [False, True])
def test_out_view_into_frame_buffer(backend, u8):
    """out= a (F, h, w, 3) crop of a poisoned (frames, H, W, 3) buffer: exactly the view's
    elements are written, with the bits of the returned-tensor path."""
    if backend != "chain-torch":
        if "triton" not in BACKENDS:
            pytest.skip("triton not installed, or neither interpreter nor CUDA")
    dev = device_for("torch" if backend == "chain-torch" else "triton")
    C, E, L, F, h, w = 32, 16, 2, 2, 5, 7
    args, kw = to_device(*make_level(29, C=C, E=E, L=L, F=F, h=h, w=w, precision="bf16"), dev)
    if backend == "triton":
        run = lambda **o: fmm_level_triton(*args, out_uint8=u8, **kw, **o)              # noqa: E731
    else:
        be = backend.split("-")[1]
        run = lambda **o: fmm_level_chain(*args, out_uint8=u8, backend=be, **kw, **o)  # noqa: E731
    want = run().view(F, h, w, 3)
    dt = torch.uint8 if u8 else torch.float32
    poison = 0xAB if u8 else float("nan")
    buf = torch.full((F + 1, h + 4, w + 5, 3), poison, dtype=dt, device=dev)
    view = buf[1:, 3:3 + h, 2:2 + w]                                     # frames 1.., rows 3.., cols 2..
    assert not view.is_contiguous()
    got = run(out=view)
    assert got.data_ptr() == view.data_ptr()
    assert_bitwise_equal(view, want, f"out= view ({backend}, uint8={u8})")
    rest = torch.ones_like(buf, dtype=torch.bool)
    rest[1:, 3:3 + h, 2:2 + w] = False
    untouched = buf[rest]
    assert (untouched == poison).all() if u8 else untouched.isnan().all(), "wrote outside the view"


# ---- act_out: a level below the top ---------------------------------------------------------------

@needs_triton
@pytest.mark.parametrize("shape", [SHAPES[2], SHAPES[3]])                 # L = 1 (b64's), L = 0
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_act_out_is_the_chains_last_activation(shape, precision):
    """act_out=True also stores the last conv's activation (the next level's split conv0 reads
    it): every element written (two poisons), the per-layer Triton chain's bits, in the compute
    dtype; the image is the one without act_out."""
    C, E, L, F, h, w = shape
    dev = device_for("triton")
    args, kw = to_device(*make_level(7 + C + L, C=C, E=E, L=L, F=F, h=h, w=w, precision=precision), dev)
    img = run_poisoned(lambda: fmm_level_triton(*args, act_out=True, **kw)[0])
    act = run_poisoned(lambda: fmm_level_triton(*args, act_out=True, **kw)[1])
    want_img, want_act = fmm_level_chain(*args, act_out=True, backend="triton", **kw)
    assert act.shape == (F * h * w, C) and act.dtype == (torch.bfloat16 if precision == "bf16" else torch.float32)
    assert float(act.float().abs().amax()) > 0.1, "the activation is degenerate: the comparison would say little"
    assert_bitwise_equal(act, want_act, f"act_out vs the chain's last activation ({precision})")
    assert_bitwise_equal(img, want_img, f"image with act_out ({precision})")
    assert_bitwise_equal(img, fmm_level_triton(*args, **kw), f"image with and without act_out ({precision})")
    # The dispatcher: on CPU tensors 'auto' runs the torch chain, which returns the same pair.
    got = fmm_level(*args, act_out=True, backend="triton", **kw)
    assert isinstance(got, tuple) and len(got) == 2
    assert_bitwise_equal(got[1], want_act, "fmm_level(act_out=True)")


def test_act_out_checks():
    args, kw = make_level(2, C=16, E=8, L=1, F=1, h=2, w=3)
    with pytest.raises(ValueError, match="act_out must be a bool"):
        fmm_level(*args, act_out=1, backend="torch", **kw)
    with pytest.raises(ValueError, match="out= is for the top level"):
        fmm_level(*args, act_out=True, backend="torch", out=torch.empty(1, 2, 3, 3), **kw)
    img, act = fmm_level(*args, act_out=True, backend="torch", **kw)
    assert act.shape == (6, 16) and img.shape == (6, 3)


# ---- dispatch, configuration, checks --------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_dispatch(backend):
    dev = device_for(backend)
    args, kw = to_device(*make_level(3, C=32, E=8, L=1, F=1, h=3, w=5, pre=False, img=False), dev)
    got = fmm_level(*args, backend=backend, **kw)
    want = (fmm_level_triton(*args, **kw) if backend == "triton"
            else fmm_level_chain(*args, backend="torch", **kw))
    assert_bitwise_equal(got, want, f"fmm_level(backend={backend!r})")
    assert got.shape == (15, 3) and got.dtype == torch.float32
    if dev.type == "cpu":   # 'auto' on CPU tensors: the torch chain (the CPU path)
        assert_bitwise_equal(fmm_level(*args, **kw), fmm_level_reference(*args, **kw), "auto on CPU")


def test_config_keyed_on_shape():
    """K steps are the per-layer kernel's; nothing depends on the rows."""
    from kernels.linear import _triton_config
    for p in ("fp32", "tf32", "bf16"):
        for C in (128, 256, 512):
            for arch in (80, 90):
                for L in (0, 2):
                    # BLOCK_M and the warps follow the arch and L; the K steps never do.
                    cfg = level_config(C, 128, 3, p, arch, L)
                    assert cfg.BLOCK_C == _triton_config(C, 0, C, p)["BLOCK_K"]
                    assert cfg.BLOCK_E == _triton_config(0, 128, C, p)["BLOCK_K"]
                    assert C // cfg.BLOCK_C <= 16
                    # the register design keeps the activation as chunks: a column tile is one
                    assert cfg.scratch or cfg.BLOCK_N == cfg.BLOCK_C
                    assert cfg.scratch == (p != "bf16" or (arch == 80 and C == 512 and L > 0))


@needs_triton
def test_argument_checks():
    dev = device_for("triton")
    args, kw = to_device(*make_level(1, C=32, E=8, L=1, F=1, h=2, w=3), dev)

    def call(**over):
        a = dict(zip(ARGS, args))
        k = dict(kw)
        for name, v in over.items():
            (a if name in a else k)[name] = v
        return fmm_level_triton(*[a[n] for n in ARGS], **k)

    cases = [
        (dict(conv_W=args[2][:, :, :16]), "conv_W must have shape"),
        (dict(conv_b=args[3][:, :16]), "conv_b must have shape"),
        (dict(rgb_W=torch.zeros(17, 32, device=dev)), "rgb_W must have 1..16 rows"),
        (dict(rgb_b=args[5][:2]), "rgb_b must have shape"),
        (dict(emb_A=None), "needs the embedding"),
        (dict(img=None), "img_index given without img"),
        (dict(img_index=kw["img_index"][:-1]), "img_index must have shape"),
        (dict(img_index=kw["img_index"] + 100), "img_index holds values"),
        (dict(pre_index=kw["pre_index"] - 10), "pre_index holds values"),
        (dict(rgb_clamp=-1.0), "rgb_clamp must be"),
        (dict(out_uint8=1), "out_uint8 must be a bool"),
        (dict(precision="fp16"), "precision must be one of"),
        (dict(bias0=None), "bias0"),
    ]
    for over, msg in cases:
        with pytest.raises(ValueError, match=msg):
            call(**over)
    wide, wkw = to_device(*make_level(2, C=520, E=8, L=0, F=1, h=1, w=2, pre=False, img=False), dev)
    with pytest.raises(ValueError, match="at most 512 channels"):
        fmm_level_triton(*wide, **wkw)
    buf = torch.zeros(1, 2, 3, 3, device=dev)                          # the (F, h, w, R) tile
    out_cases = [
        (dict(out=buf[:, :1]), "out must have shape"),
        (dict(out=buf.to(torch.uint8)), "out must have dtype"),
        (dict(out=buf.to(torch.uint8), out_uint8=False), "out must have dtype"),
        (dict(out=buf, out_uint8=True), "out must have dtype"),
        (dict(out=torch.zeros(1, 2, 3, 6, device=dev)[..., ::2]), "unit stride across colours"),
        (dict(out=torch.zeros(1, 2, 1, 3, device=dev).expand(1, 2, 3, 3)), "must not overlap"),
        (dict(out=buf[0]), "out must be 4-D"),
    ]
    for over, msg in out_cases:
        with pytest.raises(ValueError, match=msg):
            call(**over)


def test_spill_free_rule_matches_the_compile_report():
    """fused_level_spill_free (what the renderer fuses) says yes exactly for the variants that
    bench/RESULTS.md's compile report (python -m kernels.compile_level) lists as compiled
    without spills, and no for those that spilled."""
    import pathlib
    import re

    from kernels.level import fused_level_spill_free
    text = (pathlib.Path(__file__).resolve().parents[1] / "bench" / "RESULTS.md").read_text()
    block = text.split("<!-- level-kernel:begin -->")[1].split("<!-- level-kernel:end -->")[0]
    rows = [r for r in block.splitlines() if re.match(r"\| digan-", r)]
    assert len(rows) >= 8
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        arch, precision, C, L, out, ok = int(cells[1][3:]), cells[2], int(cells[3]), int(cells[4]), cells[5], cells[-1]
        want = ok == "yes"
        # every row (any L, with or without act_out) in the design level_config picks for it
        assert level_config(C, 128, 3, precision, arch, L, act_out=out.endswith("+ act")).BLOCK_M == int(
            cells[6].split(" x ")[0]), row
        assert fused_level_spill_free(C, precision, arch) == want, row
