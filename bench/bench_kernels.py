"""Kernel microbenchmarks: every op in kernels/ against its plain-PyTorch equivalent, at the shapes
of the real model, side by side in one process.

    python bench/bench_kernels.py --write              # CUDA: triton vs unfused torch, full sweep, saved
    python bench/bench_kernels.py --ops conv,split --precisions bf16 --rows 1x1024x1024
    python bench/bench_kernels.py --quick              # short sweep, print only (CPU default)
    python bench/bench_kernels.py --sweep --json k.json # the README plot's row sweep, saved as JSON

One section per op; shapes come from the generator preset (digan-128: C 512 / 256, E 128 so
2E = 256, rank 10):
  modulate  fmm_modulate: per-video weight W' (B, Cout, Cin) for every layer shape    GB/s
  conv      fmm_linear, plain conv: lrelu(x @ W^T + bias) * sqrt2                     TFLOP/s
  emb       fmm_linear, embedding-only layer (b4): sin/cos made in the prologue       TFLOP/s
  split     fmm_linear, split conv0 child call: e @ W_e^T + y_parent[index], act      TFLOP/s
  torgb     fmm_linear, ToRGB: x @ W_rgb^T + bias + img_parent[index] -> uint8        GB/s
  to_uint8  to_uint8 of (F, H, W, 3) float frames                                     GB/s
  yuv420    rgb_to_yuv420 of (F, H, W, 3) uint8 frames                                GB/s

Backends (--backends): 'triton' (CUDA; CPU only under TRITON_INTERPRET=1, where the times mean
nothing), 'torch' (our op's torch backend, the CPU product path) and 'unfused' (what one writes in
plain PyTorch: the embedding materialised with torch.sin/cos, torch.mm, the parent rows gathered
by index_select, then one op per epilogue step, in fp32 like ours). Each case is compared with its
baseline, timed in the same run: 'unfused' for the fmm_linear sections; for modulate, to_uint8 and
yuv420 the torch backend IS the plain formula, so it is the baseline there. Without CUDA only the
torch backend and the unfused equivalent run, at reduced sizes (--quick is the default on CPU;
--full for the model's sizes).

Rows are given as FxHxW (frames x tile rows x tile columns): M = F*H*W rows, 16384 per 128^2
frame, 1M per 1024^2 frame. Split conv0 and ToRGB read a parent tile (F, H/2, W/2) by index.

Units: TFLOP/s counts GEMM FLOPs only (2 M K N; not the sin/cos or the epilogue; modulate's are
its L @ R, 2 B Cout Cin r); GB/s counts every tensor the op must read or write, once (indices
included).
frac_of_peak = rate / the peak measured once per run (the best large-matmul rate over the
precisions, so it stays <= 1, or a large device copy for GB/s);
roofline = max(FLOPs / matmul peak, bytes / copy rate) / time.
Timing: triton.testing.do_bench (median, p20, p80; L2 flushed) on CUDA; on CPU one warm-up call,
then the median of repeated calls (on a shared CPU, --threads 1 gives steadier numbers). With
--write it appends JSON rows (device, date, git revision) to bench/results/kernels.jsonl and
rewrites the kernels-{gpu,cpu} block of bench/RESULTS.md (kernels-{gpu,cpu}-sweep with --sweep);
without, it only prints; --csv FILE / --json FILE save the rows anywhere (bench/export.py).
--sweep: rows of 16^2 .. 128^2 tiles on CPU (16K .. 1M rows on GPU), B = 1, 8 for modulate: the
rates against the shape that bench/plot.py draws (~2 min on 2 idle CPU cores).
On a CPU without native bf16 matmul (engine/precision.py) bf16 is left out unless asked for: the
engine renders fp32 there, and bf16 matmuls ran ~70x slower than fp32.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F_

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.envinfo import device_name, git_rev  # noqa: E402
from bench.export import write_rows  # noqa: E402
from bench.results_md import replace_block  # noqa: E402
from digan.config import generator_preset  # noqa: E402
from digan.program import generator_program  # noqa: E402
from engine.precision import cpu_bf16_support  # noqa: E402
from kernels import SQRT2, fmm_linear, fmm_modulate, nearest_index, rgb_to_yuv420, to_uint8  # noqa: E402
from kernels._common import PRECISIONS, interpreter_enabled, triton_available  # noqa: E402

OPS = ("modulate", "conv", "emb", "split", "torgb", "to_uint8", "yuv420")
OP_TITLES = {
    "modulate": "fmm_modulate: per-video weight preparation W' (B, Cout, Cin)",
    "conv": "fmm_linear plain conv: lrelu(x @ W^T + bias) * sqrt2",
    "emb": "fmm_linear embedding-only layer: [sin|cos](phase) @ W_e^T + bias, act (prologue)",
    "split": "fmm_linear split conv0: e @ W_e^T + y_parent[index] + bias, act",
    "torgb": "fmm_linear ToRGB: x @ W_rgb^T + bias + img_parent[index] -> uint8",
    "to_uint8": "to_uint8: float frames -> uint8",
    "yuv420": "rgb_to_yuv420: uint8 RGB frames -> I420",
}
BACKENDS = ("triton", "torch", "unfused")

GPU_ROWS = ("1x128x128", "16x128x128", "1x1024x1024")   # 16K, 256K, 1M rows
GPU_QUICK_ROWS = ("16x128x128",)
CPU_ROWS = ("1x128x128",)                               # one 128^2 frame: 16K rows
CPU_QUICK_ROWS = ("1x64x64",)                           # one 64^2 frame: 4K rows
GPU_VIDEOS, CPU_VIDEOS, QUICK_VIDEOS = (1, 8), (1, 8), (1,)
GPU_BACKENDS, CPU_BACKENDS = ("triton", "unfused"), ("torch", "unfused")
GPU_PRECISIONS, CPU_PRECISIONS = PRECISIONS, ("fp32", "bf16")   # CPU has no TF32
# --sweep: the plot's shapes, rows from one tile of the b4..b32 level to a whole frame.
GPU_SWEEP_ROWS = ("1x128x128", "4x128x128", "16x128x128", "1x1024x1024")   # 16K .. 1M rows
CPU_SWEEP_ROWS = ("1x16x16", "1x32x32", "1x64x64", "1x128x128")           # 256 .. 16K rows
SWEEP_VIDEOS = (1, 8)


# ---- environment --------------------------------------------------------------------------------

def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def matmul_mode(device: torch.device, precision: str):
    """CUDA fp32 matmuls use TF32 tensor cores exactly when the row's precision is 'tf32' (for the
    torch/unfused paths and the peak; the Triton kernel picks its own dot precision)."""
    if device.type != "cuda":
        yield
        return
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


def time_ms(fn: Callable[[], object], device: torch.device, quick: bool,
            clock: Callable[[], float] = time.perf_counter) -> Tuple[float, float, float]:
    """(median, p20, p80) milliseconds of one call of `fn`."""
    if device.type == "cuda" and triton_available():
        from triton.testing import do_bench
        q = do_bench(fn, warmup=25, rep=50 if quick else 100, quantiles=[0.5, 0.2, 0.8])
        return float(q[0]), float(q[1]), float(q[2])
    return host_time_ms(fn, device, target_s=0.3 if quick else 1.0, clock=clock)


def host_time_ms(fn, device: torch.device, target_s: float, min_reps: int = 3,
                 max_reps: int = 50, clock: Callable[[], float] = time.perf_counter) -> Tuple[float, float, float]:
    """Simple timer: one warm-up call, then enough calls for about `target_s` (min_reps..max_reps),
    each followed by a device sync; (median, p20, p80) in ms."""
    fn()
    sync(device)
    times = []
    while True:
        t = clock()
        fn()
        sync(device)
        times.append(clock() - t)
        if len(times) >= max_reps or (len(times) >= min_reps and sum(times) >= target_s):
            break
    times.sort()
    q = lambda p: times[min(len(times) - 1, int(p * len(times)))]  # noqa: E731
    return statistics.median(times) * 1e3, q(0.2) * 1e3, q(0.8) * 1e3


# ---- peaks ----------------------------------------------------------------------------------------

@dataclass
class Peaks:
    matmul: Dict[str, float]     # FLOP/s of a large matmul per precision
    copy: float                  # bytes/s of a large device copy (read + write)
    notes: List[str] = field(default_factory=list)


def measure_peaks(device: torch.device, quick: bool, clock: Callable[[], float] = time.perf_counter) -> Peaks:
    """One large matmul per precision and one large copy, timed like the rows; the peak is the rate
    at the 20th-percentile time (a peak is what the device can do, so a busy moment should not
    lower it)."""
    cuda = device.type == "cuda"
    n = 8192 if cuda else (1024 if quick else 2048)
    matmul, notes = {}, []
    for p in PRECISIONS:
        if p == "tf32" and not cuda:
            matmul[p] = matmul["fp32"]
            notes.append("CPU has no TF32: tf32 rows use the fp32 peak")
            continue
        if p == "bf16" and not cuda and not cpu_bf16_support()[0]:
            # Seconds of a ~70x slower matmul that could never be the best rate (the peak is the max).
            notes.append("no native bf16 on this CPU: bf16 matmul not measured")
            continue
        dtype = torch.bfloat16 if p == "bf16" else torch.float32
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        c = torch.empty(n, n, device=device, dtype=dtype)
        with matmul_mode(device, p):
            ms = time_ms(lambda a=a, b=b, c=c: torch.mm(a, b, out=c), device, quick, clock)[1]   # p20: the best
        matmul[p] = 2 * n ** 3 / (ms * 1e-3)
        del a, b, c
    nbytes = (1 << 30) if cuda else ((64 << 20) if quick else (256 << 20))
    src = torch.empty(nbytes, dtype=torch.uint8, device=device).fill_(1)
    dst = torch.empty_like(src)
    ms = time_ms(lambda src=src, dst=dst: dst.copy_(src), device, quick, clock)[1]
    del src, dst
    notes.append(f"matmul {n}^3, copy {nbytes >> 20} MiB")
    return Peaks(matmul, 2 * nbytes / (ms * 1e-3), notes)


# ---- model shapes -------------------------------------------------------------------------------

@dataclass
class ModelShapes:
    E: int                       # embedding frequencies (2E embedding channels)
    rank: int                    # FMM rank
    modulate: List[Tuple[int, int]]   # (Cout, Cin) of every modulated layer, unique
    conv: List[Tuple[int, int]]       # (K, N) of plain convs
    emb: List[int]                    # N of embedding-only layers
    split: List[int]                  # N of split conv0 layers (K = 2E for the child call)
    torgb: List[int]                  # C of ToRGB layers


def model_shapes(preset: str) -> ModelShapes:
    """Layer shapes of the preset's synthesis network, as the engine runs them (digan/program.py)."""
    cfg = generator_preset(preset)
    mod, conv, emb, split, rgb = [], [], [], [], []
    for layer in generator_program(cfg).layers:
        if layer.kind == "torgb":
            rgb.append(layer.c_in)
            continue
        mod.append((layer.c_out, layer.c_in))
        if layer.kind == "emb":                   # b4: embedding only
            emb.append(layer.c_out)
        elif layer.kind == "split":               # upper blocks: split conv0
            split.append(layer.c_out)
        else:
            conv.append((layer.c_in, layer.c_out))
    uniq = lambda xs: list(dict.fromkeys(xs))  # noqa: E731  (first-seen order)
    return ModelShapes(cfg.emb_size, cfg.rank, uniq(mod), uniq(conv), uniq(emb), uniq(split), uniq(rgb))


