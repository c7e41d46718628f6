"""One kernel per level: conv0 (embedding part + parent part by index) -> the following convs ->
ToRGB + skip -> image, for a block of rows, the activations never leaving the chip (DESIGN §7).

The level's layers, per row m = (f, i, j) of the tile (F frames x h rows x w columns, M = F*h*w),
with C channels, E frequencies, L convs after conv0 (conv1 and the extra convs), R = 3 colours:

    h0  = act(e[m] @ W_e^T + pre[pre_index[m]] + b0)              conv0 (split: pre = W'_h h_parent)
    h_l = act(h_{l-1} @ W_l^T + b_l)                              l = 1..L
    img = clamp_rgb(h_L @ W_rgb^T + b_rgb) + img_parent[img_index[m]]
    act(y) = clamp(lrelu(y) * gain), each h rounded to the compute dtype (bf16 in 'bf16' mode)

This is exactly the per-layer chain of engine/executor.render_tile for one level from conv0's
embedding call on (`fmm_level_chain` composes those fmm_linear calls and is the spec). conv0's
parent part W'_h h_parent stays a separate fmm_linear at the parent resolution (4x fewer rows),
its (Mp, C) fp32 result read here by index, as the per-layer chain does.

Triton kernel (kernels/_level_triton.py): a CTA owns BLOCK_M rows of one frame and all C <= 512
channels. Each layer's output is computed in tiles of BLOCK_C channels, BLOCK_C being the
per-layer kernel's K step (linear._triton_config, keyed on the layer shape and the precision
only), and kept as C / BLOCK_C chunks; the embedding runs in the per-layer kernel's frequency
steps. The convs and the ToRGB run transposed, out^T = W h^T, so that an activation chunk is the
dot's B operand: on sm_90 wgmma reads it from shared memory (2 x BLOCK_M x C bf16 for the input
and the output of a conv) instead of registers. Each output element is still reduced in the same
chunks and the same order as by the per-layer kernels (the same products, the same K order; for
3xTF32 the three partial dots in the per-layer order, _level_triton._mma_t), its epilogue is the
same sequence of fp32 operations, and the activations are rounded where the per-layer chain
stores them. So the fused kernel gives the per-layer Triton chain's bits (the interpreter tests
show it with the fixed-order dot, tests/test_kernels_level.py); only the HBM traffic is gone: per
row it reads the tables, conv0's parent part (C values) and the parent image (R values), and
writes R values (straight into the frame buffer with out=), instead of writing and re-reading
the C-wide activation L + 1 times. The last conv's chunks feed the ToRGB's K steps as they are
made, so the last activation is never kept; a level below the top (b64 of digan-128) stores it
once as well (act_out=True: the next level's split conv0 reads it, one (M, C) write instead of
conv0's and the ToRGB's passes), with the bits the per-layer conv stores.

Tile sizes come from (C, E, L, precision, arch) only, never from M: a row's bits do not depend on
the tile. Compile report (python -m kernels.compile_level, E = 128, no GPU; bench/RESULTS.md):
bf16, sm_90, wgmma: C = 128 / 256 at 64 rows x 8 warps: 137 / 194 registers, 32 / 64 KB shared,
no spill (the activations in registers, before the transposed form: 255 registers and 152 B
spilled at 256); C = 512 at 16 x 4: 174 registers (L = 1, b64; 176 storing its activation,
act_out), 191 (L = 2), no spill (64 x 8 spilled 904 B at L = 2, 64 x 4 612, 32 x 4 48); b4
(C = 512, L = 0: no activation kept) at 64 x 8: 180 registers; C = 256, L = 2 with act_out
(digan-256's b128): 197. bf16, sm_80 (mma.sync keeps operands in registers): C = 128 at 64 x 8: 182
registers, no spill; C = 256 at 16 x 2: 255, no spill (64 x 8: 76 B, 32 x 8: 48, 32 x 4: 80, 16 x
4: 88; 60 B with act_out); C = 512 spills with a conv after conv0 (16 x 4: 244 B at L = 1, 180 at L = 2; 16 x 2:
1004; b64 with act_out 16 x 4: 224, 16 x 8: 60, 32 x 8: 112) but not at b4 (L = 0, 16 x 4: 186
registers). fp32 (3xTF32) and tf32 (32-wide chunks: 32-channel conv tiles, below wgmma's 64
rows, so mma.sync) at 32 x 4 spill: C = 256 fp32 616 / 756 B (sm_90 / sm_80), tf32 224 / 76 B;
C = 128 fp32 144 / 24 B, tf32 no spill (150 registers) but mma.sync on sm_90. Other tiles do
not help: fp32 C = 256 at 16 x 4 spills 6352 / 8648 B; with 64-wide K chunks (wgmma on sm_90,
64 x 8) fp32 spills 9124 B (160 KB shared) and tf32 1340 B. They take the scratch design.
Where the activations do not fit in registers (fp32 and tf32 at every width; bf16 on
sm_80 at C = 512 with conv1 and wherever a level stores its activation above C = 128) the scratch
design runs instead (_level_triton._fmm_level_scratch_kernel): each program owns two BLOCK_M x C
buffers in the compute dtype (2 x 64 x 256 fp32 = 128 KB; one program per SM, 17 MB of an H200's
50 MB L2 at C = 256) and walks row blocks; for a block every layer is the per-layer kernel's own
tile code (_linear_triton._column) reading one buffer and writing the other, the CTA's threads
synchronised between layers. The same K steps, epilogue and store rounding as the chain, so
the same bits (tested in the interpreter against the chain at 1, 3 and 7 programs); registers
are the per-layer kernel's (a tile at a time: fp32 124-184 on sm_90, no spill), and the
activations stay on the chip, in L2, unless evicted. Its tiles (level_config): 64 rows x 32
columns for 3xTF32 on sm_90, 64 x 64 otherwise, 32 (sm_90) / 64 (sm_80) x 32 for the FMA
dot, 8 warps.
Without CUDA (or Triton) `fmm_level` runs the chain on the torch backend (the CPU path).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import torch

from ._common import (
    FLOAT_DTYPES,
    cdiv,
    check_index,
    check_out_layout,
    check_precision,
    check_tensor,
    load_triton_module,
    resolve_backend,
    tensor_device,
    triton_dot_precision,
)
from .linear import SQRT2, _check_fmm_linear, _triton_config, emb_tables, fmm_linear, fold_frame_weights

__all__ = ["FUSED_MAX_CHANNELS", "LevelConfig", "fmm_level", "fmm_level_chain", "fmm_level_reference",
           "fmm_level_triton", "fused_level_spill_free", "level_config"]

# Widest level the fused kernel takes: the 512-wide levels of digan-128 / digan-256 (b4 .. b64).
# Where it compiles without spills: fused_level_spill_free (the module docstring's numbers).
FUSED_MAX_CHANNELS = 512
MAX_IMG_CHANNELS = 16          # the ToRGB output is padded to one 16-wide dot tile
_INT32_MAX = 2**31 - 1


@dataclass(frozen=True)
class LevelConfig:
    BLOCK_M: int        # rows per CTA (of one frame)
    BLOCK_N: int        # output column tile of conv0 and the convs: one activation chunk
    BLOCK_C: int        # channel chunk: the per-layer K step of the convs and the ToRGB
    BLOCK_E: int        # frequency step: the per-layer K step of the embedding GEMM
    BLOCK_R: int        # image channels padded to a dot tile
    num_warps: int
    num_stages: int
    # The activations in per-program buffers (L2) instead of registers (_fmm_level_scratch_kernel):
    # where the register design spills. BLOCK_N is then the per-layer kernel's column tile.
    scratch: bool = False


def _fits_registers(C: int, precision: str, arch: int, L: int, act_out: bool) -> bool:
    """Whether the register design (_fmm_level_kernel) compiles without spills (the compile
    report, module docstring): bf16 only; on sm_80 not at C = 512 with a conv after conv0, nor
    storing the last activation above C = 128. Elsewhere level_config picks the scratch design."""
    if precision != "bf16":
        return False
    if arch >= 90:
        return True
    return C <= 128 if act_out else (C <= 256 or L == 0)


def level_config(C: int, E: int, R: int, precision: str, arch: int = 90, L: int = 2,
                 act_out: bool = False) -> LevelConfig:
    """Launch settings from the level's shape (L: convs after conv0), the precision and the GPU
    arch (sm_90 -> 90), never from the rows: a row's bits do not depend on them (the K steps are
    the per-layer kernel's, so the reductions match it chunk for chunk, whatever BLOCK_M and the
    warps).

    BLOCK_M and the warps come from the compile report (python -m kernels.compile_level:
    registers, spills, shared memory), not from timing; see the module docstring for the numbers."""
    conv_k = _triton_config(C, 0, C, precision)["BLOCK_K"]
    rgb_k = _triton_config(C, 0, R, precision)["BLOCK_K"]
    emb_k = _triton_config(0, E, C, precision)["BLOCK_K"]
    if conv_k != rgb_k:
        # The activation chunks are the operand of both; a per-layer config that reduced them in
        # other steps could not be matched by one chunking.
        raise ValueError(f"per-layer K steps differ for the convs ({conv_k}) and the ToRGB ({rgb_k}); "
                         "the fused level needs one chunk width")
    if not _fits_registers(C, precision, arch, L, act_out):
        # The activations in L2 buffers, a tile of the per-layer kernel's code at a time, 8 warps,
        # 64 rows (wgmma's minimum on sm_90: 32 made it mma.sync). Columns: at the per-layer
        # kernel's 128, 3xTF32 spilled 420 B (sm_90, C = 256) and tf32 48 (sm_80); at 64 3xTF32
        # spilled 24 / 144 B on sm_90 (digan-128 / digan-256 b128), nothing else did; at 32 3xTF32
        # on sm_90 takes 124-184 registers, no spill, but on sm_80 248 B at C = 256. The FMA dot
        # (fp32-ieee, no MMA) at 64 x 32: 128 registers, no spill on sm_80 but 16-56 B on sm_90;
        # 32 x 32: 72-74 registers on sm_90, but 104 B on sm_80 at C = 256 with act_out
        # (python -m kernels.compile_level --block-m / --block-n / --num-warps).
        block_m, n = 64, 64
        if precision == "fp32" and arch >= 90:
            n = 32
        elif precision == "fp32-ieee":
            block_m, n = (32 if arch >= 90 else 64), 32
        return LevelConfig(BLOCK_M=block_m, BLOCK_N=n, BLOCK_C=conv_k, BLOCK_E=emb_k, BLOCK_R=16, num_warps=8,
                           num_stages=1, scratch=True)
    if precision == "bf16":
        if arch >= 90:
            # wgmma: the conv tiles are (64 channels) x (BLOCK_M rows), the activation in shared
            # memory (2 x BLOCK_M x C bf16). 64 rows x 8 warps: 194 registers at C = 256; at 512
            # it spilled 904 B (64 x 4: 612, 32 x 4: 48): 16 rows x 4 warps, 191 registers. With
            # L = 0 (b4: conv0's chunks go straight into the ToRGB) no activation is kept: 64 x 8
            # (186 registers at 512), as conv0's wgmma needs 64 rows (16 rows made it mma.sync).
            block_m, warps = (64, 8) if C <= 256 or L == 0 else (16, 4)
        else:
            # mma.sync keeps the activation in registers: 64 x 8 warps fits C = 128 (182
            # registers) but spilled 76 B at 256 (64 x 4: 504, 32 x 4: 80, 32 x 8: 48, 16 x 4: 88);
            # 16 rows x 2 warps: 255 registers, no spill. 512 spills at every tile tried (16 x 4:
            # 180 B at L = 2, 244 at L = 1) but L = 0 (no activation kept: 186 registers).
            block_m, warps = (64, 8) if C <= 128 else (16, 2) if C <= 256 else (16, 4)
    else:
        # fp32 operands (3xTF32 / TF32 / FMA dots): 32-wide chunks, so the conv tiles are 32
        # channels high, below wgmma's 64: mma.sync or FMA; they spill at C = 256 (module docstring).
        block_m, warps = 32, 4
    return LevelConfig(BLOCK_M=block_m, BLOCK_N=conv_k, BLOCK_C=conv_k, BLOCK_E=emb_k,
                       BLOCK_R=16, num_warps=warps, num_stages=1)


def fused_level_spill_free(C: int, precision: str, arch: int) -> bool:
    """Whether the fused kernel, in the design and tiles level_config picks (which do depend on
    the convs after conv0 and act_out), compiles without spills for this level width, precision
    and arch: python -m kernels.compile_level, whose table in bench/RESULTS.md a test compares
    with this. fmm_level's 'auto' runs the per-layer chain elsewhere (wider levels, fp32-ieee,
    archs the report does not cover)."""
    # Every width up to FUSED_MAX_CHANNELS of fp32, tf32 and bf16 on sm_90 and sm_80, by the design
    # level_config picks (registers where they suffice, else the scratch design): the compile
    # report has no spill. Not fp32-ieee, the slow exact mode (nor does its ToRGB fold): its FMA
    # dot spilled 16-56 B at 64 x 32 on sm_90, and 32 B at 32 x 32 in the render-256 scenario
    # of make compile-check (64 registers) where kernels.compile_level's shapes had none.
    return C <= FUSED_MAX_CHANNELS and precision in ("fp32", "tf32", "bf16") and arch in (80, 90)


def _target_arch(device: torch.device) -> int:
    """The GPU arch the kernel compiles for (90 for sm_90): the device's, else the active Triton
    driver's target (the compile probe's stand-in), else 90 (the interpreter: any config works)."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return 10 * major + minor
    try:
        import triton
        return int(triton.runtime.driver.active.get_current_target().arch)
    except Exception:  # no GPU driver (the interpreter): the arch changes no bits
        return 90


