"""Compile guard without a GPU: every Triton kernel variant the launchers really launch, compiled
ahead of time for sm_90 and sm_80, with its registers, spills, shared memory and MMA kind.

    python3 -m kernels.compile_check [--out build/compile-report.json] [--arch 90 80]
                                     [--only SUBSTRING] [--markdown]

How (DESIGN §6): a stand-in driver is made active, answering `get_current_target()` with
GPUTarget("cuda", arch, 32); every `JITFunction.run` is turned into `run(..., warmup=True)`, so
the real binder specialises the arguments exactly as on a GPU (16-divisibility, equal-to-1,
pointer alignment) and compiles without launching. The launchers then run on CPU tensors: the
render engine (engine/executor.py) for whole videos and `digan.fast_synthesis` forward + backward
for a training step, for each official scenario (128², 256²; render and training; every precision
of kernels._common.PRECISIONS: fp32 (3xTF32), tf32, bf16, fp32-ieee). Outputs of the kernels are
never written (nothing is launched), so everything the host computes from them is garbage; only
the shapes, dtypes, strides and flags matter, and they do not depend on values.

One record per distinct compiled kernel and arch (identical variants met by several scenarios are
compiled once, by Triton's own cache, and listed once with every scenario in `scenarios`):
kernel, arch, precision, regs, spill_bytes (spill stores + loads, from `ptxas -v`), smem_bytes (the
dynamic shared memory Triton asks for), mma (`wgmma` | `mma.sync` | `fma`: tensor-core
instructions in the PTX; `fma` also for kernels without a GEMM), transcendentals_in_loop (libdevice
sinf/cosf bodies and sin/cos.approx instructions inside loops of the PTX: the K loops), plus the
constexprs and the specialisation.

Each record's precision is the mode that launched it, read from its DOT_PRECISION constexpr
("tf32x3" -> fp32, "tf32" -> tf32, "ieee" -> fp32-ieee; BF16_OPERANDS -> bf16); kernels without
that switch (the modulate and colour kernels) are fp32 with exact FMA dots.

It fails (exit 1) when a variant does not compile, spills, needs more shared memory than the arch
has, or is a bf16 / tf32 / fp32 (3xTF32) GEMM that is not `wgmma` on sm_90. Bad arguments exit 2.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence

from ._common import PRECISIONS

ARCHS = (90, 80)
# Shared memory one CTA may use (opt-in maximum): sm_90 227 KiB, sm_80 163 KiB (CUDA guide, table
# "Technical Specifications per Compute Capability"). Triton refuses to load a kernel above it.
SMEM_LIMIT = {90: 232448, 80: 166912}
DEFAULT_OUT = Path("build") / "compile-report.json"


class CompileCheckError(ValueError):
    """Bad arguments of the compile check (the CLI exits 2)."""


@dataclass(frozen=True)
class Scenario:
    name: str            # e.g. "render-128-bf16"
    mode: str            # "render" (engine, no grad) or "train" (fast_synthesis forward + backward)
    resolution: int      # GeneratorConfig.img_resolution of the model
    scale: int           # render super-resolution factor (output = resolution * scale)
    precision: str       # GEMM precision
    frames: int          # render: frames of the request; train: times per video (official: 2)
    videos: int = 2      # train: videos per forward pass (only the modulate grid depends on it)


def official_scenarios() -> List[Scenario]:
    """128² (the released digan-128 architecture) and 256² (the same recipe at img_resolution
    256: 128 channels at the top level), rendered (16 frames, the engine's GPU plan) and trained
    (2 times per video, as the official trainer samples), in every precision."""
    out = []
    for res in (128, 256):
        for p in PRECISIONS:
            out.append(Scenario(f"render-{res}-{p}", "render", res, 1, p, 16))
            out.append(Scenario(f"train-{res}-{p}", "train", res, 1, p, 2))
    return out


@dataclass
class Record:
    kernel: str
    arch: int
    precision: str
    regs: Optional[int]
    spill_bytes: Optional[int]
    smem_bytes: Optional[int]
    mma: str
    transcendentals_in_loop: int
    has_dot: bool
    num_warps: int
    num_stages: int
    constexprs: Dict[str, object]
    specialization: str
    hash: str
    scenarios: List[str] = field(default_factory=list)
    error: Optional[str] = None
    failures: List[str] = field(default_factory=list)


# ---- reading the compiled code ------------------------------------------------------------------

_PTXAS_REGS = re.compile(r"Used (\d+) registers")
_PTXAS_SPILL = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")
_LABEL = re.compile(r"^(\$L__\w+):")
_TRIG_EXIT = re.compile(r"%__nv_(?:fast_)?(?:sin|cos)f\.exit\d*\b")
_TRIG_APPROX = re.compile(r"^\s*(?:@%p\d+\s+)?(?:sin|cos)\.approx")


def parse_ptxas_log(log: str) -> tuple:
    """`ptxas -v` output -> (registers, spill store + load bytes); None where absent."""
    regs = _PTXAS_REGS.findall(log)
    spills = _PTXAS_SPILL.findall(log)
    return (int(regs[-1]) if regs else None,
            sum(int(a) + int(b) for a, b in spills) if spills else None)


def mma_kind(ptx: str) -> str:
    """Tensor-core instruction family in the PTX: 'wgmma' (sm_90 warpgroup MMA), 'mma.sync'
    (sm_80-style warp MMA) or 'fma' (no tensor cores: scalar FMA dots, or no GEMM)."""
    if re.search(r"\bwgmma\.", ptx):
        return "wgmma"
    if re.search(r"\bmma\.sync\.", ptx):
        return "mma.sync"
    return "fma"


def transcendentals_in_loops(ptx: str) -> int:
    """sin/cos evaluated inside loops of the PTX. libdevice's sinf/cosf are inlined: each
    evaluation leaves a basic block named %__nv_sinf.exit / %__nv_cosf.exit (LLVM prints block
    names and loop membership as comments after the label); approximate ones are sin.approx /
    cos.approx instructions. A block is in a loop when its label's comments say 'Loop Header'
    or 'in Loop:'. Counts are per thread, per iteration (one per element a thread holds)."""
    count = 0
    lines = ptx.splitlines()
    in_loop = False
    i = 0
    while i < len(lines):
        line = lines[i]
        m = _LABEL.match(line)
        if m:
            comments = [line]
            j = i + 1
            while j < len(lines) and lines[j].lstrip().startswith("//"):
                comments.append(lines[j])
                j += 1
            text = " ".join(comments)
            in_loop = "Loop Header" in text or "in Loop:" in text
            if in_loop and _TRIG_EXIT.search(line):
                count += 1
            i = j
            continue
        if in_loop and _TRIG_APPROX.match(line):
            count += 1
        i += 1
    return count


def _ptxas_path(arch: int) -> str:
    try:  # triton >= 3.5 picks the ptxas that understands its PTX version per arch
        from triton.backends.nvidia.compiler import get_ptxas
        return get_ptxas(arch).path
    except Exception:  # older layout: the bundled binary
        import triton.backends.nvidia as nv
        return str(Path(nv.__file__).parent / "bin" / "ptxas")


def run_ptxas(ptx: str, arch: int, fp_fusion: bool) -> str:
    """`ptxas -v` on the PTX with Triton's own flags; returns its log (stderr)."""
    gpu = "sm_90a" if arch == 90 else f"sm_{arch}"
    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "k.ptx"
        src.write_text(ptx)
        cmd = [_ptxas_path(arch), "-v", "-lineinfo", *([] if fp_fusion else ["--fmad=false"]),
               f"--gpu-name={gpu}", str(src), "-o", str(Path(d) / "k.o")]
        r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"ptxas failed ({r.returncode}): {r.stderr[-2000:]}")
    return r.stderr


