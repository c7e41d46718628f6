"""Which precision a render really runs: bf16 on CPUs.

bf16 on a CPU without native bf16 matmul (AVX2: torch's bf16 matmul ran 1.3 GFLOP/s against 94
fp32) would be slower than fp32, so the Renderer warns once and renders fp32 there
(`Renderer.precision` says what it really uses); `cpu_bf16_support` decides, lazily.
"""
from __future__ import annotations

import functools
import os
import time
import warnings
from typing import Optional, Tuple

import torch

_BF16_FLAGS = ("avx512_bf16", "amx_bf16")   # x86: native bf16 dot products / tiles
_warned: set = set()


def _cpu_flags() -> Optional[set]:
    """The CPU's feature flags from /proc/cpuinfo (x86 'flags', Arm 'Features'), None if unknown."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key = line.split(":", 1)[0].strip().lower()
                if key in ("flags", "features"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def _bf16_matmul_ratio(n: int = 256, reps: int = 3) -> float:
    """bf16 / fp32 matmul throughput on this CPU (best of `reps`, n^3 multiply-adds)."""
    def best(dtype):
        a = torch.randn(n, n).to(dtype)
        b = torch.randn(n, n).to(dtype)
        a @ b
        t = []
        for _ in range(reps):
            t0 = time.perf_counter()
            a @ b
            t.append(time.perf_counter() - t0)
        return min(t)
    return best(torch.float32) / max(best(torch.bfloat16), 1e-9)


@functools.lru_cache(maxsize=None)
def cpu_bf16_support() -> Tuple[bool, str]:
    """(whether bf16 matmul is at least as fast as fp32 on this CPU, why). Lazy and cached: CPU
    flags where the OS lists them (x86: avx512_bf16 or amx_bf16; Arm: bf16), otherwise a tiny
    measurement (256^3 matmul, a few ms when bf16 is native)."""
    flags = _cpu_flags()
    machine = os.uname().machine.lower() if hasattr(os, "uname") else ""
    if flags is not None and machine in ("x86_64", "amd64", "i686", "i386"):
        have = [f for f in _BF16_FLAGS if f in flags]
        if have:
            return True, f"the CPU has {'/'.join(have)}"
        return False, "this CPU has no native bf16 matmul (no avx512_bf16 or amx_bf16 in /proc/cpuinfo)"
    if flags is not None and machine in ("aarch64", "arm64"):
        if "bf16" in flags:
            return True, "the CPU has bf16 (Arm)"
        return False, "this CPU has no native bf16 matmul (no bf16 in /proc/cpuinfo)"
    ratio = _bf16_matmul_ratio()
    if ratio >= 1.0:
        return True, f"bf16 matmul measured {ratio:.2f}x the fp32 rate"
    return False, f"bf16 matmul measured {ratio:.2f}x the fp32 rate on this CPU (no native bf16)"


def resolve_precision(precision: str, device: torch.device) -> str:
    """The precision a render really uses: bf16 on a CPU without native bf16 becomes fp32 (with
    one warning per process naming the reason); everything else as asked."""
    if precision != "bf16" or device.type != "cpu":
        return precision
    ok, why = cpu_bf16_support()
    if ok:
        return precision
    if why not in _warned:
        _warned.add(why)
        warnings.warn(f"--precision bf16: {why}, where torch's bf16 matmul is slower than fp32 (measured "
                      f"1.3 vs 94 GFLOP/s on an AVX2 CPU); rendering in fp32 instead", RuntimeWarning, stacklevel=3)
    return "fp32"