# Programs of the scratch design per SM: each keeps 2 x 64 x C activation values in L2 (128 KB
# fp32 at C = 256: 132 SMs of an H200 hold 17 MB of its 50 MB L2). Off CUDA (the interpreter,
# the compile probe) a few programs, so that each walks several row blocks.
SCRATCH_PROGRAMS_PER_SM = 1
SCRATCH_PROGRAMS_OFF_CUDA = 3


def _scratch_programs(device: torch.device) -> int:
    if device.type == "cuda":
        return SCRATCH_PROGRAMS_PER_SM * torch.cuda.get_device_properties(device).multi_processor_count
    return SCRATCH_PROGRAMS_OFF_CUDA


def _pow2(n: int) -> int:
    """The least power of 2 >= n."""
    return 1 << max(0, n - 1).bit_length()


# ---- checks -------------------------------------------------------------------------------------

def _check_number(name, v, lo_ok=None, allow_none=False):
    if v is None and allow_none:
        return
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or (
            lo_ok is not None and not v >= lo_ok):
        lim = f" >= {lo_ok}" if lo_ok is not None else ""
        raise ValueError(f"{name} must be {'None or ' if allow_none else ''}a finite number{lim}, got {v!r}")


def _check_level(w_emb, bias0, conv_W, conv_b, rgb_W, rgb_b, emb_A, emb_b, xs, ys, pre_add, pre_index,
                 img, img_index, gain, clamp, rgb_clamp, out_uint8, precision):
    """Every host check of the fused level; returns (conv0's _Dims, L, R)."""
    check_precision(precision)
    if not isinstance(out_uint8, bool):
        raise ValueError(f"out_uint8 must be a bool, got {out_uint8!r}")
    if emb_A is None or emb_b is None or xs is None or ys is None:
        raise ValueError("the fused level needs the embedding (emb_A, emb_b, xs, ys): conv0 is "
                         "the embedding layer of the level")
    cdt = torch.bfloat16 if precision == "bf16" else torch.float32
    # conv0 exactly as its per-layer call (shapes, dtypes, devices, indices, gain, clamp).
    d = _check_fmm_linear(w_emb, None, None, emb_A, emb_b, xs, ys, pre_add, pre_index, bias0, True,
                          gain, clamp, None, None, cdt, precision)
    if bias0 is None:
        raise ValueError("bias0 (conv0's bias, (C,)) is required")
    dev, C = w_emb.device, d.N
    check_tensor(conv_W, "conv_W", ndim=3, shape=(None, C, C), dtypes=FLOAT_DTYPES, device=dev)
    L = conv_W.shape[0]
    check_tensor(conv_b, "conv_b", shape=(L, C), dtypes=FLOAT_DTYPES, device=dev)
    check_tensor(rgb_W, "rgb_W", ndim=2, shape=(None, C), dtypes=FLOAT_DTYPES, device=dev)
    R = rgb_W.shape[0]
    if not 1 <= R <= MAX_IMG_CHANNELS:
        raise ValueError(f"rgb_W must have 1..{MAX_IMG_CHANNELS} rows (image channels), got {R}")
    check_tensor(rgb_b, "rgb_b", shape=(R,), dtypes=FLOAT_DTYPES, device=dev)
    if img_index is not None and img is None:
        raise ValueError("img_index given without img")
    if img is not None:
        check_tensor(img, "img", ndim=2, shape=(None, R), dtypes=FLOAT_DTYPES, device=dev,
                     inner_contiguous=True)
        if img_index is None:
            if img.shape[0] != d.M:
                raise ValueError(f"img has {img.shape[0]} rows, expected M = {d.M} (or pass img_index)")
        else:
            check_index(img_index, "img_index", d.M, img.shape[0], dev, True)
    _check_number("rgb_clamp", rgb_clamp, lo_ok=0, allow_none=True)
    return d, L, R


