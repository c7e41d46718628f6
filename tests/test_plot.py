"""bench/plot.py draws the README's plots from benchmark rows (newest revision per device);
bench/export.py writes benchmark rows as CSV / JSON and the ratio table of `make bench`."""
import csv
import json

import pytest

from bench.export import add_speedups, benchmark_row, ratio_table, run_meta, write_rows
from bench.plot import _rate, device_kind, main, newest_per_device, read_rows

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _rows(tmp_path):
    render = [{"size": s, "mode": m, "device": "Dev A", "date": f"2026-12-0{d}", "rev": r, "fps": fps}
              for (s, m, d, r, fps) in [("32x16x1", "eager", 1, "old", 5.0),
                                        ("64x16x1", "engine-fp32", 2, "new", 30.0),
                                        ("128x16x1", "engine-fp32", 2, "new", 9.0),
                                        ("128x64x1", "eager", 2, "new", 2.0)]]
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


# ---- the sweep plots, CPU labels, and the CSV / JSON export ----------------------------------------

def _sweep_rows(tmp_path):
    """Rows shaped like bench_render.py --sweep and bench_kernels.py --sweep on a CPU, with a skipped
    mode (no 'fps'), a size measured twice in one revision, and an op swept over rows."""
    dev = "Fake CPU (2 cores)"
    render = [{"size": f"{s}x{f}x1", "mode": m, "device": dev, "device_kind": "cpu", "date": "2026-12-03T10:00:0" + d,
               "rev": "abc", "fps": fps, "load_avg": 0.4}
              for (s, f, m, d, fps) in [(32, 4, "eager", "1", 40.0), (64, 4, "eager", "1", 12.0),
                                        (128, 4, "eager", "1", 3.0), (64, 1, "eager", "1", 11.0),
                                        (64, 16, "eager", "1", 12.5), (64, 4, "engine-fp32", "1", 1.0),
                                        (64, 4, "engine-fp32", "2", 60.0), (128, 4, "engine-fp32", "1", 15.0)]]
    render.append({"size": "64x4x1", "mode": "engine-bf16", "device": dev, "date": "2026-12-03T10:00:01",
                   "rev": "abc", "error": "skipped: no native bf16"})
    kernels = [{"op": "conv", "shape": f"M={m} (1x{h}x{h}) K=512 N=512", "rows": m, "backend": b, "precision": "fp32",
                "rate": m / 1e5 * (2 if b == "torch" else 1), "unit": "TFLOP/s", "device": dev, "device_kind": "cpu",
                "date": "2026-12-03T10:01:00", "rev": "abc"}
               for m, h in ((256, 16), (1024, 32), (4096, 64)) for b in ("torch", "unfused")]
    kernels += [{"op": "modulate", "shape": f"B={b} Cout=512 Cin=512 r=10", "rows": 0, "backend": "torch",
                 "precision": "fp32", "rate": 5.0 * b, "unit": "GB/s", "device": dev, "device_kind": "cpu",
                 "date": "2026-12-03T10:01:00", "rev": "abc"} for b in (1, 8)]
    res = tmp_path / "results"
    res.mkdir()
    (res / "render.jsonl").write_text("".join(json.dumps(r) + "\n" for r in render))
    (res / "kernels.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kernels))
    return res


def test_sweep_rows_newest_per_key_and_no_errors(tmp_path):
    rows = newest_per_device(read_rows(_sweep_rows(tmp_path) / "render.jsonl"), "rev", ("size", "mode"))
    rs = rows["Fake CPU (2 cores)"]
    assert all("fps" in r for r in rs)                                    # the skipped bf16 row is left out
    engine64 = [r["fps"] for r in rs if r["size"] == "64x4x1" and r["mode"] == "engine-fp32"]
    assert engine64 == [60.0]                                             # the newer of the two measurements
    assert device_kind(rs, "Fake CPU (2 cores)") == "CPU"
    assert device_kind([{}], "Fake CPU (2 cores)") == "CPU"               # from envinfo's name when unlabelled
    assert device_kind([{}], "NVIDIA H200") == "GPU"


def test_sweep_plots_written(tmp_path):
    out = tmp_path / "docs"
    assert main(["--results", str(_sweep_rows(tmp_path)), "--out", str(out)]) == 0
    pngs = sorted(out.glob("*.png"))
    assert [p.name for p in pngs] == ["bench_kernels_fake-cpu-2-cores.png", "bench_render_fake-cpu-2-cores.png"]
    for p in pngs:
        # A drawn figure (> 5 KB), small enough for the README (< 200 KB, the limit).
        assert p.read_bytes()[:8] == PNG_MAGIC and 5000 < p.stat().st_size < 200_000


def test_rate_in_gflops_on_cpu():
    r = {"rate": 0.15, "unit": "TFLOP/s"}
    assert _rate(r, gflops=True) == pytest.approx(150.0)                  # exact up to fp rounding of x1e3
    assert _rate(r, gflops=False) == 0.15
    assert _rate({"rate": 20.0, "unit": "GB/s"}, gflops=True) == 20.0      # GB/s rows are left alone


def _bench_rows():
    meta = run_meta("Fake CPU (2 cores)", "cpu", "abc", True)
    rows = [benchmark_row("eager", "render 128x4x1", dict(median=2.0, mean=2.1, min=1.9, max=2.3, stddev=0.1,
                                                          rounds=2),
                          dict(impl="eager", baseline="eager", frames=4, device="cpu"), meta),
            benchmark_row("engine", "render 128x4x1", dict(median=0.5, mean=0.5, min=0.5, max=0.5, stddev=0.0,
                                                           rounds=3),
                          dict(impl="engine-fp32", baseline="eager", frames=4, device="cpu"), meta),
            benchmark_row("conv", "conv K=512", dict(median=0.01, rounds=5),
                          dict(impl="torch", baseline="unfused", flops=2e9, bytes=1e6, unit="TFLOP/s",
                               peaks={"fp32": 0.15}, device="cpu"), meta),
            benchmark_row("conv-u", "conv K=512", dict(median=0.04, rounds=5),
                          dict(impl="unfused", baseline="unfused", flops=2e9, bytes=1e6, unit="TFLOP/s", device="cpu"),
                          meta)]
    return add_speedups(rows), meta


def test_benchmark_rows_rates_speedups_and_table():
    rows, _ = _bench_rows()
    eager, engine, conv, unfused = rows
    assert all(r["device"] == "Fake CPU (2 cores)" and r["rev"] == "abc" and r["date"] for r in rows)
    assert engine["device_type"] == "cpu"                                 # extra_info's device does not hide the name
    assert engine["rate"] == pytest.approx(8.0) and engine["rate_unit"] == "frames/s"     # 4 frames / 0.5 s
    assert engine["speedup_vs_baseline"] == pytest.approx(4.0)            # 2.0 s / 0.5 s
    assert conv["rate"] == pytest.approx(200.0) and conv["rate_unit"] == "GFLOP/s"        # 2e9 / 0.01 s, CPU: G
    assert conv["speedup_vs_baseline"] == pytest.approx(4.0) and unfused["speedup_vs_baseline"] == 1.0
    table = ratio_table(rows).splitlines()
    assert table[0].split()[:2] == ["group", "impl"] and len(table) == 5
    assert any("engine-fp32" in ln and "4.00x" in ln and "8 frames/s" in ln for ln in table)
    assert any("unfused" in ln and "(baseline)" in ln for ln in table)


def test_csv_and_json_files(tmp_path):
    rows, meta = _bench_rows()
    written = write_rows(rows, tmp_path / "a" / "b.csv", tmp_path / "a" / "b.json", meta)
    assert [p.name for p in written] == ["b.csv", "b.json"]
    with open(tmp_path / "a" / "b.csv", newline="") as f:
        back = list(csv.DictReader(f))
    assert len(back) == 4 and {"device", "date", "rev", "median_s", "rate", "speedup_vs_baseline"} <= set(back[0])
    assert back[2]["device"] == "Fake CPU (2 cores)" and float(back[2]["median_s"]) == 0.01
    assert json.loads(back[2]["peaks"]) == {"fp32": 0.15}                 # nested values JSON-encoded
    doc = json.loads((tmp_path / "a" / "b.json").read_text())
    assert doc["meta"]["rev"] == "abc" and doc["rows"][1]["impl"] == "engine-fp32"
    assert write_rows(rows) == []                                         # neither path: nothing written


def test_bench_kernels_script_writes_csv_and_json(tmp_path, capsys):
    """The script's --csv / --json (one cheap op at a tiny size; the peaks are still measured)."""
    from bench.bench_kernels import main as kernels_main
    kernels_main(["--ops", "yuv420", "--rows", "1x4x4", "--clock", "cpu", "--csv", str(tmp_path / "k.csv"),
                  "--json", str(tmp_path / "k.json")])
    doc = json.loads((tmp_path / "k.json").read_text())
    assert doc["meta"]["device"] and doc["meta"]["rev"] and doc["meta"]["date"]
    row = doc["rows"][0]
    assert row["op"] == "yuv420" and row["device_kind"] in ("cpu", "gpu") and row["rate"] > 0
    assert row["clock"] == "cpu" and row["threads"] >= 1
    assert (tmp_path / "k.csv").read_text().startswith("device,")
    assert "wrote" in capsys.readouterr().out


def test_render_write_results_sweep_block(tmp_path):
    """bench_render.py --sweep --write: its own RESULTS.md block; other blocks and text stay as they are."""
    from bench.bench_render import write_results
    md, jsonl = tmp_path / "RESULTS.md", tmp_path / "results" / "render.jsonl"
    md.write_text("# Benchmark results\n\nintro\n\n<!-- render-cpu:begin -->\nold table\n<!-- render-cpu:end -->\n")
    rows = [dict(size="64x2x1", mode=m, device="Fake CPU (2 cores)", date="2026-12-03T10:00:00", rev="abc",
                 fps=fps, speedup_vs_eager=fps / 2.0, mfu=0.1, peak_mem=float("nan")) for m, fps in
            (("eager", 2.0), ("engine-fp32", 9.0))]
    for _ in range(2):                                                    # rewritten in place, not appended twice
        write_results(rows, sweep=True, command="python bench/bench_render.py --sweep", md=md, jsonl=jsonl)
    text = md.read_text()
    assert "intro" in text and "old table" in text                        # the other block is untouched
    assert text.count("<!-- render-cpu-sweep:begin -->") == 1
    assert "| Fake CPU (2 cores) | 64x2x1 | engine-fp32 | 9.00 |" in text
    assert len(read_rows(jsonl)) == 4                                     # the rows appended each time


def test_timers_use_the_given_clock():
    """--clock cpu: both scripts time by the clock they are given (a fake one here: deterministic)."""
    import torch

    from bench.bench_kernels import host_time_ms
    from bench.bench_render import CLOCKS, timed
    assert set(CLOCKS) == {"wall", "cpu"}
    ticks = iter(range(0, 1000, 2))                                       # every call spans 2 ticks

    def clock():
        return float(next(ticks))
    calls = []
    assert timed(lambda: calls.append(1), torch.device("cpu"), 3, clock) == 2.0
    assert len(calls) == 4                                                # one warm-up, three timed
    med, p20, p80 = host_time_ms(lambda: None, torch.device("cpu"), target_s=5.0, clock=clock)
    assert (med, p20, p80) == (2000.0, 2000.0, 2000.0)                    # ms; 3 calls reach the 5 s target