# ---- cases --------------------------------------------------------------------------------------

@dataclass
class Case:
    op: str
    shape: str                   # readable shape, e.g. "M=16384 (1x128x128) K=512 N=512"
    rows: int                    # M (0 where not a row-wise op)
    precision: str               # fp32 / tf32 / bf16 (operands), or u8
    flops: float                 # GEMM FLOPs of one call
    nbytes: float                # bytes one call must move
    unit: str                    # headline rate: "TFLOP/s" or "GB/s"
    impls: Dict[str, Callable[[], object]]
    baseline: str                # impl the others are compared with
    note: str = ""


def parse_rows(spec: str) -> Tuple[int, int, int]:
    try:
        F, H, W = (int(v) for v in spec.lower().split("x"))
    except ValueError:
        raise ValueError(f"rows must be FxHxW (frames x tile rows x columns), got {spec!r}") from None
    if min(F, H, W) < 1 or H % 2 or W % 2:
        raise ValueError(f"rows {spec!r}: F, H, W must be positive, H and W even")
    return F, H, W


def _cdt(precision: str) -> torch.dtype:
    return torch.bfloat16 if precision == "bf16" else torch.float32


def _esize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _op_precisions(op: str, precisions: Sequence[str]) -> List[str]:
    if op == "yuv420":
        return ["u8"]
    if op in ("modulate", "to_uint8"):   # fp32 arithmetic; the precision is the output/input dtype
        return [p for p in precisions if p != "tf32"]
    return list(precisions)


