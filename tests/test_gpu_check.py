"""bench/gpu_check.py where there is no GPU: the CPU exit, and the report it would write."""
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench import gpu_check as GC  # noqa: E402


def _has_cuda() -> bool:
    import torch
    return torch.cuda.is_available()


def test_without_cuda_says_so_and_exits_0():
    if _has_cuda():
        pytest.skip("a CUDA device is present: gpu-check would run")
    before = (REPO / "bench" / "RESULTS.md").read_bytes()
    r = subprocess.run([sys.executable, "bench/gpu_check.py", "--write"], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("gpu-check: no CUDA device here"), r.stdout
    assert (REPO / "bench" / "RESULTS.md").read_bytes() == before   # nothing written


def test_bad_steps_exit_2(capsys):
    assert GC.main(["--dry-run", "--steps", "tests,nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gpu-check: error:") and "nope" in err


def _report():
    rows = [dict(size="128x16x8", mode="eager", fps=2.0, speedup_vs_eager=1.0, mfu=0.1, peak_mem=2 ** 30),
            dict(size="128x16x8", mode="engine-bf16", fps=50.0, speedup_vs_eager=25.0, mfu=0.4,
                 peak_mem=2 ** 29),
            dict(size="1024x256x1", mode="compile-bf16", error="out of memory")]
    return dict(device="Test GPU", date="2026-01-01T00:00:00", rev="abc", torch="2.11", triton="3.6",
                python="3.12", dry_run=False, seconds=300.0, kernels_args=["--quick"],
                steps=dict(tests=dict(status="ok", counts=dict(passed=10, failed=1), seconds=20),
                           render=dict(status="ok", rows=rows),
                           tiles=dict(status="ok", rows=[dict(size="128x16x1", precision="bf16", tiles=1,
                                                             host_ms=1.5, device_ms=3.0, events="cuda")]),
                           kernels=dict(status="timed out", note="over its 120 s limit")))


def test_summary_is_one_line_with_the_best_engine_mode():
    s = GC.summary(_report())
    assert "\n" not in s and s.startswith("gpu-check: Test GPU")
    assert "10 passed, 1 failed" in s and "128x16x8 engine-bf16 50.0 fps" in s
    assert "bf16 1.50/3.00" in s and "kernels timed out" in s


def test_write_replaces_its_block_only(tmp_path):
    md, jl = tmp_path / "RESULTS.md", tmp_path / "r.jsonl"
    md.write_text("# Results\n\nother text\n")
    GC.write(_report(), md=md, jsonl=jl)
    GC.write(_report(), md=md, jsonl=jl)
    text = md.read_text()
    assert text.count(GC.BEGIN) == 1 and "other text" in text and "**Test GPU**" in text
    assert "| 128x16x8 | engine-bf16 | 50.00 | 25.00 | 0.400 | 512 |" in text
    assert "kernels: timed out over its 120 s limit" in text
    assert len(jl.read_text().splitlines()) == 2


def test_a_step_over_its_limit_is_stopped_and_reported(monkeypatch):
    assert GC.run_step("tests", 1.0, dry=True)["status"] == "skipped"      # below MIN_STEP_S
    # 0.5 s is below what the step needs anywhere: its process imports torch before any work.
    monkeypatch.setattr(GC, "MIN_STEP_S", 0.1)
    res = GC.run_step("render", 0.5, dry=True)
    assert res["status"] == "timed out" and "over its 0 s limit" in res["note"], res


def test_bench_sizes_below_and_between_resolutions():
    from bench.bench_render import parse_size, size_view
    assert parse_size("64x2x1") == (64, 2, 1)
    with pytest.raises(ValueError, match="SIDExFRAMESxVIDEOS"):
        parse_size("64x2")
    v = size_view(64, 128)                  # below the model's resolution: a centred crop
    assert (v.scale, v.output_size(128), v.final_rect(128)) == (1, (64, 64), (32, 96, 32, 96))
    assert size_view(256, 128).scale == 2 and size_view(256, 128).output_size(128) == (256, 256)
    v = size_view(200, 128)                 # between: the next scale, cropped
    assert (v.scale, v.output_size(128), v.top) == (2, (200, 200), 28)