# DOT_PRECISION (kernels._common.triton_dot_precision) -> the precision mode that launches it.
_DOT_PRECISIONS = {"tf32x3": "fp32", "tf32": "tf32", "ieee": "fp32-ieee"}


def _precision_of(constexprs: dict) -> str:
    if constexprs.get("BF16_OPERANDS"):
        return "bf16"
    if "DOT_PRECISION" in constexprs:
        return _DOT_PRECISIONS.get(constexprs["DOT_PRECISION"], "?")
    return "fp32"     # no operand-precision switch: the kernel computes in fp32 (exact FMA dots)


def _on_tensor_cores(r: "Record") -> bool:
    """Whether the record's GEMM is meant for tensor cores: bf16, tf32, and fp32 as 3xTF32 (a
    kernel without the DOT_PRECISION switch, such as the modulate kernels, keeps its FMA dot)."""
    if r.precision in ("bf16", "tf32"):
        return True
    return r.precision == "fp32" and r.constexprs.get("DOT_PRECISION") == "tf32x3"


def _constexprs(kernel) -> dict:
    """{name: value} of the compiled kernel's constexprs (plain values only)."""
    src = getattr(kernel, "src", None)
    out = {}
    if src is None:
        return out
    names = list(src.signature)
    for path, v in (getattr(src, "constants", None) or getattr(src, "constexprs", {})).items():
        k = path[0] if isinstance(path, tuple) else path
        name = names[k] if isinstance(k, int) and k < len(names) else str(k)
        if isinstance(v, (bool, int, float, str)):
            out[name] = v
    return out


