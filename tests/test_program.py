"""digan/program.py: the one description of the generator's layer chain, and what is derived from it
(FLOP count, the planner's memory estimate, the kernel benchmark's shapes) against numbers taken
from the code before the program existed: plans must not change (resume hashes rest on them)."""
import dataclasses
import functools

import pytest
import torch

from bench.bench_kernels import ModelShapes, model_shapes
from digan.config import GeneratorConfig, generator_preset
from digan.networks import Generator
from digan.program import (
    LayerWeights,
    generator_program,
    layer_fuser,
    layer_module,
    level_index,
    level_xy,
    linear_calls,
    modulate_layers,
    run_chain,
    split_weight,
)
from digan.view import View, level_coords, level_rects
from engine.flops import frame_work
from engine.plan import level_channels, make_plan, tile_bytes
from kernels import fmm_linear_reference, fmm_modulate_reference, nearest_index, torgb_modulate_reference
from tests.conftest import perturbed_generator, rel_l2

CROP = View(scale=3, top=-5, left=7, height=33, width=50)


def test_official_program():
    """digan-128 (DESIGN §1): b4 (embedding conv1), b8-b32 (conv0, conv1) at the 32x32 base level,
    b64 (split conv0 768->512, conv1), b128 (split conv0 768->256, conv1, extra conv); 13 ws."""
    cfg = generator_preset("digan-128")
    prog = generator_program(cfg)
    got = [(lr.kind, lr.level, lr.res, lr.c_in, lr.c_out, lr.w, lr.up) for lr in prog.layers]
    assert got == [
        ("emb", 0, 4, 256, 512, 0, False), ("torgb", 0, 4, 512, 3, 1, False),
        ("conv", 0, 8, 512, 512, 1, False), ("conv", 0, 8, 512, 512, 2, False), ("torgb", 0, 8, 512, 3, 3, False),
        ("conv", 0, 16, 512, 512, 3, False), ("conv", 0, 16, 512, 512, 4, False),
        ("torgb", 0, 16, 512, 3, 5, False),
        ("conv", 0, 32, 512, 512, 5, False), ("conv", 0, 32, 512, 512, 6, False),
        ("torgb", 0, 32, 512, 3, 7, False),
        ("split", 1, 64, 768, 512, 7, True), ("conv", 1, 64, 512, 512, 8, False), ("torgb", 1, 64, 512, 3, 9, True),
        ("split", 2, 128, 768, 256, 9, True), ("conv", 2, 128, 256, 256, 10, False),
        ("conv", 2, 128, 256, 256, 11, False), ("torgb", 2, 128, 256, 3, 12, True)]
    assert max(lr.w for lr in prog.layers) + 1 == cfg.num_ws == 13
    assert prog.num_levels == 3 and prog.level_channels() == [512, 512, 256]
    assert prog.emb_levels() == {0: 32, 1: 64, 2: 128}
    assert [lr.feat for lr in prog.layers if lr.emb] == [0, 512, 512]
    # one GEMM per layer, two for each split conv0
    assert linear_calls(prog) == len(prog.layers) + 2


@pytest.mark.parametrize("preset", ["digan-128", "tiny-64", "tiny-32"])
def test_program_finds_every_module_of_a_meta_generator(preset):
    """Built from the config alone: its records name the right modules (shapes) of a Generator
    that has no weights, and its w indices are StyleGAN2-ADA's block_ws slices."""
    cfg = generator_preset(preset)
    with torch.device("meta"):
        G = Generator(cfg)
    syn = G.synthesis
    prog = generator_program(cfg)
    assert [lr.block for lr in prog.layers if lr.kind == "torgb"] == list(range(len(syn.blocks())))
    seen = set()
    ws = torch.arange(cfg.num_ws)[None, :, None]                   # (1, num_ws, 1): w index as value
    for block, bws in zip(syn.blocks(), syn.block_ws(ws)):
        for k, conv in enumerate(block.conv_layers()):
            (lr,) = [lr for lr in prog.layers if layer_module(syn, lr) is conv]
            assert lr.w == int(bws[0, k, 0]) and lr.conv == k and lr.res == block.res
            assert tuple(conv.weight.shape) == (lr.c_out, lr.c_in, 1, 1)
            if lr.emb:
                assert layer_fuser(syn, lr) is block.fuser and lr.emb == cfg.emb_channels
            seen.add(id(conv))
        (rgb,) = [lr for lr in prog.layers if layer_module(syn, lr) is block.torgb]
        assert rgb.w == int(bws[0, block.num_conv, 0]) and rgb.up == block.up
        assert tuple(block.torgb.weight.shape) == (rgb.c_out, rgb.c_in, 1, 1)
    assert len(seen) + len(syn.blocks()) == len(prog.layers)


