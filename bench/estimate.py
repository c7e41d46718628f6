"""An ESTIMATE (not a measurement): FLOPs and HBM bytes per level of the render, per-layer kernels
against the fused level kernels, and the roofline time on an H200.

    python bench/estimate.py [--write]       # --write: the estimate block of bench/RESULTS.md

Model (bf16 activations, digan-128 architecture; 1024² is the same network at View(scale=8)):
  - FLOPs are 2 x the multiply-adds of every GEMM at the sizes the view renders, with split conv0
    (its parent part at the parent resolution), so their total is engine/flops.frame_work's.
  - HBM bytes per frame are the activations each kernel reads and writes once (unique bytes: the
    4 children of a parent row read it within one L2 lifetime), the embedding tables, and conv0's
    per-frame folded weights (C x 2E); the per-video weights (read once, then L2) are left out.
    Split conv0's parent part is stored in the compute dtype (bf16), as the engine does.
  - Per-layer design: one kernel per GEMM (engine/executor.render_tile with the fused ops off).
    Fused design, what the engine runs on the Triton backend in bf16 on sm_90: every level with a
    split conv0 (conv0 -> convs -> ToRGB + skip; uint8 at the top) in one kernel
    (kernels/level.py), reading only conv0's parent part and the parent image, and below the top
    writing its last activation once for the next level; every other ToRGB folded into the
    epilogue of the layer before it (kernels/linear_rgb.py), so its activation is not re-read.
  - Roofline time of a kernel: max(FLOPs / 790 TFLOP/s, bytes / 4.8 TB/s) (the H200's measured
    bf16 matmul rate and its HBM bandwidth), summed over the kernels; MFU = FLOPs / 790 T / time.
    Real kernels reach a fraction of it (MMA efficiency, tails, launch gaps are not modelled).
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:        # run as a script from anywhere
    sys.path.insert(0, str(REPO))

from digan.config import GeneratorConfig, generator_preset  # noqa: E402
from digan.view import View, level_rects, num_levels  # noqa: E402
from kernels.level import FUSED_MAX_CHANNELS  # noqa: E402

PEAK_FLOPS = 790e12        # bf16 dense matmul measured on the lent H200 (DESIGN §3)
PEAK_BYTES = 4.8e12        # H200 HBM3e bandwidth
BEGIN, END = "<!-- estimate:begin -->", "<!-- estimate:end -->"


@dataclass(frozen=True)
class Scenario:
    name: str
    scale: int         # View(scale=...)
    frames: int        # frames per video
    videos: int

    @property
    def total_frames(self) -> int:
        return self.frames * self.videos


SCENARIOS = (Scenario("128²×16×8", 1, 16, 8), Scenario("1024²×256", 8, 256, 1))


@dataclass
class KernelCost:
    block: int         # nominal resolution of the block (4, 8, ..., R)
    name: str          # which layers the kernel runs
    flops: int         # per frame
    bytes: int         # HBM bytes per frame

    def seconds(self, frames: int) -> float:
        return frames * max(self.flops / PEAK_FLOPS, self.bytes / PEAK_BYTES)


def _blocks(cfg: GeneratorConfig, view: View):
    """Per block: (res, pixels, parent pixels, C, C of the block below, level side w + h)."""
    rects = level_rects(view.final_rect(cfg.img_resolution), num_levels(cfg.img_resolution, cfg.input_resolution))
    pix = [(r1 - r0) * (c1 - c0) for r0, r1, c0, c1 in rects]
    side = [(r1 - r0) + (c1 - c0) for r0, r1, c0, c1 in rects]
    level, prev_c = 0, 0
    for res in cfg.block_resolutions:
        up = res > cfg.input_resolution
        level += up
        yield res, pix[level], pix[level - 1] if up else pix[level], cfg.channels(res), prev_c, side[level]
        prev_c = cfg.channels(res)


def kernel_costs(cfg: GeneratorConfig, view: View = View(), fused: bool = False,
                 act_bytes: int = 2) -> List[KernelCost]:
    """The kernels of one frame, per-layer (fused=False) or with the fused level kernels."""
    a, R, E2 = act_bytes, cfg.img_channels, cfg.emb_channels
    out: List[KernelCost] = []
    last = cfg.block_resolutions[-1]
    for res, p, pp, C, Cp, side in _blocks(cfg, view):
        img_in = pp * R * 4 if res != 4 else 0               # the parent image (skip), fp32
        img_out = p * R * (1 if res == last else 4)          # uint8 at the end
        layers = []                                           # (name, flops, bytes) per GEMM kernel
        if cfg.has_embedding(res):
            emb_bytes = side * E2 * 4 + C * E2 * a            # tables + per-frame folded weights
            if res == 4:
                layers.append(("conv0-emb", 2 * p * E2 * C, emb_bytes + p * C * a))
            else:
                layers.append(("conv0-parent", 2 * pp * Cp * C, pp * Cp * a + pp * C * a))
                layers.append(("conv0-emb", 2 * p * E2 * C, emb_bytes + pp * C * a + p * C * a))
        else:
            layers.append(("conv0", 2 * p * Cp * C, p * Cp * a + p * C * a))
        for k in range(cfg.num_conv(res) - 1):
            layers.append((f"conv{k + 1}", 2 * p * C * C, 2 * p * C * a))
        torgb = ("torgb", 2 * p * C * R, p * C * a + img_in + img_out)
        if not fused:
            layers.append(torgb)
        elif C <= FUSED_MAX_CHANNELS and cfg.has_embedding(res) and res != 4:
            # The level kernel (every split level, sm_90 bf16): everything after conv0's parent
            # part on chip; it reads the tables, the folded weights, the parent part and the
            # parent image, and writes the image; a level below the top also writes its last
            # activation once (act_out: the next level's parent part reads it).
            inner = layers[1:] + [torgb]
            act_out = p * C * a if res != last else 0
            level_bytes = layers[1][2] - p * C * a + img_in + img_out + act_out
            layers = layers[:1] + [("level", sum(f for _, f, _ in inner), level_bytes)]
        else:
            # ToRGB in the last conv's epilogue: its activation is not re-read (linear_rgb.py).
            name, f, b = layers[-1]
            layers[-1] = (f"{name}+torgb", f + torgb[1], b + img_in + img_out)
        out += [KernelCost(res, n, f, b) for n, f, b in layers]
    return out


def level_table(cfg: GeneratorConfig, sc: Scenario) -> List[Dict]:
    """Rows per block: FLOPs, bytes and roofline time of both designs for the whole scenario."""
    view = View(scale=sc.scale)
    rows = []
    per_layer, fused = kernel_costs(cfg, view), kernel_costs(cfg, view, fused=True)
    for res in cfg.block_resolutions:
        pl = [k for k in per_layer if k.block == res]
        fu = [k for k in fused if k.block == res]
        rows.append(dict(block=f"b{res}", C=cfg.channels(res), flops=sum(k.flops for k in pl),
                         bytes_layer=sum(k.bytes for k in pl), bytes_fused=sum(k.bytes for k in fu),
                         kernels_layer=len(pl), kernels_fused=len(fu),
                         t_layer=sum(k.seconds(sc.total_frames) for k in pl),
                         t_fused=sum(k.seconds(sc.total_frames) for k in fu)))
    return rows


def markdown(cfg: GeneratorConfig, scenarios: Sequence[Scenario] = SCENARIOS) -> str:
    out = ["**ESTIMATE, not a measurement** (`python bench/estimate.py --write`; model in its docstring): "
           "digan-128 architecture, bf16 activations, H200 roofline at 790 TFLOP/s bf16 and 4.8 TB/s. "
           "FLOPs and bytes are per frame; times are for the whole scenario. Fused: what the engine "
           "runs in bf16 on the Triton backend on sm_90 (each level with a split conv0, b64 and b128, "
           "in one kernel after its parent part, kernels/level.py; every other ToRGB folded into the "
           "layer before it, kernels/linear_rgb.py)."]
    for sc in scenarios:
        rows = level_table(cfg, sc)
        out += ["", f"_{sc.name} ({sc.total_frames} frames, View(scale={sc.scale}))_", "",
                "| block | C | GFLOP/frame | MB/frame per-layer | MB/frame fused | kernels per-layer / fused "
                "| FLOP/B per-layer | FLOP/B fused | roofline ms per-layer | roofline ms fused |",
                "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|"]
        for r in rows + [_total(rows)]:
            out.append(f"| {r['block']} | {r['C']} | {r['flops'] / 1e9:.3f} | {r['bytes_layer'] / 1e6:.2f} | "
                       f"{r['bytes_fused'] / 1e6:.2f} | {r['kernels_layer']} / {r['kernels_fused']} | "
                       f"{r['flops'] / r['bytes_layer']:.0f} | {r['flops'] / r['bytes_fused']:.0f} | "
                       f"{r['t_layer'] * 1e3:.3f} | {r['t_fused'] * 1e3:.3f} |")
        tot = _total(rows)
        ideal = tot["flops"] * sc.total_frames / PEAK_FLOPS
        out += ["", f"Total {tot['flops'] * sc.total_frames / 1e12:.1f} TFLOP: compute-bound time "
                f"{ideal * 1e3:.1f} ms; roofline per-layer {tot['t_layer'] * 1e3:.1f} ms (MFU ≤ "
                f"{ideal / tot['t_layer']:.2f}), fused {tot['t_fused'] * 1e3:.1f} ms (MFU ≤ "
                f"{ideal / tot['t_fused']:.2f})."]
    return "\n".join(out)


def _total(rows: List[Dict]) -> Dict:
    t = {k: sum(r[k] for r in rows) for k in rows[0] if k not in ("block", "C")}
    return dict(t, block="**total**", C="")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Estimate of FLOPs, bytes and roofline time per level")
    p.add_argument("--write", action="store_true", help="rewrite the estimate block of bench/RESULTS.md")
    p.add_argument("--results-md", type=Path, default=REPO / "bench" / "RESULTS.md")
    args = p.parse_args(argv)
    text = markdown(generator_preset("digan-128"))
    print(text)
    if args.write:
        from bench.results_md import replace_block
        replace_block(args.results_md, BEGIN, END, text,
                      "## Estimate: per-layer vs fused level kernels (H200 roofline)\n\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