def analyse(kernel, arch: int, ptxas_log: Optional[str]) -> Record:
    """Record of one compiled kernel (a triton CompiledKernel)."""
    md = kernel.metadata
    ptx = kernel.asm["ptx"]
    src = getattr(kernel, "src", None)
    constexprs = _constexprs(kernel)
    spec = ""
    if src is not None:
        names = list(src.signature)
        attrs = getattr(src, "attrs", {})
        spec = ";".join(f"{names[p[0]] if isinstance(p, tuple) and p[0] < len(names) else p}:"
                        f"{''.join(str(x) for x in a)}" for p, a in sorted(attrs.items(), key=str))
    if not ptxas_log or parse_ptxas_log(ptxas_log)[0] is None:
        ptxas_log = run_ptxas(ptx, arch, bool(getattr(md, "enable_fp_fusion", True)))
    regs, spill = parse_ptxas_log(ptxas_log)
    ttir = kernel.asm.get("ttir", "")
    return Record(
        kernel=md.name, arch=arch, precision=_precision_of(constexprs), regs=regs,
        spill_bytes=spill, smem_bytes=int(md.shared), mma=mma_kind(ptx),
        transcendentals_in_loop=transcendentals_in_loops(ptx),
        has_dot=bool(re.search(r"\btt\.dot\b", ttir)), num_warps=int(md.num_warps),
        num_stages=int(getattr(md, "num_stages", 0)), constexprs=constexprs, specialization=spec,
        hash=str(getattr(kernel, "hash", "")))


def failures_of(r: Record) -> List[str]:
    """Why a record fails the guard (empty: it passes)."""
    out = []
    if r.error:
        return [r.error if r.kernel == "(scenario)" else f"does not compile: {r.error}"]
    if r.spill_bytes is None or r.regs is None:
        out.append("ptxas reported no register / spill figures")
    elif r.spill_bytes > 0:
        out.append(f"spills {r.spill_bytes} bytes ({r.regs} registers)")
    if r.smem_bytes is not None and r.smem_bytes > SMEM_LIMIT.get(r.arch, 0):
        out.append(f"needs {r.smem_bytes} bytes of shared memory, sm_{r.arch} has "
                   f"{SMEM_LIMIT.get(r.arch)}")
    if r.arch == 90 and r.has_dot and _on_tensor_cores(r) and r.mma != "wgmma":
        label = "fp32 (3xTF32)" if r.precision == "fp32" else r.precision
        out.append(f"{label} GEMM compiled to {r.mma}, not wgmma")
    return out


# ---- the stand-in GPU ---------------------------------------------------------------------------

class _StandInDriver:
    """Just enough of a Triton driver for the binder and the compiler (nothing is launched)."""

    def __init__(self, arch: int):
        self.arch = arch

    def get_current_target(self):
        from triton.backends.compiler import GPUTarget
        return GPUTarget("cuda", self.arch, 32)

    def get_current_device(self):
        return 1000 + self.arch          # one binder cache per arch (JITFunction.device_caches)

    def get_current_stream(self, device=None):
        return 0

    def is_active(self):
        return True

    def get_active_torch_device(self):
        import torch
        return torch.device("cpu")


class _Capture:
    """Collects (kernel, ptxas log, scenario) for every launch while the stand-in is active."""

    def __init__(self, arch: int):
        self.arch = arch
        self.scenario: Optional[Scenario] = None
        self.kernels: Dict[str, dict] = {}    # hash -> {kernel, log, scenarios}
        self.errors: List[dict] = []