def _check_act_out(act_out, out) -> None:
    if not isinstance(act_out, bool):
        raise ValueError(f"act_out must be a bool, got {act_out!r}")
    if act_out and out is not None:
        # A level whose activation is read on is not the top one: its image goes on to the next
        # level's skip, not into the frame buffer.
        raise ValueError("act_out=True stores the image as returned rows; out= is for the top level")


def _check_out(out, d, R: int, out_uint8: bool, dev: torch.device) -> None:
    """out=: an (F, h, w, R) view of the level's tile (any strides, unit stride across colours,
    e.g. the tile's place in the renderer's (frames, H, W, 3) chunk buffer), uint8 for
    out_uint8 else fp32, on the weights' device, not overlapping itself."""
    check_tensor(out, "out", ndim=4, shape=(d.F, d.TH, d.TW, R),
                 dtypes=(torch.uint8 if out_uint8 else torch.float32,), device=dev)
    check_out_layout(out, "colours")


# ---- the spec: the per-layer chain --------------------------------------------------------------

def fmm_level_chain(w_emb, bias0, conv_W, conv_b, rgb_W, rgb_b, *, emb_A, emb_b, xs, ys, pre_add=None,
                    pre_index=None, img=None, img_index=None, gain=SQRT2, clamp=None, rgb_clamp=None,
                    out_uint8=False, precision="fp32", backend="auto", out=None, act_out=False):
    """The level as the per-layer chain of fmm_linear calls (engine/executor.render_tile's): L + 2
    launches, each activation (M, C) written in the compute dtype and read back. out= and
    act_out as in fmm_level (the last fmm_linear stores there; act_out: -> (img, the last conv's
    activation))."""
    d, _, R = _check_level(w_emb, bias0, conv_W, conv_b, rgb_W, rgb_b, emb_A, emb_b, xs, ys, pre_add,
                           pre_index, img, img_index, gain, clamp, rgb_clamp, out_uint8, precision)
    _check_act_out(act_out, out)
    if out is not None:
        _check_out(out, d, R, out_uint8, w_emb.device)
    cdt = torch.bfloat16 if precision == "bf16" else torch.float32
    common = dict(precision=precision, backend=backend)
    x = fmm_linear(w_emb, None, emb_A=emb_A, emb_b=emb_b, xs=xs, ys=ys, pre_add=pre_add,
                   pre_index=pre_index, bias=bias0, act=True, gain=gain, clamp=clamp, out_dtype=cdt,
                   **common)
    for W, b in zip(conv_W, conv_b):
        x = fmm_linear(W, x, bias=b, act=True, gain=gain, clamp=clamp, out_dtype=cdt, **common)
    y = fmm_linear(rgb_W, x, bias=rgb_b, clamp=rgb_clamp, post_add=img, post_index=img_index,
                   out_dtype=None if out_uint8 else torch.float32, out_uint8=out_uint8, out=out, **common)
    return (y, x) if act_out else y


