"""--grid WxH (StyleGAN3 gen_video.py's spelling): W columns, H rows of seeds in one video."""
import numpy as np
import pytest

from tests.test_render_safety import decode, run

pytest.importorskip("av")

ARGS = ["--frames", "3", "--codec", "ffv1", "-q"]


def test_grid_wxh_places_seeds_in_columns_then_rows(tmp_path, capsys):
    singles = {}
    for s in (0, 1, 2):
        assert run("render", "--seeds", s, *ARGS, "-o", tmp_path / f"s{s}.mkv", capsys=capsys)[0] == 0
        singles[s] = decode(tmp_path / f"s{s}.mkv")                      # (T, 32, 32, 3), lossless
    rc, err = run("render", "--grid", "2x2", "--seeds", "0-2", *ARGS, "-o", tmp_path / "g.mkv", capsys=capsys)
    assert rc == 0, err
    g = decode(tmp_path / "g.mkv")
    assert g.shape == (3, 64, 64, 3)                                     # 2 columns x 2 rows of 32x32
    assert np.array_equal(g[:, :32, :32], singles[0]) and np.array_equal(g[:, :32, 32:], singles[1])
    assert np.array_equal(g[:, 32:, :32], singles[2])
    assert g[:, 32:, 32:].max() == 0                                     # the empty cell stays black
    rc, err = run("render", "--grid", "3x1", "--seeds", "0-2", *ARGS, "-o", tmp_path / "row.mkv", capsys=capsys)
    assert rc == 0, err
    row = decode(tmp_path / "row.mkv")
    assert row.shape == (3, 32, 96, 3) and np.array_equal(row[:, :, 64:], singles[2])


@pytest.mark.parametrize("grid,seeds,msg", [("2x1", "0-2", "2 cells for 3 videos"), ("0x2", "0", "W, H >= 1"),
                                            ("2by2", "0", "WxH"), ("99999x1", "0", "WxH")])
def test_bad_grids_refused(tmp_path, capsys, grid, seeds, msg):
    rc, err = run("render", "--grid", grid, "--seeds", seeds, *ARGS, "-o", tmp_path / "x.mkv", capsys=capsys)
    assert rc == 2 and msg in err and "Traceback" not in err, err
    assert not list(tmp_path.iterdir())                                   # nothing created


def test_grid_whose_weights_exceed_the_budget_is_refused_before_anything(tmp_path, capsys):
    """Every cell's weights are kept for the whole grid (each chunk needs them all): 400 videos of
    the default model (21 KiB each) do not fit beside its 5.4 MiB tile in an 8 MiB budget. The
    refusal names the limit and comes before any output or parts folder exists."""
    rc, err = run("render", "--grid", "seeds", "--seeds", "0-399", "--memory-budget", "8M", *ARGS,
                  "-o", tmp_path / "g.mkv", capsys=capsys)
    assert rc == 2 and "keeps every video's weights" in err and "--memory-budget" in err, err
    assert "Traceback" not in err and not list(tmp_path.iterdir())
    rc, err = run("render", "--grid", "seeds", "--seeds", "0-3", "--memory-budget", "8M", *ARGS,
                  "-o", tmp_path / "ok.mkv", capsys=capsys)
    assert rc == 0, err
