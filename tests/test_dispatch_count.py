"""Issue 10: nothing per tile but the fused ops. Every operation a tile dispatches is counted
(TorchDispatchMode, and the Triton kernel launches) on the Triton backend (interpreter on CPU);
after the first chunk each tile must issue only the chain's fmm_linear calls, no index or
coordinate building and no copies, and the same number for every tile. Also TileGeometry, the
cache that makes it so, against kernels.nearest_index / digan.view.level_coords."""
import collections
import contextlib

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import engine.renderer as renderer_mod
import tests.kernel_utils  # noqa: F401  (TRITON_INTERPRET is set by tests/conftest.pytest_configure)
from digan.config import generator_preset
from digan.program import generator_program, level_index, level_xy, linear_calls
from digan.view import View, level_rects
from engine import executor
from engine.executor import FrameBias, TileGeometry
from engine.plan import Tile, make_plan
from engine.renderer import Renderer
from engine.request import RenderRequest
from kernels import nearest_index
from tests.conftest import perturbed_generator

pytest.importorskip("triton")

# Ops that build indices or coordinates, or copy: none may run in a tile after warm-up.
FORBIDDEN = ("arange", "div", "floor", "linspace", "_to_copy", "copy_", "cat", "index", "where", "sin", "cos")


class OpLog(TorchDispatchMode):
    """Every aten / custom op dispatched while active, tagged with the current phase. Ops issued
    inside another op (the custom op digan::fmm_linear runs its launcher with this mode off) are
    not seen: what is counted is what the caller dispatches."""

    def __init__(self):
        super().__init__()
        self.phase = ("outside", None)
        self.ops = []                                  # ((phase, tile number), op name)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append((self.phase, str(func)))
        return func(*args, **(kwargs or {}))

    @contextlib.contextmanager
    def tagged(self, phase):
        prev, self.phase = self.phase, phase
        try:
            yield
        finally:
            self.phase = prev


def _triton_kernels():
    """Every Triton kernel of the render path (JITFunction, or InterpretedFunction under
    TRITON_INTERPRET=1)."""
    from triton.runtime.jit import KernelInterface

    from kernels._common import load_triton_module
    out = {}
    for name in ("_linear_triton", "_level_triton", "_modulate_triton", "_rgb_triton"):
        mod = load_triton_module(name)
        out.update({f"{name}.{k}": v for k, v in vars(mod).items() if isinstance(v, KernelInterface)})
    return out


