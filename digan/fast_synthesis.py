"""A differentiable G.synthesis built from the kernel ops: the trainer's fast path.

    fast_synthesis(G, ws, Ts, z_motion, precision='fp32', backend='auto', view=None)
        -> frames (B*T, 3, H, W) fp32

The same function as `G.synthesis(ws, Ts, z_motion, view)` (digan/networks.py), differentiable
w.r.t. every synthesis parameter, ws and z_motion, computed the way the render engine computes it
(engine/executor.py), with autograd on top:

  * per video, once: W' = fmm_modulate(weight, affine(w)) for every layer (one batched call per
    layer over the B videos), the ToRGB weights, and the embedding's A, b(t) (CoordFuser.params);
  * per video, one GEMM per layer over all of its T frames' pixels (rows (t, i, j), channels
    last) with fmm_linear: the embedding generated in the GEMM's prologue, never stored; the
    split conv0 W'[up(h), e] = up(W'_h h) + W'_e e (the feature part at the parent resolution,
    added by index); bias, lrelu * sqrt(2) and clamp in the epilogue; the ToRGB skip
    img = up(img) + rgb as the epilogue's post_add;
  * backward through kernels/linear_backward.py and kernels/modulate_backward.py (dY' once per
    layer; dW' = dY'^T X over all rows of the video; the embedding and the gathers regenerated;
    scatter-adds for the indices), and torch autograd for the small per-video pieces (affine
    layers, CoordFuser, ToRGB modulation).

Numerically it differs from G.synthesis only by fp32 rounding (other summation orders: one GEMM
per video instead of a grouped convolution per frame, split conv0), with precision='fp32'.
precision 'tf32' / 'bf16' rounds the GEMM operands (forward and backward; activations stay fp32).

Use it in training as Trainer(..., synthesis=lambda ws, Ts, zm: fast_synthesis(G, ws, Ts, zm)).
"""
from __future__ import annotations

import functools
from typing import Optional, Sequence, Union

import torch

from kernels import nearest_index, torgb_modulate
from kernels.linear_backward import fmm_linear_autograd
from kernels.modulate_backward import fmm_modulate_autograd

from .networks import Generator, SynthesisNetwork, _parse_times
from .program import generator_program, layer_fuser, layer_weights, level_index, level_xy, modulate_layers, run_chain
from .view import View, level_rects

__all__ = ["fast_synthesis"]


def fast_synthesis(G: Union[Generator, SynthesisNetwork], ws: torch.Tensor,
                   Ts: Union[torch.Tensor, Sequence[float]], z_motion: torch.Tensor,
                   precision: str = "fp32", backend: str = "auto",
                   view: Optional[View] = None) -> torch.Tensor:
    """ws (B, num_ws, w_dim), Ts video-major in any of networks.TIME_LAYOUTS (the official
    (B*T, 1, 1, 1) among them), z_motion (B, w_dim)
    -> frames (B*T, 3, H, W) fp32; G a Generator (its .synthesis is used) or a SynthesisNetwork.
    backend: 'auto' (Triton on CUDA tensors, torch otherwise), 'triton', 'torch'."""
    syn = G.synthesis if isinstance(G, Generator) else G
    cfg = syn.cfg
    B = syn.check_codes(ws, z_motion)
    dev = ws.device
    Ts = _parse_times(Ts, B).to(dev)                                  # (B, T)
    T = Ts.shape[1]
    view = view or View()
    prog = generator_program(cfg)
    rects = level_rects(view.final_rect(cfg.img_resolution), prog.num_levels)
    ws = ws.to(torch.float32)

    # 1. Per-video weights, batched over the B videos (autograd records the small ops):
    #    W' (B, Cout, Cin) per layer, and the embedding's A (B, E, 2), b(t) (B, T, E).
    mods = modulate_layers(syn, prog, ws, functools.partial(fmm_modulate_autograd, backend=backend),
                           functools.partial(torgb_modulate, backend=backend))
    embs = {i: layer_fuser(syn, layer).params(ws[:, layer.w], z_motion, Ts)
            for i, layer in enumerate(prog.layers) if layer.emb}

    # 2. Index and coordinates of every level (shared by the videos).
    index = level_index(prog, T, rects, nearest_index, device=dev)
    xy = level_xy(prog, rects, view.scale, device=dev)

    # 3. Per video: the fused layer chain over all T frames.
    linear = functools.partial(fmm_linear_autograd, precision=precision, backend=backend)
    frames = []
    for v in range(B):
        weights = layer_weights(syn, prog, [W[v] for W in mods])
        emb = {i: dict(emb_A=A[v], emb_b=b[v], xs=xy[prog.layers[i].level][0], ys=xy[prog.layers[i].level][1])
               for i, (A, b) in embs.items()}
        img = run_chain(weights, linear, index, emb)
        h = rects[-1][1] - rects[-1][0]
        w = rects[-1][3] - rects[-1][2]
        frames.append(img.view(T, h, w, -1).permute(0, 3, 1, 2))
    # torch.cat keeps the permuted (channels-last) layout of its inputs: return plain NCHW.
    return torch.cat(frames, dim=0).contiguous()                      # (B*T, 3, H, W)