@contextlib.contextmanager
def stand_in_gpu(capture: _Capture) -> Iterator[None]:
    """While active: Triton compiles for capture.arch without a GPU, every kernel launch is a
    warm-up (compile only) recorded in `capture`, and the launchers accept CPU tensors."""
    import triton
    from triton.runtime.jit import JITFunction

    import engine.renderer as ex
    import kernels.level as k_lvl
    import kernels.linear as k_lin
    import kernels.linear_backward as k_lbw
    import kernels.linear_rgb as k_lrgb
    import kernels.modulate as k_mod
    import kernels.modulate_backward as k_mbw
    import kernels.rgb as k_rgb

    orig_run = JITFunction.run

    def run(self, *args, grid, warmup, **kwargs):
        buf = io.StringIO()
        name = getattr(self, "__name__", None) or self.fn.__name__
        try:
            with contextlib.redirect_stdout(buf):   # TRITON_DUMP_PTXAS_LOG prints ptxas -v here
                kernel = orig_run(self, *args, grid=grid, warmup=True, **kwargs)
        except Exception as e:  # a kernel that does not compile is a finding, not a crash
            capture.errors.append(dict(kernel=name, scenario=capture.scenario.name,
                                       error=f"{type(e).__name__}: {str(e)[-1500:]}"))
            return None
        h = str(getattr(kernel, "hash", id(kernel)))
        entry = capture.kernels.setdefault(h, dict(kernel=kernel, log=buf.getvalue(), scenarios=[]))
        if capture.scenario.name not in entry["scenarios"]:
            entry["scenarios"].append(capture.scenario.name)
        return kernel

    def resolve(backend, device):   # the launchers' CPU-tensor guard, lifted
        return "triton"

    patched = [(m, "resolve_backend", resolve) for m in (k_lin, k_lrgb, k_lvl, k_lbw, k_mod, k_mbw, k_rgb)]
    patched.append((ex, "interpreter_enabled", lambda: True))
    # The engine renders bf16 as fp32 on a CPU without native bf16; these CPU tensors stand for a
    # GPU's, so the precision asked for is the one compiled.
    patched.append((ex, "resolve_precision", lambda precision, device: precision))
    saved = [(m, n, getattr(m, n)) for m, n, _ in patched]
    drv = triton.runtime.driver
    prev_driver = getattr(drv, "_active", None)    # None on a machine without a GPU
    drv.set_active(_StandInDriver(capture.arch))
    JITFunction.run = run
    try:
        for m, n, v in patched:
            setattr(m, n, v)
        yield
    finally:
        JITFunction.run = orig_run
        for m, n, v in saved:
            setattr(m, n, v)
        if hasattr(drv, "_active"):
            drv._active = prev_driver     # reset_active() would probe for a real GPU
        else:
            drv.reset_active()


# ---- driving the real launch paths --------------------------------------------------------------

def _generator(resolution: int):
    import dataclasses

    import torch

    from digan.config import generator_preset
    from digan.networks import Generator
    cfg = dataclasses.replace(generator_preset("digan-128"), img_resolution=resolution)
    torch.manual_seed(0)
    with torch.device("meta"):
        G = Generator(cfg)
    # Real (uninitialised) CPU storage: the host code reads shapes and strides, never values.
    return G.to_empty(device="cpu").eval()


def drive(sc: Scenario, G) -> None:
    """Run the scenario's real launch path on CPU tensors (kernels compile, never run)."""
    import torch

    if sc.mode == "render":
        from digan.view import View
        from engine.plan import make_plan
        from engine.renderer import Renderer
        from engine.request import RenderRequest
        req = RenderRequest(seeds=[0], frames=sc.frames, view=View(scale=sc.scale),
                            precision=sc.precision, backend="triton", device="cpu")
        act_bytes = 2 if sc.precision == "bf16" else 4
        # The plan a CUDA device gets (no CPU cache cap), so the tiles, and the specialisations
        # of M and of the strides, are the GPU's.
        plan = make_plan(G.cfg, req.view, req.num_frames, req.memory_budget, act_bytes=act_bytes)
        r = Renderer(G, req, plan)
        blocks = r.video_weights(0)
        for chunk in plan.chunks():
            r.render_chunk(blocks, chunk)
    elif sc.mode == "train":
        from digan.fast_synthesis import fast_synthesis
        cfg = G.cfg
        ws = torch.zeros((sc.videos, G.num_ws, cfg.w_dim), requires_grad=True)
        zm = torch.zeros((sc.videos, cfg.w_dim), requires_grad=True)
        Ts = torch.linspace(0.25, 0.75, sc.frames).repeat(sc.videos, 1)     # (B, T)
        frames = fast_synthesis(G, ws, Ts, zm, precision=sc.precision, backend="triton")
        frames.sum().backward()
        G.zero_grad(set_to_none=True)
    else:
        raise CompileCheckError(f"unknown scenario mode {sc.mode!r}")