def fmm_level_reference(*args, **kwargs) -> torch.Tensor:
    """The spec on the torch backend: the per-layer chain of fmm_linear's torch path."""
    kwargs["backend"] = "torch"
    return fmm_level_chain(*args, **kwargs)


# ---- triton launcher ----------------------------------------------------------------------------

def fmm_level_triton(w_emb, bias0, conv_W, conv_b, rgb_W, rgb_b, *, emb_A, emb_b, xs, ys, pre_add=None,
                     pre_index=None, img=None, img_index=None, gain=SQRT2, clamp=None, rgb_clamp=None,
                     out_uint8=False, precision="fp32", out=None, act_out=False):
    """Triton launcher (CUDA tensors, or CPU tensors under TRITON_INTERPRET=1): one kernel."""
    d, L, R = _check_level(w_emb, bias0, conv_W, conv_b, rgb_W, rgb_b, emb_A, emb_b, xs, ys, pre_add,
                           pre_index, img, img_index, gain, clamp, rgb_clamp, out_uint8, precision)
    _check_act_out(act_out, out)
    dev = w_emb.device
    resolve_backend("triton", dev)
    C, E = d.N, d.E
    if C > FUSED_MAX_CHANNELS:
        raise ValueError(f"the fused level kernel takes at most {FUSED_MAX_CHANNELS} channels, got "
                         f"C = {C}; run the per-layer chain (fmm_level_chain) for wider levels")
    if out is None:
        out = torch.empty((d.M, R), dtype=torch.uint8 if out_uint8 else torch.float32, device=dev)
        out4 = out.view(d.F, d.TH, d.TW, R)                        # the same rows, (f, i, j) order
    else:
        _check_out(out, d, R, out_uint8, dev)
        out4 = out
    act = (torch.empty((d.M, C), dtype=torch.bfloat16 if precision == "bf16" else torch.float32, device=dev)
           if act_out else None)
    if d.M == 0:
        return (out, act) if act_out else out
    cfg = level_config(C, E, R, precision, _target_arch(dev), L, act_out)
    row_tiles = d.F * cdiv(d.TH * d.TW, cfg.BLOCK_M)
    if row_tiles > _INT32_MAX:
        raise ValueError(f"{row_tiles} row tiles exceed the grid's 2^31 - 1")
    CP = max(_pow2(C), cfg.BLOCK_C)
    # The tables and the folded conv0 weights, as the per-layer launcher makes them (same values).
    tx, ty, tb = emb_tables(emb_A, xs, ys, emb_b)                 # (w, 2E), (h, 2E), (F, 2E)
    wf = fold_frame_weights(w_emb.float(), tb)                    # (F, C, 2E) contiguous
    if precision == "bf16":
        wf = wf.to(torch.bfloat16)
    # Pointer for absent operands, never read (their HAS_* flag is off): not `out`, whose place in
    # the frame buffer (its alignment) would then specialise them and compile a variant per crop.
    dummy = tx
    mod = load_triton_module("_level_triton")
    # Both designs take the same operands; the scratch one also its buffers and the row blocks the
    # programs walk (its grid is the programs, not the row blocks).
    operands = [wf, tx, ty,
                dummy if pre_add is None else pre_add,
                dummy if pre_index is None else pre_index,
                bias0.contiguous(), conv_W.contiguous(), conv_b.contiguous(), rgb_W.contiguous(),
                rgb_b.contiguous(),
                dummy if img is None else img,
                dummy if img_index is None else img_index,
                out4,
                dummy if act is None else act]
    sizes = [d.TH, d.TW]
    scalars = [pre_add.stride(0) if pre_add is not None else 0,
               img.stride(0) if img is not None else 0,
               out4.stride(0), out4.stride(1), out4.stride(2),
               float(gain), 0.0 if clamp is None else float(clamp),
               0.0 if rgb_clamp is None else float(rgb_clamp)]
    meta = dict(
        C=C, CP=CP, E=E, L=L, R=R,
        HAS_PRE=pre_add is not None, HAS_PRE_INDEX=pre_index is not None,
        HAS_CLAMP=clamp is not None, HAS_RGB_CLAMP=rgb_clamp is not None,
        HAS_POST=img is not None, HAS_POST_INDEX=img_index is not None,
        OUT_UINT8=out_uint8, HAS_ACT_OUT=act_out,
        DOT_PRECISION=triton_dot_precision(precision),
        BF16_OPERANDS=precision == "bf16",
        INTERPRETER=mod.INTERPRETED,
        BLOCK_M=cfg.BLOCK_M, BLOCK_N=cfg.BLOCK_N, BLOCK_C=cfg.BLOCK_C, BLOCK_E=cfg.BLOCK_E, BLOCK_R=cfg.BLOCK_R,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        enable_fp_fusion=False,
    )
    if cfg.scratch:
        programs = min(row_tiles, _scratch_programs(dev))
        scratch = torch.empty((programs, 2, cfg.BLOCK_M, CP), dtype=wf.dtype, device=dev)
        mod._fmm_level_scratch_kernel[(programs,)](*operands, scratch, *sizes, row_tiles, *scalars, **meta)
    else:
        mod._fmm_level_kernel[(row_tiles,)](*operands, *sizes, *scalars, **meta)
    return (out, act) if act_out else out


