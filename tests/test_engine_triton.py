"""The engine end to end on the Triton backend (interpreter mode on CPU, compiled on a GPU)
against the torch backend and the official fixture."""
import pytest
import torch

import tests.kernel_utils  # noqa: F401  (TRITON_INTERPRET is set by tests/conftest.pytest_configure)
from digan.view import View
from engine.executor import prepare_video
from engine.plan import make_plan
from engine.renderer import Renderer
from engine.request import RenderRequest
from tests.conftest import perturbed_generator, rel_l2

pytest.importorskip("triton")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(scope="module")
def tiny():
    return perturbed_generator("tiny-32", 5).requires_grad_(False)


def test_triton_engine_equals_torch_engine(tiny):
    """fp32: the two backends differ only by summation order and sin/cos ulps (kernels/ tests bound
    these per op); through 7 layers we measure ~1e-7 relative and allow 1e-5, the parity bar.
    uint8: at most 1 LSB where a value sits on a rounding boundary."""
    req = dict(seeds=[3], frames=3, t_end=1.4, view=View(scale=2, top=-4, left=6, height=40, width=50),
               device=DEVICE)
    a = Renderer(tiny, RenderRequest(backend="torch", device="cpu", **{k: v for k, v in req.items() if k != "device"}))
    b = Renderer(tiny, RenderRequest(backend="triton", **req))
    fa, fb = a.render_float(), b.render_float()
    assert fa.shape == fb.shape == (3, 3, 40, 50)
    assert rel_l2(fb, fa) <= 1e-5
    ua = torch.stack([f for _, _, f in a.frames()]).int()
    ub = torch.stack([f.cpu() for _, _, f in b.frames()]).int()
    assert (ua - ub).abs().max() <= 1 and (ua != ub).float().mean() < 1e-3


@pytest.mark.slow   # ~10 s: a crop of the official fixture's frames in interpreter mode
def test_triton_engine_matches_official_fixture(official_g):
    """Two frames of the extrapolated times, a 20 x 33 crop at an odd place (partial tiles and
    masked rows at every level, its ancestors only: the whole 128^2 frame took ~108 s in the
    interpreter with 3xTF32), against the same window of the official-architecture reference."""
    G, fx = official_g
    T = fx["in.Ts_extra"].numel() // 2
    times = fx["in.Ts_extra"][:T][[0, 4]]                     # t = -0.5 and t = 2
    top, left, h, w = 5, 9, 20, 33
    ref = G.synthesis(G.mapping(fx["in.z"][:1], None), times, fx["in.z_motion"][:1])[..., top:top + h, left:left + w]
    r = Renderer(G, RenderRequest(seeds=[0], times=times.tolist(), backend="triton", device=DEVICE,
                                  view=View(top=top, left=left, height=h, width=w)))
    ws = G.mapping(fx["in.z"][:1].to(r.device), None)[0]
    blocks = prepare_video(r.G, ws, fx["in.z_motion"][0].to(r.device), r.Ts, "fp32", "triton")
    out = torch.cat([r.render_chunk(blocks, c, out="float").permute(0, 3, 1, 2).cpu() for c in r.plan.chunks()])
    assert rel_l2(out, ref) <= 1e-5


@pytest.mark.usefixtures("fixed_order_dot")
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_fused_ops_give_the_per_layer_chains_frames(tiny, precision, monkeypatch):
    """The ToRGBs folded into the layers before them (and the fused levels where the kernel takes
    them: the top one and one below it, which hands its activation on) against the per-layer
    chain of fmm_linear calls: the same uint8 frames and the same fp32 image, bit for bit
    (interpreter with the fixed-order dot: an element's bits do not depend on the dot's tile
    shape). bf16 is forced to run as bf16 on any CPU."""
    import engine.executor as ex
    monkeypatch.setattr("engine.precision.cpu_bf16_support", lambda: (True, "test"))
    # a crop at scale 1 reaching past the top edge: every level, the skips by index, 2 chunks
    req = RenderRequest(seeds=[6], frames=2, t_end=1.2, view=View(top=-3, left=5, height=21, width=19),
                        precision=precision, backend="triton", device=DEVICE, memory_budget=1 << 30)
    plan = make_plan(tiny.cfg, req.view, 2, 1 << 30, max_frames_per_chunk=1)
    import kernels.level as level_mod
    import kernels.linear_rgb as rgb_mod
    calls = {"fold": 0, "level": 0}

    def counted(name, fn):
        def run(*a, **k):
            calls[name] += 1
            return fn(*a, **k)
        return run

    monkeypatch.setattr(rgb_mod, "fmm_linear_torgb", counted("fold", rgb_mod.fmm_linear_torgb))
    monkeypatch.setattr(level_mod, "fmm_level", counted("level", level_mod.fmm_level))
    fused = Renderer(tiny, req, plan=plan)
    got_u8 = torch.stack([f.cpu() for _, _, f in fused.frames()])
    got_f = fused.render_float()
    # 2 chunks x 2 renders: the two split levels (b16, returning its activation, and b32) fused
    # (fp32: the scratch design, bf16: registers) and the other 2 ToRGBs folded
    assert calls == {"fold": 8, "level": 8}, calls
    monkeypatch.setattr(ex, "_FOLD_RGB", False)
    monkeypatch.setattr(ex, "_FUSE_LEVELS", False)
    plain = Renderer(tiny, req, plan=plan)
    assert torch.equal(got_u8, torch.stack([f.cpu() for _, _, f in plain.frames()]))
    assert torch.equal(got_f, plain.render_float())