def test_bad_input():
    with pytest.raises(ValueError, match="GeneratorConfig"):
        generator_program({"img_resolution": 64})
    cfg = generator_preset("tiny-32")
    with torch.device("meta"):
        syn = Generator(cfg).synthesis
    prog = generator_program(cfg)
    with pytest.raises(ValueError, match="ws must have shape"):
        modulate_layers(syn, prog, torch.zeros(2, cfg.w_dim), None, None)
    with pytest.raises(ValueError, match="takes no embedding"):
        layer_fuser(syn, prog.layers[1])


# ---- what is derived from it: unchanged numbers ------------------------------------------------
# Taken from engine/flops.py and engine/plan.py as they were before digan/program.py (git 90eaa79),
# for the whole image and a zoomed crop: (macs, macs_unsplit, sincos), tile_bytes(7 frames, act 2).
GOLDEN_WORK = {
    ("digan-128", 1): ((7407140864, 9823059968, 5505024), 559714304),
    ("digan-128", 3): ((806584832, 1047757312, 567808), 60935674),
    ("small-64", 1): ((228851712, 254017536, 1310720), 67380224),
    ("small-64", 3): ((96342400, 106238336, 535552), 29848954),
    ("tiny-64", 1): ((4153344, 4939776, 172032), 13190144),
    ("tiny-64", 3): ((1836368, 2152784, 70976), 7845994),
    ("tiny-32", 1): ((835584, 1032192, 43008), 6443264),
    ("tiny-32", 3): ((1460624, 1777040, 70976), 7845994),
}


@pytest.mark.parametrize("preset,scale", sorted(GOLDEN_WORK))
def test_work_and_memory_unchanged(preset, scale):
    cfg = generator_preset(preset)
    view = View() if scale == 1 else CROP
    fw = frame_work(cfg, view)
    work, tb = GOLDEN_WORK[(preset, scale)]
    assert (fw.macs, fw.macs_unsplit, fw.sincos) == work
    assert tile_bytes(cfg, 7, view.final_rect(cfg.img_resolution), 2) == tb


def test_plans_unchanged():
    cfg = generator_preset("digan-128")
    p = make_plan(cfg, View(scale=2), 100, 1 << 30, act_bytes=2)
    assert (p.frames_per_chunk, p.rects, p.tile_bytes, p.chunk_bytes) == (3, [(0, 256, 0, 256)], 956514304, 589824)
    p = make_plan(cfg, View(scale=2), 100, 4 << 30, act_bytes=4, max_tile_bytes=128 << 20)
    bands = [(0, 64, 0, 256), (64, 128, 0, 256), (128, 192, 0, 256), (192, 256, 0, 256)]
    assert (p.frames_per_chunk, p.rects, p.tile_bytes, p.chunk_bytes) == (1, bands, 109768704, 196608)
    assert level_channels(cfg) == [512, 512, 256]


def test_unusual_config():
    """Extra convs at the base level, 4 image channels, a 3-level chain from 8 px: the layers and
    the work as written out by hand."""
    cfg = GeneratorConfig(z_dim=16, w_dim=16, img_resolution=32, channel_base=256, channel_max=24, emb_size=8,
                          input_resolution=8, num_extra_convs={8: 2, 32: 1}, img_channels=4)
    prog = generator_program(cfg)
    kinds = [(lr.kind, lr.res, lr.c_in, lr.c_out) for lr in prog.layers]
    assert kinds == [("emb", 4, 16, 24), ("torgb", 4, 24, 4),
                     ("conv", 8, 24, 24), ("conv", 8, 24, 24), ("conv", 8, 24, 24), ("conv", 8, 24, 24),
                     ("torgb", 8, 24, 4),
                     ("split", 16, 40, 16), ("conv", 16, 16, 16), ("torgb", 16, 16, 4),
                     ("split", 32, 32, 8), ("conv", 32, 8, 8), ("conv", 32, 8, 8), ("torgb", 32, 8, 4)]
    p0, p1, p2 = 8 * 8, 16 * 16, 32 * 32
    macs = (p0 * 16 * 24 + p0 * 24 * 4 + 4 * p0 * 24 * 24 + p0 * 24 * 4
            + p0 * 24 * 16 + p1 * 16 * 16 + p1 * 16 * 16 + p1 * 16 * 4
            + p1 * 16 * 8 + p2 * 16 * 8 + 2 * p2 * 8 * 8 + p2 * 8 * 4)
    fw = frame_work(cfg)
    assert fw.macs == macs
    assert fw.macs_unsplit == macs - p0 * 24 * 16 + p1 * 24 * 16 - p1 * 16 * 8 + p2 * 16 * 8
    assert fw.sincos == (p0 + p1 + p2) * 16
    assert level_channels(cfg) == [24, 16, 8]


