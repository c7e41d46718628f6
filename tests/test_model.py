"""The reference model against the official implementation's outputs, and the view semantics."""
import dataclasses
import json
import math

import pytest
import torch
import torch.nn.functional as F

from digan.config import DiscriminatorConfig, GeneratorConfig, discriminator_preset, generator_preset
from digan.networks import Discriminator, Generator
from digan.view import View
from tests.conftest import rel_l2

# fp32 round-off through ~12 layers of K<=384 sums: we measure ~8e-7; the bar is 1e-5.
PARITY = 1e-5


def test_mapping_matches_official(official_g):
    G, fx = official_g
    assert rel_l2(G.mapping(fx["in.z"], None), fx["out.ws"]) <= PARITY
    assert rel_l2(G.mapping(fx["in.z"], None, truncation_psi=0.7), fx["out.ws_psi0.7"]) <= PARITY


@pytest.mark.parametrize("times,out", [("in.Ts", "out.img"), ("in.Ts_extra", "out.img_extra")])
def test_synthesis_matches_official(official_g, times, out):
    G, fx = official_g
    ws = G.mapping(fx["in.z"], None)
    img = G.synthesis(ws, fx[times], fx["in.z_motion"])
    assert img.shape == fx[out].shape
    assert rel_l2(img, fx[out]) <= PARITY


TIME_LAYOUTS = {"flat": lambda Ts, B: Ts.reshape(-1),
                "official": lambda Ts, B: Ts.reshape(-1, 1, 1, 1),
                "per_video": lambda Ts, B: Ts.reshape(B, -1),
                "per_video_4d": lambda Ts, B: Ts.reshape(B, -1, 1, 1)}


@pytest.mark.parametrize("layout", sorted(TIME_LAYOUTS))
@pytest.mark.parametrize("times,out", [("in.Ts", "out.img"), ("in.Ts_extra", "out.img_extra")])
def test_time_layouts_match_official(official_g, layout, times, out):
    """(B*T,), the official code's (B*T, 1, 1, 1), (B, T) and (B, T, 1, 1) all reproduce the fixtures,
    and give the very same frames (one parse, one computation)."""
    G, fx = official_g
    ws = G.mapping(fx["in.z"], None)
    img = G.synthesis(ws, TIME_LAYOUTS[layout](fx[times], 2), fx["in.z_motion"])
    assert rel_l2(img, fx[out]) <= PARITY
    assert torch.equal(img, G.synthesis(ws, fx[times], fx["in.z_motion"]))


@pytest.mark.parametrize("bad", [(3, 4), (2, 6, 2), (12, 1, 1), (2, 3, 2, 1), (4, 3, 1, 1), (0,), (5,)])
def test_time_layouts_refused(official_g, bad):
    """Shapes that fit no layout for 2 videos are refused with the accepted layouts named."""
    G, fx = official_g
    ws = G.mapping(fx["in.z"], None)
    with pytest.raises(ValueError, match="accepted layouts"):
        G.synthesis(ws, torch.rand(bad) if 0 not in bad else torch.empty(bad), fx["in.z_motion"])


def test_times_must_be_finite(official_g):
    G, fx = official_g
    ws = G.mapping(fx["in.z"], None)
    Ts = fx["in.Ts"].clone().reshape(-1, 1, 1, 1)
    Ts[3] = float("nan")
    with pytest.raises(ValueError, match="finite"):
        G.synthesis(ws, Ts, fx["in.z_motion"])


def test_generator_forward_uses_linspace(official_g):
    G, fx = official_g
    out, dT = G(fx["in.z"], None, timesteps=16, z_motion=fx["in.z_motion"])
    assert dT is None and rel_l2(out, fx["out.img"]) <= PARITY
    torch.manual_seed(0)
    pair, dT = G(fx["in.z"], None, timesteps=2)
    assert pair.shape == (4, 3, 64, 64) and dT.shape == (2, 1, 1, 1) and (dT >= 0).all() and (dT <= 1).all()


def test_discriminator_matches_official(official_d):
    D, fx = official_d
    motion, image, frames = D(fx["in.vid"], None)
    assert motion.shape == (4, 1) and image.shape == (8, 1)
    assert rel_l2(motion, fx["out.logits_motion"]) <= PARITY
    assert rel_l2(image, fx["out.logits_image"]) <= PARITY
    # frames are sample-major: sample 1, frame 1 is channels 3:6 of sample 1
    assert torch.equal(frames[3], fx["in.vid"][1, 3:6])


def test_released_presets_have_official_shapes():
    cfg = generator_preset("digan-128")
    assert cfg.num_ws == 13
    G = Generator(cfg)
    sd = G.state_dict()
    assert sd["synthesis.b128.conv0.weight"].shape == (256, 512 + 256, 1, 1)
    assert sd["synthesis.b64.conv0.weight"].shape == (512, 768, 1, 1)
    assert sd["synthesis.b128.extra_convs.0.weight"].shape == (256, 256, 1, 1)
    assert sd["synthesis.b4.conv1.weight"].shape == (512, 256, 1, 1)
    assert sd["mapping.fc1.weight"].shape == (512, 512) and "mapping.fc2.weight" not in sd
    Gc = Generator(generator_preset("digan-128-ucf101"))
    assert Gc.state_dict()["mapping.embed.weight"].shape == (512, 101)
    D = Discriminator(discriminator_preset("digan-128-ucf101"))
    dsd = D.state_dict()
    assert dsd["videoD.b128.fromrgb.weight"].shape[1] == 7
    assert dsd["imageD.mapping.embed.weight"].shape == (512, 101)