# One dispatch each (the render loop's op counter and CUDA graph capture see the kernel, not the
# launcher's table and weight-folding ops); the slots of fmm_level_triton, spelled out.
@torch.library.custom_op("digan::fmm_level", mutates_args=())
def _level_op(w_emb: torch.Tensor, bias0: torch.Tensor, conv_W: torch.Tensor, conv_b: torch.Tensor,
              rgb_W: torch.Tensor, rgb_b: torch.Tensor, emb_A: torch.Tensor, emb_b: torch.Tensor, xs: torch.Tensor,
              ys: torch.Tensor, pre_add: Optional[torch.Tensor], pre_index: Optional[torch.Tensor],
              img: Optional[torch.Tensor], img_index: Optional[torch.Tensor], gain: float, clamp: Optional[float],
              rgb_clamp: Optional[float], out_uint8: bool, precision: str) -> torch.Tensor:
    return fmm_level_triton(w_emb, bias0, conv_W, conv_b, rgb_W, rgb_b, emb_A=emb_A, emb_b=emb_b, xs=xs, ys=ys,
                            pre_add=pre_add, pre_index=pre_index, img=img, img_index=img_index, gain=gain,
                            clamp=clamp, rgb_clamp=rgb_clamp, out_uint8=out_uint8, precision=precision)