def _triton_ok(device: torch.device) -> bool:
    return triton_available() and (device.type == "cuda" or interpreter_enabled())


def _select(impls: Dict[str, Callable], backends: Sequence[str], baseline: str,
            device: torch.device) -> Dict[str, Callable]:
    """The requested backends that can run here, plus the baseline, in BACKENDS order."""
    want = set(backends) | {baseline}
    if not _triton_ok(device):
        want.discard("triton")
    return {k: impls[k] for k in BACKENDS if k in want and k in impls}


def _embedding_inputs(F: int, H: int, W: int, E: int, randn, device) -> dict:
    """Embedding parameters of one tile; |A| of the order of the preset's fourier_scale (sqrt 10)."""
    return dict(emb_A=randn(E, 2, scale=math.sqrt(10.0)),                # (E, 2) frequencies
                emb_b=randn(F, E),                                       # (F, E) per-frame phase
                xs=torch.linspace(-1, 1, W, device=device),              # (w,)
                ys=torch.linspace(1, -1, H, device=device))              # (h,)


def _unfused_embedding(emb_A, emb_b, xs, ys, dtype) -> torch.Tensor:
    """Materialised embedding (M, 2E) = [sin | cos](A0*x + A1*y + b), rows in (f, i, j) order."""
    phase = (emb_A[:, 0] * xs[None, None, :, None] + emb_A[:, 1] * ys[None, :, None, None]
             + emb_b[:, None, None, :])                               # (F, h, w, E)
    phase = phase.reshape(-1, emb_A.shape[0])
    return torch.cat([torch.sin(phase), torch.cos(phase)], dim=1).to(dtype)


