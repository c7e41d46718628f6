"""The compile guard (kernels/compile_check.py): its readers of ptxas / PTX output, its failure
rules, its argument errors, and one real ahead-of-time compile through a launcher (no GPU)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kernels import compile_check as C

REPO = Path(__file__).resolve().parents[1]

PTXAS_LOG = """ptxas info    : Compiling entry function '_fmm_bwd_dw_kernel' for 'sm_90a'
ptxas info    : Function properties for _fmm_bwd_dw_kernel
    2936 bytes stack frame, 4392 bytes spill stores, 4388 bytes spill loads
ptxas info    : Used 32 registers, used 1 barriers, 2936 bytes cumulative stack size
"""

# The shape of LLVM's NVPTX output: block labels with their IR names and loop membership as
# comments. Two sin/cos bodies in the loop, one after it, one sin.approx in the loop.
PTX = """
	mov.b32 	%r1, 0;
$L__BB0_1:                              // =>This Loop Header: Depth=1
	sin.approx.f32 	%r2, %r1;
$L__BB0_2:                             // %__nv_sinf.exit
                                        //   in Loop: Header=BB0_1 Depth=1
	mul.rn.f32 	%r3, %r2, %r2;
$L__BB0_3:                             // %__nv_cosf.exit3528
                                        //   in Loop: Header=BB0_1 Depth=1
	@%p1 bra 	$L__BB0_1;
$L__BB0_4:                             // %._crit_edge
	cos.approx.f32 	%r4, %r1;
$L__BB0_5:                             // %__nv_sinf.exit99
	ret;
"""


def _rec(**kw):
    base = dict(kernel="k", arch=90, precision="fp32", regs=64, spill_bytes=0, smem_bytes=1024,
                mma="fma", transcendentals_in_loop=0, has_dot=True, num_warps=4, num_stages=3,
                constexprs={}, specialization="", hash="h")
    base.update(kw)
    return C.Record(**base)


def test_parse_ptxas_log():
    assert C.parse_ptxas_log(PTXAS_LOG) == (32, 4392 + 4388)
    assert C.parse_ptxas_log("nothing here") == (None, None)


def test_mma_kind():
    assert C.mma_kind("wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16") == "wgmma"
    assert C.mma_kind("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32") == "mma.sync"
    assert C.mma_kind("fma.rn.f32 %r1, %r2, %r3, %r4;") == "fma"


def test_transcendentals_counted_inside_loops_only():
    # In the loop: sin.approx, %__nv_sinf.exit, %__nv_cosf.exit3528 -> 3; after it: 2 not counted.
    assert C.transcendentals_in_loops(PTX) == 3
    assert C.transcendentals_in_loops("") == 0


@pytest.mark.parametrize("kw, why", [
    (dict(spill_bytes=8780, regs=32), "spills"),
    (dict(smem_bytes=C.SMEM_LIMIT[90] + 1), "shared memory"),
    (dict(arch=80, smem_bytes=C.SMEM_LIMIT[80] + 1), "shared memory"),
    (dict(precision="bf16", mma="fma"), "not wgmma"),
    (dict(precision="tf32", mma="mma.sync"), "not wgmma"),
    (dict(precision="fp32", mma="fma", constexprs=dict(DOT_PRECISION="tf32x3")), "3xTF32"),
    (dict(regs=None, spill_bytes=None), "no register"),
    (dict(error="PTXASError: boom"), "does not compile"),
])
def test_failure_rules(kw, why):
    fails = C.failures_of(_rec(**kw))
    assert len(fails) == 1 and why in fails[0], fails


@pytest.mark.parametrize("kw", [
    dict(),                                                   # fp32 FMA GEMM, no spill
    dict(precision="bf16", mma="wgmma", smem_bytes=C.SMEM_LIMIT[90]),
    dict(arch=80, precision="bf16", mma="mma.sync"),          # sm_80 has no wgmma
    dict(precision="bf16", mma="fma", has_dot=False),         # no GEMM: nothing to put on tensor cores
    dict(precision="fp32-ieee", constexprs=dict(DOT_PRECISION="ieee")),   # the exact FMA dot
    dict(precision="fp32", mma="wgmma", constexprs=dict(DOT_PRECISION="tf32x3")),
    dict(arch=80, precision="fp32", mma="mma.sync", constexprs=dict(DOT_PRECISION="tf32x3")),
])
def test_passing_records(kw):
    assert C.failures_of(_rec(**kw)) == []


def test_official_scenarios_cover_the_presets():
    names = {s.name for s in C.official_scenarios()}
    assert names == {f"{m}-{r}-{p}" for m in ("render", "train") for r in (128, 256)
                     for p in ("fp32", "tf32", "bf16", "fp32-ieee")}


@pytest.mark.parametrize("constexprs, precision", [
    (dict(DOT_PRECISION="tf32x3", BF16_OPERANDS=False), "fp32"),
    (dict(DOT_PRECISION="tf32", BF16_OPERANDS=False), "tf32"),
    (dict(DOT_PRECISION="ieee", BF16_OPERANDS=False), "fp32-ieee"),
    (dict(DOT_PRECISION="ieee", BF16_OPERANDS=True), "bf16"),
    (dict(BLOCK=256), "fp32"),                     # no operand-precision switch (modulate, colour)
])
def test_precision_of_a_variant(constexprs, precision):
    # Every mode's DOT_PRECISION maps back to the mode (the scenario check relies on it).
    assert C._precision_of(constexprs) == precision


@pytest.mark.parametrize("argv, msg", [
    (["--arch", "75"], "unsupported arch 75"),
    (["--only", "no-such-scenario"], "no scenario matches"),
    (["--jobs", "0"], "--jobs must be >= 1"),
])
def test_bad_arguments_exit_2(argv, msg, tmp_path, capsys):
    assert C.main(argv + ["--out", str(tmp_path / "r.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("compile_check: error:") and msg in err and "Traceback" not in err
    assert not (tmp_path / "r.json").exists()


def test_refuses_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(C.CompileCheckError, match="TRITON_INTERPRET=0"):
        C.check(C.official_scenarios()[:1], archs=(90,))


_ONE_COMPILE = """
import json, os
os.environ["TRITON_INTERPRET"] = "0"
import torch
from kernels import compile_check as C
from kernels.rgb import rgb_to_yuv420_triton
out = {}
for arch in (90, 80):
    cap = C._Capture(arch)
    cap.scenario = C.Scenario("unit", "render", 128, 1, "fp32", 1)
    with C.stand_in_gpu(cap):
        # (F, H, W, 3) uint8 frames: the launcher checks and allocates on the CPU, never launches.
        rgb_to_yuv420_triton(torch.empty((2, 16, 16, 3), dtype=torch.uint8))
    recs = [C.analyse(e["kernel"], arch, e["log"]) for e in cap.kernels.values()]
    out[arch] = [dict(vars(r), failures=C.failures_of(r)) for r in recs] + cap.errors