def test_model_shapes_unchanged():
    assert model_shapes("digan-128") == ModelShapes(
        E=128, rank=10, modulate=[(512, 256), (512, 512), (512, 768), (256, 768), (256, 256)],
        conv=[(512, 512), (256, 256)], emb=[512], split=[512, 256], torgb=[512, 256])


# ---- the chain itself ----------------------------------------------------------------------------

def test_chain_with_reference_ops_matches_synthesis():
    """modulate_layers + run_chain with the plain (unfused) torch reference ops = G.synthesis.
    fp32, other summation orders (one GEMM per video, split conv0): measured ~1e-7, bar 1e-5 as
    the engine's parity with the official fixtures."""
    G = perturbed_generator("tiny-32", 11).requires_grad_(False)
    cfg, syn = G.cfg, G.synthesis
    torch.manual_seed(2)
    B, T = 2, 3
    ws = G.mapping(torch.randn(B, cfg.z_dim), None)
    zm, Ts = torch.randn(B, cfg.w_dim), torch.rand(B, T) * 2 - 0.5
    view = View(scale=2, top=-3, left=5, height=30, width=21)
    ref = syn(ws, Ts, zm, view=view)                                       # (B*T, 3, h, w)
    prog = generator_program(cfg)
    rects = level_rects(view.final_rect(cfg.img_resolution), prog.num_levels)
    mods = modulate_layers(syn, prog, ws, fmm_modulate_reference, torgb_modulate_reference)
    assert [tuple(W.shape) for W in mods] == [(B, lr.c_out, lr.c_in) for lr in prog.layers]
    index = level_index(prog, T, rects, nearest_index)
    xy = level_xy(prog, rects, view.scale)
    for lv, (r0, r1, c0, c1) in enumerate(rects):
        assert (index[lv] is None) == (lv == 0)
        xs, ys = level_coords(rects[lv], prog.emb_levels()[lv] * view.scale)
        assert torch.equal(xy[lv][0], xs) and torch.equal(xy[lv][1], ys)
    out = []
    for v in range(B):
        weights = [LayerWeights(lr, *split_weight(lr, W[v]), layer_module(syn, lr).bias, cfg.conv_clamp)
                   for lr, W in zip(prog.layers, mods)]
        emb = {}
        for i, lr in enumerate(prog.layers):
            if lr.emb:
                A, b = layer_fuser(syn, lr).params(ws[v:v + 1, lr.w], zm[v:v + 1], Ts[v:v + 1])
                emb[i] = dict(emb_A=A[0], emb_b=b[0], xs=xy[lr.level][0], ys=xy[lr.level][1])
        calls = []

        def linear(*a, **k):
            calls.append(1)
            return fmm_linear_reference(*a, **k)

        img = run_chain(weights, linear, index, emb)
        assert len(calls) == linear_calls(prog)
        out.append(img.view(T, 30, 21, 3).permute(0, 3, 1, 2))
    assert rel_l2(torch.cat(out), ref) <= 1e-5


def test_program_is_a_value():
    """Frozen records: a program can be shared by every video and tile without being changed."""
    prog = generator_program(generator_preset("tiny-32"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        prog.layers[0].c_in = 3
    assert prog == generator_program(generator_preset("tiny-32"))
    assert functools.reduce(lambda a, lr: a + lr.calls, prog.layers, 0) == linear_calls(prog)


def test_level_groups():
    """The blocks that can run as one fused level: split conv0, convs, one ToRGB, nothing else
    (digan-128: b64 and b128; b4 .. b32 have no split conv0)."""
    from digan.program import level_groups
    for preset, want in (("digan-128", {(64, 1), (128, 2)}), ("tiny-32", {(16, 1), (32, 1)}),
                         ("tiny-64", {(32, 1), (64, 2)})):
        layers = generator_program(generator_preset(preset)).layers
        groups = level_groups(layers)
        assert {(layers[i].res, j - i - 1) for i, j in groups.items()} == want, preset
        for i, j in groups.items():
            assert layers[i].kind == "split" and layers[j].kind == "torgb"
            assert all(layer.kind == "conv" and layer.block == layers[i].block for layer in layers[i + 1:j])
    # A block cut before its ToRGB, or with a layer of its own after the ToRGB, is no group.
    layers = list(generator_program(generator_preset("tiny-32")).layers)
    i, j = next(iter(level_groups(layers).items()))
    assert i not in level_groups(layers[:j])
    assert i not in level_groups(layers[:j + 1] + [layers[j - 1]])
