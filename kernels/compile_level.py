"""Compile probe of the fused level kernel without a GPU: its real variants compiled ahead of time
for sm_90 and sm_80, with registers, spills and shared memory.

    python3 -m kernels.compile_level [--arch 90 80] [--precision fp32 bf16] [--results-md bench/RESULTS.md]

The same way as kernels/compile_check.py (DESIGN §6): its stand-in driver answers for the arch,
every launch becomes a warm-up (compile only), and the real launcher `fmm_level_triton` runs on
CPU tensors with the shapes of the levels it is meant for: the top level of digan-128 (C = 256,
E = 128, conv1 + one extra conv, uint8 out) and the two top levels of the same recipe at 256²
(C = 256 with fp32 out, C = 128 with uint8 out). Values never matter (nothing is launched).
Exit 1 when a variant does not compile, spills or needs more shared memory than the arch has.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple

from .compile_check import ARCHS, SMEM_LIMIT, Record, Scenario, _Capture, analyse, failures_of, stand_in_gpu

PRECISIONS = ("fp32", "tf32", "bf16")
RESULTS_BEGIN, RESULTS_END = "<!-- level-kernel:begin -->", "<!-- level-kernel:end -->"


@dataclass(frozen=True)
class LevelShape:
    name: str          # e.g. "digan-128 b128"
    C: int             # channels
    E: int             # embedding frequencies
    L: int             # convs after conv0
    uint8: bool        # the final level stores uint8


LEVELS = (LevelShape("digan-128 b128", 256, 128, 2, True),
          LevelShape("digan-256 b128", 256, 128, 2, False),
          LevelShape("digan-256 b256", 128, 128, 2, True))


def _launch(shape: LevelShape, precision: str) -> None:
    """fmm_level_triton on CPU tensors of a 2-frame 128 x 128 tile (the specialisation of the
    strides and sizes is the engine's: all multiples of 16 but the 3-wide image)."""
    import torch

    from .level import fmm_level_triton

    C, E, L, F, side = shape.C, shape.E, shape.L, 2, 128
    M = F * side * side
    dt = torch.bfloat16 if precision == "bf16" else torch.float32
    z = torch.zeros
    fmm_level_triton(z(C, 2 * E, dtype=dt), z(C), z(L, C, C, dtype=dt), z(L, C), z(3, C, dtype=dt), z(3),
                     emb_A=z(E, 2), emb_b=z(F, E), xs=z(side), ys=z(side), pre_add=z(M // 4, C),
                     pre_index=z(M, dtype=torch.int64), img=z(M // 4, 3), img_index=z(M, dtype=torch.int64),
                     clamp=256.0, rgb_clamp=256.0, out_uint8=shape.uint8, precision=precision)


def check(archs: Sequence[int] = ARCHS, precisions: Sequence[str] = PRECISIONS,
          levels: Sequence[LevelShape] = LEVELS, log=print) -> Tuple[List[Record], List[str]]:
    """Compile the fused level kernel for every (arch, level, precision): the records (with their
    failures) and the variants that did not compile (messages)."""
    import kernels.level as k_level

    if os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes"):
        raise ValueError("the compile probe needs TRITON_INTERPRET=0; run python3 -m kernels.compile_level")
    records, errors = [], []
    saved = k_level.resolve_backend
    for arch in archs:
        if arch not in SMEM_LIMIT:
            raise ValueError(f"unsupported arch {arch}; choose from {sorted(SMEM_LIMIT)}")
        cap = _Capture(arch)
        with stand_in_gpu(cap):
            k_level.resolve_backend = lambda backend, device: "triton"   # the CPU-tensor guard, lifted
            try:
                for shape in levels:
                    for p in precisions:
                        cap.scenario = Scenario(f"{shape.name} {p}", "render", 128, 1, p, 2)
                        t0 = time.perf_counter()
                        _launch(shape, p)
                        log(f"sm_{arch} {shape.name} {p}: {time.perf_counter() - t0:.1f} s")
            finally:
                k_level.resolve_backend = saved
        for e in cap.kernels.values():
            rec = analyse(e["kernel"], arch, e["log"])
            rec.scenarios = e["scenarios"]
            rec.failures = failures_of(rec)
            records.append(rec)
        errors += [f"sm_{arch} {err['scenario']}: {err['error']}" for err in cap.errors]
    return records, errors


@contextlib.contextmanager
def _overridden_config(block_m: Optional[int], block_n: Optional[int], num_warps: Optional[int]) -> Iterator[None]:
    """kernels.level.level_config with BLOCK_M / BLOCK_N / num_warps replaced (other tiles)."""
    import kernels.level as k_level

    saved = k_level.level_config
    if block_m is not None or block_n is not None or num_warps is not None:
        def cfg(*a, **k):
            c = saved(*a, **k)
            return dataclasses.replace(c, BLOCK_M=block_m or c.BLOCK_M, BLOCK_N=block_n or c.BLOCK_N,
                                       num_warps=num_warps or c.num_warps)
        k_level.level_config = cfg
    try:
        yield
    finally:
        k_level.level_config = saved


def markdown(records: Sequence[Record]) -> str:
    rows = ["| level | arch | precision | C | L | out | BLOCK_M x N x C | warps | regs | spill B | smem B "
            "| mma | trig in loop | ok |",
            "|---|---|---|---:|---:|---|---|---:|---:|---:|---:|---|---:|---|"]
    for r in sorted(records, key=lambda r: (r.scenarios, -r.arch)):
        c = r.constexprs
        rows.append(f"| {', '.join(s.rsplit(' ', 1)[0] for s in r.scenarios)} | sm_{r.arch} | {r.precision} | "
                    f"{c.get('C')} | {c.get('L')} | {'uint8' if c.get('OUT_UINT8') else 'fp32'} | "
                    f"{c.get('BLOCK_M')} x {c.get('BLOCK_N')} x {c.get('BLOCK_C')} | {r.num_warps} | {r.regs} | "
                    f"{r.spill_bytes} | "
                    f"{r.smem_bytes} | {r.mma} | {r.transcendentals_in_loop} | "
                    f"{'yes' if not r.failures else 'NO: ' + '; '.join(r.failures)} |")
    return "\n".join(rows)


def write_results_md(path: Path, records: Sequence[Record], seconds: float, errors: int = 0) -> None:
    import triton

    from bench.results_md import replace_block
    head = (f"_python3 -m kernels.compile_level: triton {triton.__version__}, {len(records)} variants of "
            f"`_fmm_level_kernel` compiled without a GPU, {sum(bool(r.failures) for r in records) + errors} "
            f"failed, "
            f"{seconds:.0f} s on this machine_")
    section = ("## Fused level kernel (compiled for sm_90, sm_80; no GPU needed)\n\n"
               "conv0 (embedding + parent part by index) -> conv1 -> extra conv -> ToRGB + skip in one "
               "kernel, activations in registers (kernels/level.py).\n\n")
    replace_block(path, RESULTS_BEGIN, RESULTS_END, f"{head}\n\n{markdown(records)}", section)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="compile_level", description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", type=int, nargs="+", default=list(ARCHS))
    p.add_argument("--precision", nargs="+", default=list(PRECISIONS), choices=PRECISIONS)
    p.add_argument("--level", default=None, help="only levels whose name contains this")
    p.add_argument("--results-md", type=Path, default=None, help="rewrite the level-kernel block of this file")
    p.add_argument("--block-m", type=int, default=None, help="override BLOCK_M (to explore; not what runs)")
    p.add_argument("--block-n", type=int, default=None, help="override BLOCK_N (to explore)")
    p.add_argument("--num-warps", type=int, default=None, help="override num_warps (to explore)")
    args = p.parse_args(argv)
    levels = [s for s in LEVELS if args.level is None or args.level in s.name]
    if not levels:
        print(f"compile_level: error: no level matches {args.level!r}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as cache:
        os.environ["TRITON_CACHE_DIR"] = cache      # fresh: every variant compiles and logs ptxas -v
        os.environ["TRITON_DUMP_PTXAS_LOG"] = "1"
        try:
            with _overridden_config(args.block_m, args.block_n, args.num_warps):
                records, errors = check(args.arch, args.precision, levels,
                                        log=lambda s: print(s, file=sys.stderr))
        except ValueError as e:
            print(f"compile_level: error: {e}", file=sys.stderr)
            return 2
    seconds = time.perf_counter() - t0
    print(markdown(records))
    if args.results_md is not None:
        write_results_md(args.results_md, records, seconds, len(errors))
    bad = [f"{r.scenarios} sm_{r.arch}: {'; '.join(r.failures)}" for r in records if r.failures] + errors
    for msg in bad:
        print(f"FAIL {msg}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    os.environ["TRITON_INTERPRET"] = "0"   # the kernels must be decorated for compilation
    sys.exit(main())