@pytest.fixture(scope="module")
def tiny():
    return perturbed_generator("tiny-32", 5).requires_grad_(False)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_tiles_dispatch_only_the_fused_ops(tiny, monkeypatch, precision):
    """tiny-32 at 32x32 per level-grid, zoomed out by 2 rows on top and bottom: row bands of 2, 16,
    16 and 2 rows (two tile shapes, four rectangles), one frame per chunk, 3 chunks: 12 tiles.
    bf16 (forced to run as bf16 on any CPU) also runs the final level as one fused kernel."""
    monkeypatch.setattr("engine.precision.cpu_bf16_support", lambda: (True, "test"))
    cfg = tiny.cfg
    view = View(top=-2, height=36, left=6, width=20)
    req = RenderRequest(seeds=[3], frames=3, t_end=1.3, view=view, backend="triton", device="cpu",
                        precision=precision)
    plan = make_plan(cfg, view, 3, 1 << 30, max_tile_rows=16 * 20)
    assert plan.rects == [(-2, 0, 6, 26), (0, 16, 6, 26), (16, 32, 6, 26), (32, 34, 6, 26)]
    assert plan.frames_per_chunk == 1 and plan.num_tiles == 12
    r = Renderer(tiny, req, plan=plan)
    prog = generator_program(cfg)
    assert linear_calls(prog) == 13                    # tiny-32: 9 layers + 2 split conv0 x 2
    n_emb = sum(1 for layer in prog.layers if layer.emb)

    log = OpLog()
    launches = collections.Counter()
    tile_no = [None]
    for name, kernel in _triton_kernels().items():
        def run(*a, _run=kernel.run, _name=name, **k):
            launches[(tile_no[0], _name)] += 1
            return _run(*a, **k)
        monkeypatch.setattr(kernel, "run", run)
    real_tile, real_bias = executor.render_tile, FrameBias.__getitem__

    def render_tile(*a, **k):
        tile_no[0] = (tile_no[0] or 0) + 1
        with log.tagged(("tile", tile_no[0])):
            return real_tile(*a, **k)

    def bias(self, frames):
        with log.tagged(("bias", tile_no[0])):
            return real_bias(self, frames)

    monkeypatch.setattr(renderer_mod, "render_tile", render_tile)
    monkeypatch.setattr(FrameBias, "__getitem__", bias)
    blocks = r.video_weights(0)                        # per video, once: not part of the tile loop
    chunks = list(plan.chunks())
    tiles_per_chunk = len(plan.rects)
    geometry = executor._program_and_geometry(r.G)[1]
    frames = []
    with log:
        for i, chunk in enumerate(chunks):
            if i == 1:
                builds = geometry.builds
                log.ops.clear()                        # chunk 0 is the warm-up: it fills the caches
            frames.append(r.render_chunk(blocks, chunk))
    assert geometry.builds == builds, "index / coordinates rebuilt after the first chunk"

    warm = range(tiles_per_chunk + 1, plan.num_tiles + 1)
    per_tile = {t: collections.Counter(op for (ph, t_), op in log.ops if ph == "tile" and t_ == t) for t in warm}
    # 1. Inside render_tile: the chain's fused ops only, the same for every tile, and no more than
    #    the chain needs (a regression shows here).
    # Every level with a split conv0 (b16, b32) runs as its parent part and one fused kernel:
    # b16's returns its image rows and last activation (fmm_level_act), b32's stores into the
    # chunk buffer (fmm_level_out); the other ToRGBs are folded into the layer before them
    # (fmm_linear_torgb). Per block: b4 1 (emb + ToRGB), b8 2, b16 2, b32 2: 7 ops, fp32 (the
    # scratch design) and bf16 (registers) alike.
    expected = collections.Counter({"digan.fmm_linear.default": 3, "digan.fmm_linear_torgb.default": 2,
                                    "digan.fmm_level_act.default": 1, "digan.fmm_level_out.default": 1})
    kernel = "_fmm_level_scratch_kernel" if precision == "fp32" else "_fmm_level_kernel"
    kernels = {"_linear_triton._fmm_linear_kernel": 5, f"_level_triton.{kernel}": 2}
    n_ops = sum(expected.values())
    assert n_ops == sum(kernels.values())
    for t, ops in per_tile.items():
        assert ops == expected, f"tile {t}: {dict(ops)}"
    # Every op is one kernel launch, nothing else launches.
    for t in warm:
        got = {name: n for (t_, name), n in launches.items() if t_ == t}
        assert got == kernels, f"tile {t}: {got}"
    # 2. The embedding bias b(t): per chunk, not per tile: the first tile of a chunk takes each
    #    embedding block's rows of the chunk's frames as a view of its cached BIAS_BLOCK block.
    bias_ops = collections.defaultdict(collections.Counter)
    for (ph, t), op in log.ops:
        if ph == "bias":
            bias_ops[t][op] += 1
    firsts = {tiles_per_chunk * i + 1 for i in range(1, len(chunks))}
    assert set(bias_ops) == firsts
    for t in firsts:
        assert bias_ops[t] == collections.Counter({"aten.slice.Tensor": n_emb}), f"tile {t}: {dict(bias_ops[t])}"
    # 3. Around the tiles (Renderer.render_chunk): the chunk buffer and each tile's view of it
    #    (metadata), no copy: the kernel wrote the tile in place.
    outside = collections.Counter(op for (ph, _), op in log.ops if ph == "outside")
    assert set(outside) <= {"aten.slice.Tensor", "aten.empty.memory_format"}, dict(outside)
    assert outside["aten.empty.memory_format"] == len(chunks) - 1       # one buffer per chunk
    # Nothing that builds indices / coordinates or copies anywhere in the tiles or the bias.
    for (ph, _), op in log.ops:
        if ph != "outside":
            assert not any(f in op for f in FORBIDDEN), op
    # And the frames are the engine's (compared with an uncounted render in a fresh Renderer:
    # the same kernels, so the same bits).
    ref = Renderer(tiny, req, plan=plan)
    ref_blocks = ref.video_weights(0)
    for chunk, got in zip(chunks, frames):
        assert torch.equal(got, ref.render_chunk(ref_blocks, chunk))


# ---- TileGeometry --------------------------------------------------------------------------------

@pytest.mark.parametrize("rect", [(0, 32, 0, 32), (-3, 5, 7, 30), (16, 34, -9, -1)])
def test_geometry_equals_fresh_build(rect):
    cfg = generator_preset("tiny-64")
    prog = generator_program(cfg)
    rects = level_rects(rect, prog.num_levels)
    geo = TileGeometry()
    dev = torch.device("cpu")
    for F in (3, 1, 2, 3):                             # fewer frames: a prefix of the widest built
        got = geo.index(prog, F, rects, dev)
        want = level_index(prog, F, rects, nearest_index)
        assert [g is None for g in got] == [w is None for w in want] == [True, False, False]
        assert all(g is None or torch.equal(g, w) for g, w in zip(got, want))
    assert geo.builds == 1
    xy = geo.coords(prog, rects, 2, dev)
    assert geo.coords(prog, rects, 2, dev) is xy and geo.builds == 2
    for got, want in zip(xy, level_xy(prog, rects, 2)):
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_geometry_is_shared_by_shape_and_bounded():
    """Bands of one shape share their indices (they depend on the shape, not the position);
    fewer frames reuse the storage; the caches are bounded LRUs."""
    prog = generator_program(generator_preset("tiny-64"))
    dev = torch.device("cpu")
    geo = TileGeometry(max_shapes=2, max_rects=3)
    a = geo.index(prog, 4, level_rects((0, 16, 0, 64), prog.num_levels), dev)
    b = geo.index(prog, 4, level_rects((32, 48, 0, 64), prog.num_levels), dev)
    assert all(x is y for x, y in zip(a, b)) and geo.builds == 1
    c = geo.index(prog, 2, level_rects((16, 32, 0, 64), prog.num_levels), dev)
    assert c[-1].data_ptr() == a[-1].data_ptr() and c[-1].numel() == a[-1].numel() // 2
    for h in (4, 8, 12):                               # three more shapes: the first is evicted
        geo.index(prog, 1, level_rects((0, h, 0, 64), prog.num_levels), dev)
    assert len(geo._index) == 2
    for top in range(0, 20, 4):
        geo.coords(prog, level_rects((top, top + 4, 0, 64), prog.num_levels), 1, dev)
    assert len(geo._coords) == 3
    with pytest.raises(ValueError, match="cache sizes"):
        TileGeometry(max_shapes=0)