def test_conditional_generator_and_discriminator_run():
    torch.manual_seed(0)
    G = Generator(dataclasses.replace(generator_preset("tiny-32"), c_dim=5))
    c = F.one_hot(torch.tensor([1, 3]), 5).float()
    out, _ = G(torch.randn(2, 32), c, timesteps=3)
    assert out.shape == (6, 3, 32, 32) and torch.isfinite(out).all()
    D = Discriminator(DiscriminatorConfig(c_dim=5, img_resolution=32, channel_base=256, channel_max=32))
    m, i, fr = D(torch.randn(2, 7, 32, 32), c)
    assert m.shape == (2, 1) and i.shape == (4, 1) and torch.isfinite(m).all()


def test_zoom_out_contains_default_exactly(official_g):
    G, fx = official_g
    ws = G.mapping(fx["in.z"], None)
    Ts = fx["in.Ts_extra"]
    base = G.synthesis(ws, Ts, fx["in.z_motion"])
    view = View.from_range(64, 32, -1.5, 1.5)
    assert view.output_size(64) == (96, 96)  # 48 base pixels at input resolution 32
    zoom = G.synthesis(ws, Ts, fx["in.z_motion"], view=view)
    assert zoom.shape == (12, 3, 96, 96)
    assert torch.equal(zoom[:, :, 16:80, 16:80], base)
    # and the border is real content, not padding
    assert zoom[:, :, :16].std() > 0.05


def test_crop_equals_window(official_g):
    G, fx = official_g
    ws = G.mapping(fx["in.z"], None)
    base = G.synthesis(ws, fx["in.Ts_extra"], fx["in.z_motion"])
    crop = G.synthesis(ws, fx["in.Ts_extra"], fx["in.z_motion"], view=View(top=5, left=9, height=20, width=33))
    assert torch.equal(crop, base[:, :, 5:25, 9:42])


@pytest.mark.parametrize("scale", [2, 4, 8])
def test_super_resolution_pools_to_base(official_g, scale):
    """Every level sampled s x denser: the s x s average of the s-scaled frame approximates the
    s = 1 pixel (an integral of the same continuous image over the pixel's footprint, vs its
    top-left sample). Frames 0 and 8 of each video; s=8 (512x512, the costly one) frame 8 only.
    Measured PSNR (on [-1, 1] clipped frames, peak-to-peak 2): s=2 26.3 dB, s=4 24.4 dB,
    s=8 23.6 dB with these random official weights; we assert >= 18 dB, far above unrelated
    frames (~6 dB), and that the pooled frames are closer to the base than a shifted base is."""
    G, fx = official_g
    ws = G.mapping(fx["in.z"], None)
    Ts = fx["in.Ts"].view(2, 16)[:, 8::8] if scale == 8 else fx["in.Ts"].view(2, 16)[:, ::8]
    n = Ts.numel()
    base = G.synthesis(ws, Ts.reshape(-1), fx["in.z_motion"]).clamp(-1, 1)
    sr = G.synthesis(ws, Ts.reshape(-1), fx["in.z_motion"], view=View(scale=scale))
    assert sr.shape == (n, 3, 64 * scale, 64 * scale)
    assert torch.isfinite(sr).all()
    pooled = F.avg_pool2d(sr.clamp(-1, 1), scale)
    psnr = 10 * math.log10(4 / (pooled - base).square().mean().item())
    shifted = 10 * math.log10(4 / (base.roll(7, dims=3) - base).square().mean().item())
    print(f"super-resolution s={scale}: PSNR of pooled frames vs s=1 = {psnr:.1f} dB")
    assert psnr >= 18 and psnr > shifted + 3


def test_view_validation():
    with pytest.raises(ValueError, match="base grid"):
        View.from_range(64, 32, -1.3, 1.3)
    with pytest.raises(ValueError, match="positive integer"):
        View(scale=0)
    with pytest.raises(ValueError, match="hi > lo"):
        View.from_range(64, 32, 1.0, -1.0)


def test_bad_inputs_raise_clear_errors(official_g):
    G, fx = official_g
    ws = G.mapping(fx["in.z"], None)
    with pytest.raises(ValueError, match="z must have shape"):
        G.mapping(torch.randn(2, 7), None)
    with pytest.raises(ValueError, match="ws must have shape"):
        G.synthesis(ws[:, :3], fx["in.Ts"], fx["in.z_motion"])
    with pytest.raises(ValueError, match="T times per video"):
        G.synthesis(ws, torch.rand(7), fx["in.z_motion"])
    with pytest.raises(ValueError, match="z_motion"):
        G.synthesis(ws, fx["in.Ts"], fx["in.z_motion"][:1])
    with pytest.raises(ValueError, match="finite"):
        G.synthesis(ws, torch.full((2,), float("nan")), fx["in.z_motion"])


def test_config_json_round_trip():
    for name in ("digan-128", "digan-128-ucf101", "small-64", "tiny-64", "tiny-32"):
        cfg = generator_preset(name)
        assert GeneratorConfig.from_dict(json.loads(cfg.to_json())) == cfg
        dcfg = discriminator_preset(name)
        assert DiscriminatorConfig.from_dict(json.loads(dcfg.to_json())) == dcfg
    with pytest.raises(ValueError, match="unknown GeneratorConfig fields"):
        GeneratorConfig.from_dict({"bogus": 1})
    with pytest.raises(ValueError, match="power of two"):
        GeneratorConfig(img_resolution=96)
