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

from typing import List, Optional, Sequence, Union

import torch

from kernels import nearest_index, torgb_modulate
from kernels.linear_backward import fmm_linear_autograd
from kernels.modulate_backward import fmm_modulate_autograd

from .networks import Generator, SynthesisNetwork, _parse_times
from .view import View, level_coords, level_rects, num_levels

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
    n_lv = num_levels(cfg.img_resolution, cfg.input_resolution)
    rects = level_rects(view.final_rect(cfg.img_resolution), n_lv)
    ws = ws.to(torch.float32)
    E2 = cfg.emb_channels

    # 1. Per-video weights, batched over the B videos (autograd records the small ops).
    prepared = []
    for block, bws in zip(syn.blocks(), syn.block_ws(ws)):           # bws (B, num_conv + 1, w_dim)
        convs = block.conv_layers()
        mods = [fmm_modulate_autograd(conv.weight[:, :, 0, 0], conv.affine(bws[:, k]), conv.rank,
                                      backend=backend)              # (B, Cout, Cin)
                for k, conv in enumerate(convs)]
        rgb = block.torgb
        rgb_w = torgb_modulate(rgb.weight[:, :, 0, 0], rgb.affine(bws[:, block.num_conv]) * rgb.weight_gain,
                               backend=backend)                      # (B, 3, C)
        fuser = block.fuser
        emb = fuser.params(bws[:, 0], z_motion, Ts) if fuser is not None else None  # (B,E,2), (B,T,E)
        prepared.append((block, convs, mods, rgb_w, emb))

    # 2. Index and coordinates of every level (shared by the videos).
    index: List[Optional[torch.Tensor]] = []
    coords = []
    level = 0
    for block, *_ in prepared:
        if block.up:
            level += 1
            index.append(nearest_index(T, rects[level], rects[level - 1], device=dev))
        else:
            index.append(None)
        coords.append((level, level_coords(rects[level], cfg.block_size(block.res) * view.scale,
                                           device=dev)))

    # 3. Per video: the fused layer chain over all T frames.
    common = dict(precision=precision, backend=backend)
    frames = []
    for v in range(B):
        x = img = None
        for (block, convs, mods, rgb_w, emb), idx, (lv, (xs, ys)) in zip(prepared, index, coords):
            e_kw = {} if emb is None else dict(emb_A=emb[0][v], emb_b=emb[1][v], xs=xs, ys=ys)
            for k, (conv, Wm) in enumerate(zip(convs, mods)):
                W = Wm[v]                                             # (Cout, Cin)
                act = dict(bias=conv.bias, act=True, clamp=conv.conv_clamp, **common)
                if k == 0 and emb is not None and x is None:         # b4: embedding only
                    x = fmm_linear_autograd(W, None, **e_kw, **act)
                elif k == 0 and emb is not None:                     # split conv0
                    n_feat = W.shape[1] - E2
                    y = fmm_linear_autograd(W[:, :n_feat], x, **common)   # parent rows
                    x = fmm_linear_autograd(W[:, n_feat:], None, **e_kw, pre_add=y, pre_index=idx,
                                            **act)
                elif k == 0 and idx is not None:                     # upsampled, no embedding
                    x = fmm_linear_autograd(W, x, x_index=idx, **act)
                else:
                    x = fmm_linear_autograd(W, x, **act)
            img = fmm_linear_autograd(rgb_w[v], x, bias=block.torgb.bias, clamp=block.torgb.conv_clamp,
                                      post_add=img, post_index=idx if img is not None else None,
                                      **common)
        h = rects[-1][1] - rects[-1][0]
        w = rects[-1][3] - rects[-1][2]
        frames.append(img.view(T, h, w, 3).permute(0, 3, 1, 2))
    # torch.cat keeps the permuted (channels-last) layout of its inputs: return plain NCHW.
    return torch.cat(frames, dim=0).contiguous()                      # (B*T, 3, H, W)