# digan-128's fused ops per block on the Triton backend, as render_tile issues them (the part-1
# counter's "ops per level"), by precision and arch: at most 2 per block, the final store inside
# the last. b64 and b128: split conv0's parent part + one fused level kernel (registers in bf16,
# the scratch design elsewhere, kernels/level.py); b4 .. b32: the ToRGB folded into the conv
# before it. fp32-ieee (the FMA dot, kept selectable for exactness) neither folds nor fuses (its
# fold and level kernels spill): the per-layer chain.
OPS_PER_BLOCK = {
    ("bf16", 90): {4: 1, 8: 2, 16: 2, 32: 2, 64: 2, 128: 2},
    ("bf16", 80): {4: 1, 8: 2, 16: 2, 32: 2, 64: 2, 128: 2},
    ("fp32", 90): {4: 1, 8: 2, 16: 2, 32: 2, 64: 2, 128: 2},
    ("fp32", 80): {4: 1, 8: 2, 16: 2, 32: 2, 64: 2, 128: 2},
    ("tf32", 90): {4: 1, 8: 2, 16: 2, 32: 2, 64: 2, 128: 2},
    ("fp32-ieee", 90): {4: 2, 8: 3, 16: 3, 32: 3, 64: 4, 128: 5},
}


@pytest.fixture(scope="module")
def digan128():
    from digan.networks import Generator
    torch.manual_seed(0)
    return Generator(generator_preset("digan-128")).eval().requires_grad_(False)


@pytest.mark.parametrize("precision,arch", list(OPS_PER_BLOCK))
def test_digan128_ops_per_level(digan128, monkeypatch, precision, arch):
    """render_tile's op sequence for a digan-128 tile, with the kernels replaced by recorders (the
    wiring under test is the executor's: which levels fuse, which ToRGBs fold), per block."""
    import kernels.level as k_level
    import kernels.linear_rgb as k_rgb
    from engine.request import TimeGrid
    from kernels import fmm_modulate

    G = digan128
    monkeypatch.setattr(k_level, "_target_arch", lambda device: arch)
    # The modulation on the torch backend (the weights' values do not matter, only the wiring).
    monkeypatch.setattr(executor, "fmm_modulate", lambda *a, backend=None, **k: fmm_modulate(*a, backend="torch", **k))
    ws = G.mapping(torch.randn(1, G.cfg.z_dim), None, skip_w_avg_update=True)[0]
    blocks = executor.prepare_video(G, ws, torch.randn(G.cfg.w_dim), TimeGrid(values=(0.0, 0.5)), precision,
                                    "triton")
    block_of = {id(t): lw.layer.res for bw in blocks for lw in bw.layers for t in (lw.W, lw.W_e) if t is not None}
    ops = []

    def linear(W, x, **k):
        ops.append((block_of[id(W)], "linear"))
        return object()

    def fold(W, x, **k):
        ops.append((block_of[id(W)], "linear_torgb"))
        return object(), object()

    def level(w_emb, *a, act_out=False, **k):
        ops.append((block_of[id(w_emb)], "level"))
        return (object(), object()) if act_out else object()

    monkeypatch.setattr(executor, "fmm_linear", linear)
    monkeypatch.setattr(k_rgb, "fmm_linear_torgb", fold)
    monkeypatch.setattr(k_level, "fmm_level", level)
    tile = Tile(rect=(0, 8, 0, 8), frames=(0, 2))
    into = torch.empty(2, 8, 8, 3, dtype=torch.uint8)
    executor.render_tile(G, blocks, tile, 1, precision, "triton", "cpu", geometry=TileGeometry(), into=into)
    per_block = collections.Counter(res for res, _ in ops)
    assert dict(per_block) == OPS_PER_BLOCK[(precision, arch)], ops
    # The last op stores the frame (the fused top level or the folded last ToRGB), nothing after it.
    if precision != "fp32-ieee":
        assert ops[-1] == (128, "level") and ops[-2] == (128, "linear")
