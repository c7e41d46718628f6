"""Compile probe of the fused level kernel without a GPU: its real variants compiled ahead of time
for sm_90 and sm_80, with registers, spills and shared memory.

    python3 -m kernels.compile_level [--arch 90 80] [--precision fp32 bf16] [--results-md bench/RESULTS.md]

The same way as kernels/compile_check.py (DESIGN §6): its stand-in driver answers for the arch,
every launch becomes a warm-up (compile only), and the real launcher `fmm_level_triton` runs on
CPU tensors with the shapes of the levels it is meant for (LEVELS): the top level of digan-128
(C = 256, E = 128, conv1 + one extra conv, uint8 out), its 512-wide levels (b64: conv1 after
the split conv0; b4, the first level: conv1 on the embedding only, no parent part or image), and
the two top levels of the same recipe at 256² (C = 256 with fp32 out, C = 128 with uint8 out).
Each is launched at two tiles (TILES: the whole 128² frame and a 37 x 53 crop at an odd place),
storing through out= into a frame-buffer view (the levels below the top return their image rows
and store their last activation, act_out); both must compile to one variant (TH, TW and the
output's strides and pointer are not specialised), else the record fails. Values never matter
(nothing is launched).
Exit 1 when a variant does not compile, spills, needs more shared memory than the arch has, is a
bf16 GEMM without wgmma on sm_90, or when a crop compiled its own variant.
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

PRECISIONS = ("fp32", "tf32", "bf16")   # not fp32-ieee: the renderer runs it per layer
RESULTS_BEGIN, RESULTS_END = "<!-- level-kernel:begin -->", "<!-- level-kernel:end -->"


@dataclass(frozen=True)
class LevelShape:
    name: str          # e.g. "digan-128 b128"
    C: int             # channels
    E: int             # embedding frequencies
    L: int             # convs after conv0
    uint8: bool        # the final level stores uint8


    parent: bool = True  # conv0 has a parent part and the skip a parent image (not the first level)
    act_out: bool = False  # a level below the top: it also stores its last activation (the next
                           # level's split conv0 reads it), and its image as rows, not into frames


# digan-128 (digan/program.py): b4 (conv1 on the embedding only, no parent: L = 0), b64 (split
# conv0 + conv1, 512 wide), b128 (the top: conv0, conv1, one extra conv, uint8); the same recipe
# at 256^2: b128 (256 wide, fp32 out) and b256 (128 wide, uint8).
LEVELS = (LevelShape("digan-128 b128", 256, 128, 2, True),
          LevelShape("digan-256 b128", 256, 128, 2, False, act_out=True),
          LevelShape("digan-256 b256", 128, 128, 2, True),
          LevelShape("digan-128 b64", 512, 128, 1, False, act_out=True),
          LevelShape("digan-128 b4", 512, 128, 0, False, parent=False))
# The tiles each level is launched with: the whole 128 x 128 frame, and a crop of another size at
# an odd place of the frame buffer (TH, TW, the output strides and pointer are do_not_specialize:
# both must give one variant, checked in `check`).
TILES = ((128, 128, 0, 0), (37, 53, 5, 7))      # (rows, columns, first row, first column)


def _launch(shape: LevelShape, precision: str, tile=TILES[0]) -> None:
    """fmm_level_triton on CPU tensors of a 2-frame tile, storing through out= into its place in
    a (2, 128, 128, 3) frame buffer as the renderer does (the other sizes and strides are the
    engine's: multiples of 16 but the 3-wide image)."""
    import torch

    from .level import fmm_level_triton

    th, tw, i0, j0 = tile
    C, E, L, F = shape.C, shape.E, shape.L, 2
    M = F * th * tw
    dt = torch.bfloat16 if precision == "bf16" else torch.float32
    z = torch.zeros
    parent = {} if not shape.parent else dict(
        pre_add=z(M // 4 + 1, C), pre_index=z(M, dtype=torch.int64), img=z(M // 4 + 1, 3),
        img_index=z(M, dtype=torch.int64))
    frames = z(F, 128, 128, 3, dtype=torch.uint8 if shape.uint8 else torch.float32)
    fmm_level_triton(z(C, 2 * E, dtype=dt), z(C), z(L, C, C, dtype=dt), z(L, C), z(3, C, dtype=dt), z(3),
                     emb_A=z(E, 2), emb_b=z(F, E), xs=z(tw), ys=z(th), clamp=256.0, rgb_clamp=256.0,
                     out_uint8=shape.uint8, precision=precision, **parent,
                     **(dict(act_out=True) if shape.act_out else dict(out=frames[:, i0:i0 + th, j0:j0 + tw])))


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
                        for tile in TILES:
                            cap.scenario = Scenario(f"{shape.name} {p} {tile[0]}x{tile[1]}", "render", 128, 1,
                                                    p, 2)
                            t0 = time.perf_counter()
                            _launch(shape, p, tile)
                            log(f"sm_{arch} {shape.name} {p} tile {tile[0]}x{tile[1]}: "
                                f"{time.perf_counter() - t0:.1f} s")
            finally:
                k_level.resolve_backend = saved
        for e in cap.kernels.values():
            rec = analyse(e["kernel"], arch, e["log"])
            rec.scenarios = e["scenarios"]
            rec.failures = failures_of(rec)
            tiles = {sc.rsplit(" ", 1)[1] for sc in rec.scenarios}
            if len(tiles) != len(TILES):
                # A crop that compiles its own variant: a specialised size or stride (or a level
                # config that depends on the rows); the engine's crops would each compile one.
                rec.failures.append(f"tiles {sorted(tiles)} only: each tile shape compiled its own variant")
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
        names = sorted({s.rsplit(" ", 2)[0] for s in r.scenarios})
        rows.append(f"| {', '.join(names)} | sm_{r.arch} | {r.precision} | "
                    f"{c.get('C')} | {c.get('L')} | {'uint8' if c.get('OUT_UINT8') else 'fp32'}"
                    f"{' + act' if c.get('HAS_ACT_OUT') else ''} | "
                    f"{c.get('BLOCK_M')} x {c.get('BLOCK_N')} x {c.get('BLOCK_C')} | {r.num_warps} | {r.regs} | "
                    f"{r.spill_bytes} | "
                    f"{r.smem_bytes} | {r.mma} | {r.transcendentals_in_loop} | "
                    f"{'yes' if not r.failures else 'NO: ' + '; '.join(r.failures)} |")
    return "\n".join(rows)


def write_results_md(path: Path, records: Sequence[Record], seconds: float, errors: int = 0) -> None:
    import triton

    from bench.results_md import replace_block
    head = (f"_python3 -m kernels.compile_level: triton {triton.__version__}, {len(records)} variants of "
            "the fused level kernels (`_fmm_level_kernel`, `_fmm_level_scratch_kernel`) compiled without a GPU, "
            f"{sum(bool(r.failures) for r in records) + errors} failed, "
            f"{seconds:.0f} s on this machine_")
    section = ("## Fused level kernel (compiled for sm_90, sm_80; no GPU needed)\n\n"
               "conv0 (embedding + parent part by index) -> conv1 -> extra conv -> ToRGB + skip in one "
               "kernel (kernels/level.py): the convs transposed, each activation chunk the dot's B operand "
               "(shared memory under wgmma). A level below the top (out `+ act`) also stores its last "
               "activation for the next level's split conv0.\n\n")
    note = (f"Each variant is met by all {len(TILES)} tiles of its level ("
            f"{', '.join(f'{t[0]} x {t[1]} at ({t[2]}, {t[3]})' for t in TILES)} of a 2 x 128 x 128 frame buffer, "
            "the top levels stored through out= views): no crop compiles its own variant.")
    replace_block(path, RESULTS_BEGIN, RESULTS_END, f"{head}\n\n{markdown(records)}\n\n{note}", section)


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