@_level_op.register_fake
def _level_fake(w_emb, bias0, conv_W, conv_b, rgb_W, rgb_b, emb_A, emb_b, xs, ys, *rest):
    out_uint8 = rest[7]
    M = emb_b.shape[0] * ys.shape[0] * xs.shape[0]
    return w_emb.new_empty((M, rgb_W.shape[0]), dtype=torch.uint8 if out_uint8 else torch.float32)


@torch.library.custom_op("digan::fmm_level_act", mutates_args=())
def _level_act_op(w_emb: torch.Tensor, bias0: torch.Tensor, conv_W: torch.Tensor, conv_b: torch.Tensor,
                  rgb_W: torch.Tensor, rgb_b: torch.Tensor, emb_A: torch.Tensor, emb_b: torch.Tensor,
                  xs: torch.Tensor, ys: torch.Tensor, pre_add: Optional[torch.Tensor],
                  pre_index: Optional[torch.Tensor], img: Optional[torch.Tensor], img_index: Optional[torch.Tensor],
                  gain: float, clamp: Optional[float], rgb_clamp: Optional[float], out_uint8: bool,
                  precision: str) -> Tuple[torch.Tensor, torch.Tensor]:
    return fmm_level_triton(w_emb, bias0, conv_W, conv_b, rgb_W, rgb_b, emb_A=emb_A, emb_b=emb_b, xs=xs, ys=ys,
                            pre_add=pre_add, pre_index=pre_index, img=img, img_index=img_index, gain=gain,
                            clamp=clamp, rgb_clamp=rgb_clamp, out_uint8=out_uint8, precision=precision,
                            act_out=True)


