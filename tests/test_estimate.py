"""bench/estimate.py: the estimate's FLOPs are the engine's (engine/flops.frame_work), per design
and per view; the fused design moves fewer bytes and launches fewer kernels. No timing."""
import pytest

from bench.estimate import SCENARIOS, kernel_costs, level_table, markdown
from digan.config import generator_preset
from digan.view import View
from engine.flops import frame_work


@pytest.mark.parametrize("preset", ["digan-128", "small-64", "tiny-64"])
@pytest.mark.parametrize("view", [View(), View(scale=8), View(scale=2, top=-8, left=5, height=40, width=72)])
def test_flops_equal_frame_work(preset, view):
    cfg = generator_preset(preset)
    want = frame_work(cfg, view).flops
    for fused in (False, True):
        assert sum(k.flops for k in kernel_costs(cfg, view, fused=fused)) == want


def test_scenarios_and_table():
    cfg = generator_preset("digan-128")
    assert [(s.scale, s.total_frames) for s in SCENARIOS] == [(1, 128), (8, 256)]
    for sc in SCENARIOS:
        rows = level_table(cfg, sc)
        assert [r["block"] for r in rows] == [f"b{r}" for r in cfg.block_resolutions]
        assert sum(r["flops"] for r in rows) == frame_work(cfg, View(scale=sc.scale)).flops
        for r in rows:
            assert 0 < r["bytes_fused"] <= r["bytes_layer"]
            assert r["kernels_fused"] < r["kernels_layer"]
            assert 0 < r["t_fused"] <= r["t_layer"]
        top = rows[-1]          # b128, 256 wide: one level kernel after conv0's parent part
        assert top["kernels_fused"] == 2 and top["bytes_fused"] < top["bytes_layer"] / 3
        b64 = rows[-2]          # b64, 512 wide: the same, writing its last activation once
        assert b64["kernels_fused"] == 2 and b64["bytes_fused"] < b64["bytes_layer"] / 2
    text = markdown(cfg)
    assert "ESTIMATE" in text and "128²×16×8" in text and "1024²×256" in text