print("@@" + json.dumps(out))
"""


@pytest.mark.slow
def test_real_launcher_compiles_for_sm90_and_sm80():
    """One real launcher under the stand-in driver compiles its kernel for both archs (no GPU; a
    few seconds): one record each, ptxas figures present, nothing spilled, no tensor cores."""
    r = subprocess.run([sys.executable, "-c", _ONE_COMPILE], cwd=REPO, capture_output=True, text=True,
                       env={**os.environ, "TRITON_INTERPRET": "0"}, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.split("@@", 1)[1])
    for arch in ("90", "80"):
        (rec,) = out[arch]
        assert rec["kernel"] == "_rgb_to_yuv420_kernel" and rec["arch"] == int(arch)
        assert rec["regs"] > 0 and rec["spill_bytes"] == 0 and rec["mma"] == "fma"
        assert rec["failures"] == [] and rec["constexprs"]["BLOCK"] == 256


def test_results_md_block_is_replaced_in_place(tmp_path):
    md = tmp_path / "RESULTS.md"
    md.write_text("# Results\n\nkept\n")
    recs = [_rec(kernel="_fmm_linear_kernel", precision="bf16", mma="wgmma",
                 constexprs=dict(HAS_EMB=True, ACT=False, BLOCK_M=128)),
            _rec(kernel="_fmm_bwd_dw_kernel", spill_bytes=8780, regs=32)]
    for r in recs:
        r.failures = C.failures_of(r)
    report = dict(triton="3.9.0", archs=[90, 80], variants=2, failed=1, seconds=12.0,
                  scenarios=[dict(name="render-128-bf16")])
    C.write_results_md(md, report, recs)
    C.write_results_md(md, report, recs)
    text = md.read_text()
    assert text.count("<!-- compile-check:begin -->") == 1 and "kept" in text
    assert "| _fmm_linear_kernel | sm_90 | bf16 | HAS_EMB BLOCK_M=128 | 64 | 0 | 1024 | wgmma | 0 | yes |" in text
    assert "NO: spills 8780 bytes (32 registers)" in text


def test_scenario_without_its_precision_fails():
    fails = C.failures_of(_rec(kernel="(scenario)", error="launched no bf16 GEMM"))
    assert fails == ["launched no bf16 GEMM"]
