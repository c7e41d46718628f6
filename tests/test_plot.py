"""bench/plot.py draws the README's plots from benchmark rows (newest revision per device)."""
import json

from bench.plot import main, newest_per_device, read_rows

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _rows(tmp_path):
    render = [{"size": s, "mode": m, "device": "Dev A", "date": f"2026-12-0{d}", "rev": r, "fps": fps}
              for (s, m, d, r, fps) in [("32x16x1", "eager", 1, "old", 5.0), ("64x16x1", "engine-fp32", 2, "new", 30.0),
                                        ("128x16x1", "engine-fp32", 2, "new", 9.0), ("128x64x1", "eager", 2, "new", 2.0)]]
    kernels = [{"op": "conv", "shape": f"K={k}", "backend": b, "precision": "fp32", "rate": k / 100 + (b == "torch"),
                "unit": "TFLOP/s", "device": "Dev A", "date": "2026-12-02", "rev": "new"}
               for k in (256, 512) for b in ("torch", "unfused")]
    res = tmp_path / "results"
    res.mkdir()
    (res / "render.jsonl").write_text("\n".join(json.dumps(r) for r in render) + "\n{torn")   # torn last line
    (res / "kernels.jsonl").write_text("\n".join(json.dumps(r) for r in kernels) + "\n")
    return res


def test_newest_revision_per_device(tmp_path):
    rows = read_rows(_rows(tmp_path) / "render.jsonl")
    assert len(rows) == 4                                   # the torn line is skipped, not fatal
    newest = newest_per_device(rows, "rev")
    assert list(newest) == ["Dev A"] and {r["rev"] for r in newest["Dev A"]} == {"new"}
    assert len(newest["Dev A"]) == 3


def test_plots_written(tmp_path, capsys):
    out = tmp_path / "docs"
    assert main(["--results", str(_rows(tmp_path)), "--out", str(out)]) == 0
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["bench_kernels_dev-a.png", "bench_render_dev-a.png"]
    for p in out.glob("*.png"):
        assert p.read_bytes()[:8] == PNG_MAGIC and p.stat().st_size > 5000   # a drawn figure, not empty


def test_no_rows_is_an_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["--results", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert "run the benchmarks first" in capsys.readouterr().err