def check(scenarios: Sequence[Scenario], archs: Sequence[int] = ARCHS,
          log=print) -> List[Record]:
    """Compile every launched variant of `scenarios` for `archs`; records with their failures."""
    if os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes"):
        raise CompileCheckError("the compile check needs TRITON_INTERPRET=0 (it compiles for a GPU); "
                                "run it as `python3 -m kernels.compile_check`")
    for a in archs:
        if a not in SMEM_LIMIT:
            raise CompileCheckError(f"unsupported arch {a}; choose from {sorted(SMEM_LIMIT)}")
    records: List[Record] = []
    models = {}
    for arch in archs:
        cap = _Capture(arch)
        with stand_in_gpu(cap):
            for sc in scenarios:
                if sc.resolution not in models:
                    models[sc.resolution] = _generator(sc.resolution)
                cap.scenario = sc
                t0 = time.perf_counter()
                n0 = len(cap.kernels)
                drive(sc, models[sc.resolution])
                log(f"sm_{arch} {sc.name}: {len(cap.kernels) - n0} new variants "
                    f"({time.perf_counter() - t0:.1f} s)")
                # A scenario whose GEMMs silently ran in another precision (a fallback on the host)
                # would leave its variants unchecked: every scenario must launch one of its own.
                if not any(sc.name in e["scenarios"] and _precision_of(_constexprs(e["kernel"])) ==
                           sc.precision and "DOT_PRECISION" in _constexprs(e["kernel"])
                           for e in cap.kernels.values()):
                    cap.errors.append(dict(kernel="(scenario)", scenario=sc.name,
                                           error=f"launched no {sc.precision} GEMM"))
        for h, e in cap.kernels.items():
            rec = analyse(e["kernel"], arch, e["log"])
            rec.scenarios = e["scenarios"]
            rec.failures = failures_of(rec)
            records.append(rec)
        for err in cap.errors:
            rec = Record(kernel=err["kernel"], arch=arch, precision="?", regs=None, spill_bytes=None,
                         smem_bytes=None, mma="?", transcendentals_in_loop=0, has_dot=False,
                         num_warps=0, num_stages=0, constexprs={}, specialization="", hash="",
                         scenarios=[err["scenario"]], error=err["error"])
            rec.failures = failures_of(rec)
            records.append(rec)
    return records


def markdown_table(records: Sequence[Record]) -> str:
    """The report as a Markdown table (bench/RESULTS.md)."""
    key = ("ACT", "HAS_X", "HAS_X_INDEX", "HAS_EMB", "HAS_PRE", "HAS_POST", "OUT_UINT8", "NEED_X",
           "NEED_EMB", "HAS_BIAS", "HAS_CLAMP", "RGB_FOLD", "OUT_FRAMES", "C", "L", "BLOCK_M", "BLOCK_N",
           "BLOCK_K")
    rows = ["| kernel | arch | precision | variant | regs | spill B | smem B | mma | trig in loop | ok |",
            "|---|---|---|---|---:|---:|---:|---|---:|---|"]
    for r in sorted(records, key=lambda r: (r.kernel, -r.arch, r.precision, str(r.constexprs))):
        flags = " ".join(f"{k}={v}" if not isinstance(v, bool) else k for k, v in r.constexprs.items()
                         if k in key and v is not False)
        rows.append(f"| {r.kernel} | sm_{r.arch} | {r.precision} | {flags} | {r.regs} | "
                    f"{r.spill_bytes} | {r.smem_bytes} | {r.mma} | {r.transcendentals_in_loop} | "
                    f"{'yes' if not r.failures else 'NO: ' + '; '.join(r.failures)} |")
    return "\n".join(rows)