@_level_act_op.register_fake
def _level_act_fake(w_emb, *rest):
    img = _level_fake(w_emb, *rest)
    act_dtype = torch.bfloat16 if rest[-1] == "bf16" else torch.float32
    return img, w_emb.new_empty((img.shape[0], w_emb.shape[0]), dtype=act_dtype)


@torch.library.custom_op("digan::fmm_level_out", mutates_args=("out",))
def _level_out_op(out: torch.Tensor, w_emb: torch.Tensor, bias0: torch.Tensor, conv_W: torch.Tensor,
                  conv_b: torch.Tensor, rgb_W: torch.Tensor, rgb_b: torch.Tensor, emb_A: torch.Tensor,
                  emb_b: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor, pre_add: Optional[torch.Tensor],
                  pre_index: Optional[torch.Tensor], img: Optional[torch.Tensor], img_index: Optional[torch.Tensor],
                  gain: float, clamp: Optional[float], rgb_clamp: Optional[float], out_uint8: bool,
                  precision: str) -> None:
    fmm_level_triton(w_emb, bias0, conv_W, conv_b, rgb_W, rgb_b, emb_A=emb_A, emb_b=emb_b, xs=xs, ys=ys,
                     pre_add=pre_add, pre_index=pre_index, img=img, img_index=img_index, gain=gain, clamp=clamp,
                     rgb_clamp=rgb_clamp, out_uint8=out_uint8, precision=precision, out=out)