def _unfused_act(y: torch.Tensor, bias, out_dtype) -> torch.Tensor:
    """The layer epilogue one op at a time, fp32 like ours: lrelu(y + bias) * sqrt2."""
    y = y.float() + bias
    y = F_.leaky_relu(y, 0.2)
    y = y * SQRT2
    return y.to(out_dtype)


def _ops_impls(fn: Callable[[str], object]) -> Dict[str, Callable[[], object]]:
    """{'triton': fn('triton'), 'torch': fn('torch')} as zero-argument callables."""
    return {be: (lambda be=be: fn(be)) for be in ("triton", "torch")}


def _modulate_case(s: ModelShapes, Cout, Cin, B, p, randn) -> Tuple[str, dict, float, float]:
    out_dtype = _cdt(p)
    weight = randn(Cout, Cin)                                          # (Cout, Cin)
    styles = randn(B, (Cin + Cout) * s.rank, scale=0.5)                # (B, (Cin + Cout) r)
    impls = _ops_impls(lambda be: fmm_modulate(weight, styles, s.rank, out_dtype=out_dtype, backend=be))
    nbytes = 4 * (Cout * Cin + styles.numel()) + B * Cout * Cin * _esize(out_dtype)
    return f"B={B} Cout={Cout} Cin={Cin} r={s.rank}", impls, 2.0 * B * Cout * Cin * s.rank, nbytes


def _conv_case(K, N, M, p, randn) -> Tuple[dict, float, float]:
    cdt = _cdt(p)
    x = randn(M, K, dtype=cdt)                                         # (M, K)
    Wt = randn(N, K, dtype=cdt, scale=K ** -0.5)                       # (N, K)
    bias = randn(N)                                                    # (N,)
    impls = _ops_impls(lambda be: fmm_linear(Wt, x, bias=bias, act=True, out_dtype=cdt, precision=p,
                                             backend=be))
    impls["unfused"] = lambda: _unfused_act(torch.mm(x, Wt.t()), bias, cdt)
    es = _esize(cdt)
    return impls, 2.0 * M * K * N, es * (M * K + N * K + M * N) + 4 * N