def write_results_md(path: Path, report: dict, records: Sequence[Record]) -> None:
    """Rewrite the block between the compile-check markers of `path` (appended when missing)."""
    from bench.results_md import replace_block  # the one writer of RESULTS.md blocks

    begin, end = "<!-- compile-check:begin -->", "<!-- compile-check:end -->"
    head = (f"_`make compile-check` (python3 -m kernels.compile_check): triton {report['triton']}, "
            f"{report['variants']} variants for sm_{'/sm_'.join(map(str, report['archs']))}, "
            f"{report['failed']} failed, {report['seconds']:.0f} s on this machine; scenarios "
            f"{', '.join(s['name'] for s in report['scenarios'])}_")
    replace_block(path, begin, end, f"{head}\n\n{markdown_table(records)}",
                  "## Compiled kernel variants (sm_90, sm_80; no GPU needed)\n\n"
                  "Every Triton kernel variant the launchers really launch for the official scenarios, "
                  "compiled ahead of time through the real binder (registers and spills from `ptxas -v`, "
                  "dynamic shared memory, tensor-core instructions, sin/cos evaluations per thread inside "
                  "the PTX loops).\n\n")


def _check_in_processes(args) -> List[Record]:
    """One child process per arch (compiling is single-threaded per process), merged."""
    with tempfile.TemporaryDirectory() as d:
        procs = []
        for a in args.arch:
            out = Path(d) / f"sm_{a}.json"
            cmd = [sys.executable, "-m", "kernels.compile_check", "--arch", str(a), "--out", str(out),
                   "--jobs", "1"] + ([] if args.only is None else ["--only", args.only])
            env = {**os.environ, "TRITON_INTERPRET": "0"}
            procs.append((a, out, subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                                                   cwd=Path(__file__).resolve().parents[1])))
        records = []
        for a, out, proc in procs:
            proc.wait()
            if proc.returncode not in (0, 1) or not out.exists():
                raise CompileCheckError(f"the sm_{a} compile process failed (exit {proc.returncode})")
            for r in json.loads(out.read_text())["records"]:
                records.append(Record(**r))
    return records


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="compile_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON report (default %(default)s)")
    p.add_argument("--arch", type=int, nargs="+", default=list(ARCHS), help="compute capabilities")
    p.add_argument("--only", default=None, help="only scenarios whose name contains this")
    p.add_argument("--markdown", action="store_true", help="also print the Markdown table")
    p.add_argument("--results-md", type=Path, default=None,
                   help="also rewrite the compile-check table in this Markdown file (bench/RESULTS.md)")
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                   help="archs compiled in parallel processes (default %(default)s)")
    args = p.parse_args(argv)
    try:
        scenarios = [s for s in official_scenarios() if args.only is None or args.only in s.name]
        if not scenarios:
            raise CompileCheckError(f"no scenario matches {args.only!r}; scenarios: "
                                    f"{[s.name for s in official_scenarios()]}")
        if args.jobs < 1:
            raise CompileCheckError(f"--jobs must be >= 1, got {args.jobs}")
        for a in args.arch:
            if a not in SMEM_LIMIT:
                raise CompileCheckError(f"unsupported arch {a}; choose from {sorted(SMEM_LIMIT)}")
        t0 = time.perf_counter()
        if len(args.arch) > 1 and args.jobs > 1:
            records = _check_in_processes(args)
        else:
            with tempfile.TemporaryDirectory() as cache:
                # A fresh cache: every variant really compiles, so ptxas prints its -v log for it.
                os.environ["TRITON_CACHE_DIR"] = cache
                os.environ["TRITON_DUMP_PTXAS_LOG"] = "1"
                records = check(scenarios, args.arch, log=lambda s: print(s, file=sys.stderr))
        seconds = time.perf_counter() - t0
    except CompileCheckError as e:
        print(f"compile_check: error: {e}", file=sys.stderr)
        return 2
    import triton
    bad = [r for r in records if r.failures]
    report = dict(triton=triton.__version__, archs=args.arch, scenarios=[asdict(s) for s in scenarios],
                  seconds=round(seconds, 1), variants=len(records), failed=len(bad),
                  records=[asdict(r) for r in records])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    if args.markdown:
        print(markdown_table(records))
    if args.results_md is not None:
        write_results_md(args.results_md, report, records)
    for r in bad:
        print(f"FAIL {r.kernel} sm_{r.arch} {r.precision} {r.constexprs}: {'; '.join(r.failures)}",
              file=sys.stderr)
    print(f"compile check: {len(records)} variants for sm_{'/sm_'.join(map(str, args.arch))}, "
          f"{len(bad)} failed, {seconds:.0f} s (triton {triton.__version__}) -> {args.out}")
    return 1 if bad else 0


if __name__ == "__main__":
    # The kernels must be decorated for compilation, not for the interpreter (see kernels/_common).
    os.environ["TRITON_INTERPRET"] = "0"
    sys.exit(main())