@_level_out_op.register_fake
def _level_out_fake(out, *args):
    return None


# ---- dispatch -----------------------------------------------------------------------------------

def fmm_level(w_emb: torch.Tensor, bias0: torch.Tensor, conv_W: torch.Tensor, conv_b: torch.Tensor,
              rgb_W: torch.Tensor, rgb_b: torch.Tensor, *, emb_A: torch.Tensor, emb_b: torch.Tensor,
              xs: torch.Tensor, ys: torch.Tensor, pre_add: Optional[torch.Tensor] = None,
              pre_index: Optional[torch.Tensor] = None, img: Optional[torch.Tensor] = None,
              img_index: Optional[torch.Tensor] = None, gain: float = SQRT2, clamp: Optional[float] = None,
              rgb_clamp: Optional[float] = None, out_uint8: bool = False, precision: str = "fp32",
              backend: str = "auto", out: Optional[torch.Tensor] = None, act_out: bool = False):
    """The whole level in one kernel (see the module docstring).

    w_emb (C, 2E) conv0's embedding weight [W_sin | W_cos] and bias0 (C,); conv_W (L, C, C) and
    conv_b (L, C) the following convs; rgb_W (R, C), rgb_b (R,); the embedding emb_A (E, 2),
    emb_b (F, E), xs (w,), ys (h,) fp32, M = F*h*w rows in (f, i, j) order; pre_add (Mp, C) fp32
    conv0's parent part with pre_index (M,) int64; img (Mq, R) the parent image with img_index
    (M,). Weights in the compute dtype. Returns (M, R) fp32 (the unclipped image) or uint8
    (out_uint8=True). backend: 'auto' (on CUDA tensors with Triton: the fused kernel where it
    compiles without spills, fused_level_spill_free(C, precision, arch), else the per-layer
    Triton chain; on CPU the per-layer torch chain), 'triton' (the fused kernel), 'torch'.
    out: an (F, h, w, R) tensor of the tile (uint8 with out_uint8, else fp32; any strides, unit
    stride across colours: a view into a (frames, H, W, 3) frame buffer) the image is stored
    into, row (f, i, j) at out[f, i, j]; returns it. The kernel stores there directly (the
    chains through the ToRGB's fmm_linear out=).
    act_out: -> (image, the last conv's activation (M, C) in the compute dtype) for a level below
    the top, whose activation the next level's split conv0 reads (not with out=): the kernel
    stores each chunk of it as it is made, the bits the per-layer conv stores."""
    kw = dict(emb_A=emb_A, emb_b=emb_b, xs=xs, ys=ys, pre_add=pre_add, pre_index=pre_index, img=img,
              img_index=img_index, gain=gain, clamp=clamp, rgb_clamp=rgb_clamp, out_uint8=out_uint8,
              precision=precision, out=out, act_out=act_out)
    args = (w_emb, bias0, conv_W, conv_b, rgb_W, rgb_b)
    # Checked once, by the path taken (the fused launcher inside its custom op, or the chain):
    # here only what picks the path.
    chosen = resolve_backend(backend, tensor_device(w_emb, "w_emb"))
    check_tensor(conv_W, "conv_W", ndim=3)
    _check_act_out(act_out, out)
    if chosen == "triton" and (backend == "triton" or fused_level_spill_free(
            w_emb.shape[0], precision, _target_arch(w_emb.device))):
        slots = (*args, emb_A, emb_b, xs, ys, pre_add, pre_index, img, img_index, float(gain),
                 None if clamp is None else float(clamp), None if rgb_clamp is None else float(rgb_clamp),
                 out_uint8, precision)
        if act_out:
            return torch.ops.digan.fmm_level_act(*slots)
        if out is not None:
            torch.ops.digan.fmm_level_out(out, *slots)
            return out
        return torch.ops.digan.fmm_level(*slots)
    if chosen == "triton":   # 'auto' where the fused kernel would spill: the Triton chain
        return fmm_level_chain(*args, backend="triton", **kw)
    return fmm_level_chain(*args, backend="torch", **kw)