def _emb_case(split: bool, E, N, F, H, W, p, randn, device) -> Tuple[dict, float, float]:
    cdt = _cdt(p)
    M, Mp, E2 = F * H * W, F * (H // 2) * (W // 2), 2 * E
    emb = _embedding_inputs(F, H, W, E, randn, device)
    We = randn(N, E2, dtype=cdt, scale=E2 ** -0.5)                     # (N, 2E)
    bias = randn(N)                                                    # (N,)
    nbytes = _esize(cdt) * (N * E2 + M * N) + 4 * (N + E * (F + 2) + H + W)
    extra = {}
    if split:
        extra = dict(pre_add=randn(Mp, N),                             # (Mp, N) parent features, fp32
                     pre_index=nearest_index(F, (0, H, 0, W), (0, H // 2, 0, W // 2), device=device))
        nbytes += 4 * Mp * N + 8 * M

    def unfused():
        y = torch.mm(_unfused_embedding(**emb, dtype=cdt), We.t()).float()
        if split:
            y = y + extra["pre_add"].index_select(0, extra["pre_index"])
        return _unfused_act(y, bias, cdt)

    impls = _ops_impls(lambda be: fmm_linear(We, None, **emb, **extra, bias=bias, act=True, out_dtype=cdt,
                                             precision=p, backend=be))
    impls["unfused"] = unfused
    return impls, 2.0 * M * E2 * N, nbytes


def _torgb_case(C, F, H, W, p, randn, device) -> Tuple[dict, float, float]:
    cdt = _cdt(p)
    M, Mp = F * H * W, F * (H // 2) * (W // 2)
    x = randn(M, C, dtype=cdt)                                         # (M, C)
    Wrgb = randn(3, C, dtype=cdt, scale=C ** -0.5)                     # (3, C)
    bias = randn(3)                                                    # (3,)
    img = randn(Mp, 3, scale=0.5)                                      # (Mp, 3) parent image, fp32
    index = nearest_index(F, (0, H, 0, W), (0, H // 2, 0, W // 2), device=device)   # (M,)

    def unfused():
        y = torch.mm(x, Wrgb.t()).float() + bias
        y = y + img.index_select(0, index)
        return ((y + 1.0) * 127.5).clamp(0.0, 255.0).round().to(torch.uint8)

    impls = _ops_impls(lambda be: fmm_linear(Wrgb, x, bias=bias, post_add=img, post_index=index,
                                             out_uint8=True, precision=p, backend=be))
    impls["unfused"] = unfused
    return impls, 2.0 * M * C * 3, _esize(cdt) * (M * C + 3 * C) + 4 * (3 + 3 * Mp) + 8 * M + 3 * M


def make_cases(op: str, device: torch.device, *, rows: Sequence[str] = CPU_QUICK_ROWS,
               videos: Sequence[int] = QUICK_VIDEOS, precisions: Sequence[str] = CPU_PRECISIONS,
               backends: Sequence[str] = CPU_BACKENDS, preset: str = "digan-128",
               channels: Optional[Sequence[int]] = None) -> Iterator[Case]:
    """Yield the op's cases one at a time; a case's inputs are allocated when it is reached, so
    consume them one by one to keep one case's tensors alive. `channels` keeps only the shapes
    whose first channel count (Cout, K, N or C) is listed."""
    if op not in OPS:
        raise ValueError(f"op must be one of {OPS}, got {op!r}")
    s = model_shapes(preset)
    E2 = 2 * s.E
    keep = (lambda c: True) if not channels else (lambda c: c in channels)
    gen = torch.Generator(device=device)
    gen.manual_seed(0)
    precs = _op_precisions(op, precisions)

    def randn(*shape, dtype=torch.float32, scale=1.0):
        return (torch.randn(*shape, device=device, generator=gen) * scale).to(dtype)

    def case(shape, rows_, p, impls, flops, nbytes, unit, baseline, note=""):
        return Case(op, shape, rows_, p, flops, nbytes, unit, _select(impls, backends, baseline, device),
                    baseline, note)

    if op == "modulate":
        for Cout, Cin in s.modulate:
            for B in (videos if keep(Cout) else ()):
                for p in precs:
                    shape, impls, flops, nbytes = _modulate_case(s, Cout, Cin, B, p, randn)
                    yield case(shape, 0, p, impls, flops, nbytes, "GB/s", "torch", "torch backend = the plain formula")
        return

    for spec in rows:
        F, H, W = parse_rows(spec)
        M, Mp = F * H * W, F * (H // 2) * (W // 2)
        for p in precs:
            if op == "conv":
                for K, N in s.conv:
                    if keep(K):
                        yield case(f"M={M} ({spec}) K={K} N={N}", M, p, *_conv_case(K, N, M, p, randn),
                                   "TFLOP/s", "unfused")
            elif op in ("emb", "split"):
                for N in (s.emb if op == "emb" else s.split):
                    if keep(N):
                        shape = f"M={M} ({spec}) 2E={E2} N={N}" + (f" pre={Mp}" if op == "split" else "")
                        yield case(shape, M, p, *_emb_case(op == "split", s.E, N, F, H, W, p, randn, device),
                                   "TFLOP/s", "unfused", "sin/cos FLOPs not counted")
            elif op == "torgb":
                for C in s.torgb:
                    if keep(C):
                        yield case(f"M={M} ({spec}) C={C} N=3 skip={Mp}", M, p,
                                   *_torgb_case(C, F, H, W, p, randn, device), "GB/s", "unfused")
            elif op == "to_uint8":
                cdt = _cdt(p)
                img = randn(F, H, W, 3, dtype=cdt, scale=0.6)          # (F, H, W, 3)
                impls = _ops_impls(lambda be, img=img: to_uint8(img, backend=be))
                yield case(f"{F}x{H}x{W}x3", M, p, impls, 0.0, img.numel() * (_esize(cdt) + 1), "GB/s",
                           "torch", "torch backend = the plain formula")
            elif op == "yuv420":
                frames = torch.randint(0, 256, (F, H, W, 3), dtype=torch.uint8, device=device,
                                       generator=gen)                  # (F, H, W, 3)
                impls = _ops_impls(lambda be, frames=frames: rgb_to_yuv420(frames, backend=be))
                yield case(f"{F}x{H}x{W}x3", M, p, impls, 0.0, M * 3 + M * 3 // 2, "GB/s",
                           "torch", "torch backend = the plain formula")


# ---- run ----------------------------------------------------------------------------------------

def _max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


def bench_case(case: Case, device: torch.device, peaks: Peaks, quick: bool, check: bool,
               base_row: dict, clock: Callable[[], float] = time.perf_counter) -> List[dict]:
    """Time every impl of `case`; one row per impl."""
    times, outs = {}, {}
    with matmul_mode(device, case.precision):
        for name, fn in case.impls.items():
            try:
                times[name] = time_ms(fn, device, quick, clock)
                if check:
                    outs[name] = fn()
            except torch.cuda.OutOfMemoryError:
                times[name] = None
                torch.cuda.empty_cache()
    # The best matmul rate measured, over the dtypes: "of peak" then never exceeds 1 (a CPU
    # without native bf16 runs bf16 matmuls ~70x slower than fp32; against that rate it read 105).
    matmul_peak = max(peaks.matmul.values())
    base_ms = (times.get(case.baseline) or (None,))[0]
    rows = []
    for name, t in times.items():
        row = dict(base_row, op=case.op, shape=case.shape, rows=case.rows, precision=case.precision,
                   backend=name, baseline=case.baseline, unit=case.unit, flops=case.flops,
                   bytes=case.nbytes, note=case.note)
        if name == "triton" and device.type != "cuda":
            row["note"] = (case.note + "; " if case.note else "") + "Triton interpreter: time means nothing"
        if t is None:
            row["error"] = "out of memory"
            rows.append(row)
            continue
        ms, p20, p80 = t
        sec = ms * 1e-3
        tflops = case.flops / sec / 1e12
        gbs = case.nbytes / sec / 1e9
        rate, peak = ((tflops, matmul_peak / 1e12) if case.unit == "TFLOP/s" else (gbs, peaks.copy / 1e9))
        roof_s = max(case.flops / matmul_peak, case.nbytes / peaks.copy)
        row.update(ms=ms, ms_p20=p20, ms_p80=p80, tflops=tflops, gbs=gbs, rate=rate, peak=peak,
                   frac_of_peak=rate / peak, frac_of_roofline=roof_s / sec,
                   speedup_vs_baseline=(base_ms / ms) if base_ms else None)
        if check and name in outs and case.baseline in outs:
            row["max_abs_diff_vs_baseline"] = _max_abs_diff(outs[name], outs[case.baseline])
        rows.append(row)
    return rows


HEADER = (f"{'op':<9} {'shape':<38} {'prec':<5} {'backend':<8} {'ms':>9} {'p20-p80':>17} "
          f"{'rate':>9} {'unit':<7} {'of peak':>7} {'roofline':>8} {'x base':>6}")


def format_row(r: dict) -> str:
    head = f"{r['op']:<9} {r['shape']:<38} {r['precision']:<5} {r['backend']:<8}"
    if "error" in r:
        return f"{head} {r['error']}"
    sp = r.get("speedup_vs_baseline")
    line = (f"{head} {r['ms']:9.3f} {r['ms_p20']:8.3f}-{r['ms_p80']:<8.3f} {r['rate']:9.3g} {r['unit']:<7} "
            f"{r['frac_of_peak']:7.3f} {r['frac_of_roofline']:8.3f} {'' if sp is None else f'{sp:6.2f}'}")
    if "max_abs_diff_vs_baseline" in r:
        line += f"  max|diff| vs {r['baseline']} {r['max_abs_diff_vs_baseline']:.3g}"
    return line


def run(args) -> Tuple[List[dict], dict]:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = device.type == "cuda"
    quick = args.quick or (not cuda and not args.full)
    ops = [o.strip() for o in args.ops.split(",")] if args.ops else list(OPS)
    for o in ops:
        if o not in OPS:
            raise SystemExit(f"unknown op {o!r}; ops: {', '.join(OPS)}")
    sweep = getattr(args, "sweep", False)    # gpu_check builds its own Namespace without it
    if sweep:
        default_rows = GPU_SWEEP_ROWS if cuda else CPU_SWEEP_ROWS
    else:
        default_rows = (GPU_QUICK_ROWS if quick else GPU_ROWS) if cuda else (CPU_QUICK_ROWS if quick else CPU_ROWS)
    rows_specs = args.rows.split(",") if args.rows else default_rows
    for spec in rows_specs:
        try:
            parse_rows(spec)
        except ValueError as exc:
            raise SystemExit(str(exc)) from None
    videos = ([int(v) for v in args.videos.split(",")] if args.videos else SWEEP_VIDEOS if sweep else
              QUICK_VIDEOS if quick else GPU_VIDEOS if cuda else CPU_VIDEOS)
    precisions = args.precisions.split(",") if args.precisions else (GPU_PRECISIONS if cuda else CPU_PRECISIONS)
    if not args.precisions and not cuda and not cpu_bf16_support()[0]:
        precisions = [p for p in precisions if p != "bf16"]
        print(f"bf16 left out: {cpu_bf16_support()[1]} (--precisions fp32,bf16 runs it anyway)", flush=True)
    backends = args.backends.split(",") if args.backends else (GPU_BACKENDS if cuda else CPU_BACKENDS)
    for p in precisions:
        if p not in PRECISIONS:
            raise SystemExit(f"unknown precision {p!r}; precisions: {', '.join(PRECISIONS)}")
    for b in backends:
        if b not in BACKENDS:
            raise SystemExit(f"unknown backend {b!r}; backends: {', '.join(BACKENDS)}")
    channels = [int(c) for c in args.channels.split(",")] if args.channels else None

    if args.threads:
        torch.set_num_threads(args.threads)
    name = device_name(device)
    rev, dirty = git_rev()
    date = dt.datetime.now().isoformat(timespec="seconds")
    triton_version = None
    if triton_available():
        import triton
        triton_version = triton.__version__
    print(f"device: {name}; torch {torch.__version__}, triton {triton_version or 'not installed'}"
          + ("" if cuda else f", {torch.get_num_threads()} threads"), flush=True)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    if not cuda and load is not None and load > 0.5 * (os.cpu_count() or 1):
        print(f"warning: load average {load:.1f} on {os.cpu_count()} cores: other work shares the CPU, "
              "times are noisy (--threads 1 helps)", flush=True)
    if not cuda:
        print("no CUDA: torch backend and the unfused torch equivalent only"
              + (", reduced sizes (--quick; --full for the model's sizes)" if quick else ""), flush=True)
        if "triton" in backends:
            print("triton rows: " + ("Triton interpreter (TRITON_INTERPRET=1), times mean nothing"
                                     if _triton_ok(device) else "skipped (needs CUDA)"), flush=True)
    elif "triton" in backends and not triton_available():
        print("triton rows: skipped (triton does not import)", flush=True)

    clock_name = getattr(args, "clock", "wall")    # gpu_check's Namespace has none
    if clock_name == "cpu" and cuda:
        raise SystemExit("--clock cpu measures host CPU time: it is for the CPU path only")
    clock = time.process_time if clock_name == "cpu" else time.perf_counter
    peaks = measure_peaks(device, quick, clock)
    peak_txt = (", ".join(f"{p} matmul {v / 1e12:.3g} TFLOP/s" for p, v in peaks.matmul.items())
                + f", copy {peaks.copy / 1e9:.3g} GB/s")
    print(f"measured peaks: {peak_txt} ({'; '.join(peaks.notes)})", flush=True)
    meta = dict(device=name, cuda=cuda, date=date, rev=rev, dirty=dirty, quick=quick, peaks=peak_txt,
                sweep=sweep, command="python bench/bench_kernels.py" + "".join(f" {a}" for a in sys.argv[1:]))
    base_row = dict(device=name, device_kind="gpu" if cuda else "cpu", date=date, rev=rev, dirty=dirty,
                    torch=torch.__version__,
                    triton=triton_version, preset=args.preset, quick=quick, load_avg=load,
                    peak_tflops={p: v / 1e12 for p, v in peaks.matmul.items()}, peak_gbs=peaks.copy / 1e9)
    run_row = dict(base_row, clock=clock_name, threads=None if cuda else torch.get_num_threads())
    rows = []
    for op in ops:
        print(f"\n== {op}: {OP_TITLES[op]}", flush=True)
        print(HEADER, flush=True)
        n_cases = 0
        for case in make_cases(op, device, rows=rows_specs, videos=videos, precisions=precisions,
                               backends=backends, preset=args.preset, channels=channels):
            n_cases += 1
            for r in bench_case(case, device, peaks, quick, args.check, run_row, clock):
                rows.append(r)
                print(format_row(r), flush=True)
            del case
            if cuda:
                torch.cuda.empty_cache()
        if not n_cases:
            print(f"(no {op} layer of {args.preset} matches --channels {args.channels})", flush=True)
    print("\nrate: TFLOP/s (GEMM FLOPs) or GB/s (bytes the op must move); of peak: rate / measured peak; "
          "roofline: max(FLOPs/matmul peak, bytes/copy rate) / time; x base: speedup over the case's "
          "baseline (unfused torch for fmm_linear; torch = the plain formula elsewhere)"
          + ("; CPU: inputs that fit in cache can beat the copy peak" if not cuda else ""), flush=True)
    return rows, meta


# ---- results ------------------------------------------------------------------------------------

def markdown_table(rows: List[dict]) -> str:
    lines = ["| op | shape | precision | backend | ms (p20–p80) | rate | of peak | of roofline | × baseline |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['op']} | {r['shape']} | {r['precision']} | {r['backend']} | {r['error']} | | | | |")
            continue
        sp = r.get("speedup_vs_baseline")
        base = "" if sp is None else ("(baseline)" if r["backend"] == r["baseline"] else f"{sp:.2f}")
        lines.append(f"| {r['op']} | {r['shape']} | {r['precision']} | {r['backend']} | "
                     f"{r['ms']:.3f} ({r['ms_p20']:.3f}–{r['ms_p80']:.3f}) | {r['rate']:.3g} {r['unit']} | "
                     f"{r['frac_of_peak']:.3f} | {r['frac_of_roofline']:.3f} | {base} |")
    return "\n".join(lines)


def write_results(rows: List[dict], meta: dict, jsonl: Path = REPO / "bench" / "results" / "kernels.jsonl",
                  md: Path = REPO / "bench" / "RESULTS.md") -> None:
    """Append the rows to `jsonl`; rewrite the kernels-{gpu,cpu} block of `md` (added at the end,
    under a heading, when missing). Other blocks and text are left as they are."""
    jsonl.parent.mkdir(parents=True, exist_ok=True)
    with open(jsonl, "a") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    kind = "gpu" if meta["cuda"] else "cpu"
    block = f"kernels-{kind}" + ("-sweep" if meta.get("sweep") else "")
    begin, end = f"<!-- {block}:begin -->", f"<!-- {block}:end -->"
    rev = meta["rev"] + ("+dirty" if meta["dirty"] else "")
    body = (f"_{meta['date']} rev {rev}, {meta['device']}, `{meta['command']}`"
            + (" (quick: reduced sizes)" if meta["quick"] else "") + f"_\n\nMeasured peaks: {meta['peaks']}.\n\n"
            + markdown_table(rows))
    title = ("GPU" if kind == "gpu" else "CPU") + (", sweep for the README's plot" if meta.get("sweep") else "")
    replace_block(md, begin, end, body,
                  f"## Kernel microbenchmarks ({title}, `python bench/bench_kernels.py`)\n\n"
                  "Each op of `kernels/` against its plain-PyTorch equivalent at the model's shapes; rate in "
                  "TFLOP/s (GEMM FLOPs) or GB/s (bytes the op must move), as a fraction of the peaks measured "
                  "in the same run.\n\n")


def main(argv: Optional[Sequence[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ops", default=None, help=f"comma list of {', '.join(OPS)} (default: all)")
    p.add_argument("--rows", default=None, help="comma list of FxHxW tiles (frames x rows x columns)")
    p.add_argument("--videos", default=None, help="comma list of video counts B for modulate")
    p.add_argument("--precisions", default=None, help=f"comma list of {', '.join(PRECISIONS)}")
    p.add_argument("--backends", default=None, help=f"comma list of {', '.join(BACKENDS)} (baselines always run)")
    p.add_argument("--channels", default=None, help="keep only shapes whose first channel count is listed")
    p.add_argument("--preset", default="digan-128", help="generator preset the shapes come from")
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=None, help="CPU: torch threads (default: torch's)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="reduced sizes, shorter timing (default on CPU)")
    size.add_argument("--full", action="store_true", help="the model's sizes even on CPU")
    p.add_argument("--check", action="store_true", help="also report max |difference| from the baseline")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="CPU: 'cpu' times by this process's CPU time (with --threads 1 on a shared machine: "
                        "the time the work took)")
    p.add_argument("--sweep", action="store_true",
                   help=f"the plot's rows (CPU {','.join(CPU_SWEEP_ROWS)}; GPU {','.join(GPU_SWEEP_ROWS)}), B 1,8")
    p.add_argument("--csv", type=Path, default=None, help="also save the rows (device, date, revision) as CSV")
    p.add_argument("--json", type=Path, default=None, help="also save the rows (device, date, revision) as JSON")
    p.add_argument("--write", action="store_true",
                   help="append to bench/results/kernels.jsonl and rewrite the block in bench/RESULTS.md "
                        "(default: print only; the source tree is left alone)")
    p.add_argument("--no-write", action="store_true", help=argparse.SUPPRESS)  # the old default
    args = p.parse_args(argv)
    rows, meta = run(args)
    for path in write_rows(rows, args.csv, args.json, meta):
        print(f"wrote {path}")
    if args.write and rows:
        write_results(rows, meta)


if __name__ == "__main__":
    main()
