"""The generator's layer chain, described once: the program every fast path iterates over.

`generator_program(cfg)` lists the synthesis network's modulated 1x1 layers in execution order, as
the render engine and the training fast path run them (DESIGN §1-2), from the config alone (no
weights; a meta-device Generator works). Kinds:

    'emb'    b4's conv1: input = the coordinate embedding only          rows at its level
    'split'  conv0 of a block with an embedding above input_resolution: W'[up(h), e] =
             up(W'_h h) + W'_e e, the features part at the parent level, the embedding part at
             the block's level, the two added by the parent index
    'conv'   every other conv (conv0 at the base level, conv1, extra convs; also an upsampled
             conv0 without embedding, reading its input by the parent index, should a config
             ever give one)
    'torgb'  rgb = W_rgb x + b, added to the (upsampled) skip image

From it: the FLOP count (engine/flops.py), the planner's memory estimate (engine/plan.py), the
kernel benchmark's shapes (bench/bench_kernels.py), and, with the kernel ops passed in (this
package does not import kernels/), the weight preparation (`modulate_layers`) and the chain
itself (`run_chain`) of the renderer (engine/executor.py) and of digan/fast_synthesis.py.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Collection, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from .config import GeneratorConfig
from .view import Rect, level_coords, num_levels

__all__ = ["KINDS", "Layer", "Program", "LayerWeights", "generator_program", "layer_module",
           "layer_fuser", "modulate_layers", "split_weight", "layer_weights", "level_index", "level_xy",
           "linear_calls", "level_groups", "run_chain"]

KINDS = ("emb", "split", "conv", "torgb")


@dataclass(frozen=True)
class Layer:
    kind: str        # one of KINDS
    level: int       # pixel level of the layer's output rows (0: every block <= input_resolution)
    res: int         # nominal resolution of its block (4, 8, ..., img_resolution)
    side: int        # pixels per axis its block really runs at, at scale 1 (cfg.block_size(res))
    c_in: int        # columns of its modulated weight W' (features then embedding)
    c_out: int       # rows of W' (img_channels for 'torgb')
    emb: int         # embedding columns at the end of W' (2E for 'emb' / 'split', else 0)
    w: int           # index into ws (num_ws) of the w that modulates it
    up: bool         # reads the parent level by index: features ('split', upsampled 'conv') or
                     # the skip image ('torgb' of an upsampling block)
    block: int       # index of its block in SynthesisNetwork.blocks()
    conv: int        # index in that block's conv_layers(); -1 for 'torgb'

    @property
    def feat(self) -> int:
        """Feature (non-embedding) input channels."""
        return self.c_in - self.emb

    @property
    def calls(self) -> int:
        """Linear-op calls (GEMMs) the layer takes: two for the split conv0."""
        return 2 if self.kind == "split" else 1


@dataclass(frozen=True)
class Program:
    layers: Tuple[Layer, ...]
    num_levels: int

    def level_channels(self) -> List[int]:
        """Widest activation (conv output) per level."""
        chans = [0] * self.num_levels
        for layer in self.layers:
            if layer.kind != "torgb":
                chans[layer.level] = max(chans[layer.level], layer.c_out)
        return chans

    def emb_levels(self) -> Dict[int, int]:
        """level -> grid side at scale 1, for the levels whose layers take the embedding."""
        return {layer.level: layer.side for layer in self.layers if layer.emb}


def generator_program(cfg: GeneratorConfig) -> Program:
    """The layer chain of a generator with config `cfg`, in execution order."""
    if not isinstance(cfg, GeneratorConfig):
        raise ValueError(f"generator_program needs a GeneratorConfig, got {type(cfg).__name__}")
    layers: List[Layer] = []
    level = w = 0
    prev = 0                                   # channels entering the block
    E2 = cfg.emb_channels
    for bi, res in enumerate(cfg.block_resolutions):
        C, up, side = cfg.channels(res), res > cfg.input_resolution, cfg.block_size(res)
        if up:
            level += 1
        common = dict(level=level, res=res, side=side, block=bi)
        for k in range(cfg.num_conv(res)):
            if res == 4:                       # b4 has conv1 only, on the embedding
                kind, c_in, emb, up_k = "emb", E2, E2, False
            elif k == 0 and cfg.has_embedding(res):
                kind, c_in, emb, up_k = "split", prev + E2, E2, up
            else:
                kind, c_in, emb, up_k = "conv", prev if k == 0 else C, 0, up and k == 0
            layers.append(Layer(kind=kind, c_in=c_in, c_out=C, emb=emb, w=w, up=up_k, conv=k, **common))
            w += 1
        # ToRGB uses the next w (the next block's first): StyleGAN2-ADA's block_ws.
        layers.append(Layer(kind="torgb", c_in=C, c_out=cfg.img_channels, emb=0, w=w, up=up, conv=-1,
                            **common))
        prev = C
    return Program(tuple(layers), num_levels(cfg.img_resolution, cfg.input_resolution))


def layer_module(syn: nn.Module, layer: Layer) -> nn.Module:
    """The SynthesisLayer / ToRGBLayer of `layer` in a SynthesisNetwork."""
    block = syn.blocks()[layer.block]
    return block.torgb if layer.kind == "torgb" else block.conv_layers()[layer.conv]


def layer_fuser(syn: nn.Module, layer: Layer) -> nn.Module:
    """The CoordFuser producing `layer`'s embedding (modulated by ws[:, layer.w])."""
    if not layer.emb:
        raise ValueError(f"layer {layer.kind} of b{layer.res} takes no embedding")
    return syn.blocks()[layer.block].fuser


def modulate_layers(syn: nn.Module, prog: Program, ws: torch.Tensor, modulate: Callable,
                    rgb_modulate: Callable) -> List[torch.Tensor]:
    """ws (B, num_ws, w_dim) -> W' of every layer, batched over the B videos: (B, c_out, c_in).

    modulate(weight (c_out, c_in), styles (B, (c_in + c_out) r), rank) -> (B, c_out, c_in) and
    rgb_modulate(weight (3, C), styles (B, C)) -> (B, 3, C) are the caller's ops (e.g.
    kernels.fmm_modulate / torgb_modulate with their dtype and backend bound)."""
    if ws.ndim != 3 or ws.shape[1] != syn.num_ws:
        raise ValueError(f"ws must have shape (B, {syn.num_ws}, w_dim), got {tuple(ws.shape)}")
    out = []
    for layer in prog.layers:
        m = layer_module(syn, layer)
        w = ws[:, layer.w]                                              # (B, w_dim)
        if layer.kind == "torgb":
            out.append(rgb_modulate(m.weight[:, :, 0, 0], m.affine(w) * m.weight_gain))
        else:
            out.append(modulate(m.weight[:, :, 0, 0], m.affine(w), m.rank))
    return out


def split_weight(layer: Layer, W: torch.Tensor) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """W' (c_out, c_in) -> (features part (c_out, feat) or None, embedding part (c_out, emb) or None)."""
    if not layer.emb:
        return W, None
    if not layer.feat:
        return None, W
    return W[:, :layer.feat], W[:, layer.feat:]


@dataclass
class LayerWeights:
    """One video's operands of one layer, as the linear op takes them."""
    layer: Layer
    W: Optional[torch.Tensor]        # (c_out, feat): features part; None for 'emb'
    W_e: Optional[torch.Tensor]      # (c_out, emb): embedding part; None without embedding
    bias: torch.Tensor               # (c_out,)
    clamp: Optional[float]           # the layer's conv_clamp


def layer_weights(syn: nn.Module, prog: Program, mods: Sequence[torch.Tensor],
                  contiguous: bool = False) -> List[LayerWeights]:
    """One video's operands from its W' per layer (c_out, c_in) (modulate_layers' output, one
    video): the weights split into features and embedding parts (copied into contiguous tensors
    with `contiguous`), each module's fp32 bias and clamp."""
    out = []
    for layer, W in zip(prog.layers, mods):
        parts = split_weight(layer, W)
        if contiguous:
            parts = tuple(None if t is None else t.contiguous() for t in parts)
        m = layer_module(syn, layer)
        out.append(LayerWeights(layer, *parts, m.bias.float(), m.conv_clamp))
    return out


def level_index(prog: Program, frames: int, rects: Sequence[Rect], index_fn: Callable,
                device=None) -> List[Optional[torch.Tensor]]:
    """Per level: the parent row of each of its rows (F * h * w,) for levels read by index from
    their parent (None at level 0). index_fn: kernels.nearest_index."""
    need = {layer.level for layer in prog.layers if layer.up}
    return [index_fn(frames, rects[lv], rects[lv - 1], device=device) if lv in need else None
            for lv in range(prog.num_levels)]


def level_xy(prog: Program, rects: Sequence[Rect], scale: int,
             device=None) -> List[Optional[Tuple[torch.Tensor, torch.Tensor]]]:
    """Per level: the coordinates (xs (w,), ys (h,)) of its grid at `scale`, for levels whose
    layers take the embedding (None elsewhere)."""
    sides = prog.emb_levels()
    return [level_coords(rects[lv], sides[lv] * scale, device=device) if lv in sides else None
            for lv in range(prog.num_levels)]


def linear_calls(prog: Program) -> int:
    """Linear-op calls one pass of the chain makes (run_chain)."""
    return sum(layer.calls for layer in prog.layers)


def level_groups(layers: Sequence[Layer]) -> Dict[int, int]:
    """The blocks that run as one fused level (kernels.fmm_level): those whose layers are a split
    conv0, convs and one ToRGB, nothing else. -> {index of the split layer: index of its ToRGB}."""
    out = {}
    for i, layer in enumerate(layers):
        if layer.kind != "split":
            continue
        j = i + 1
        while j < len(layers) and layers[j].block == layer.block and layers[j].kind == "conv":
            j += 1
        if j < len(layers) and layers[j].block == layer.block and layers[j].kind == "torgb" and (
                j + 1 == len(layers) or layers[j + 1].block != layer.block):
            out[i] = j
    return out


def run_chain(weights: Sequence[LayerWeights], linear: Callable, index: Sequence[Optional[torch.Tensor]],
              emb: Mapping[int, Mapping[str, Any]], act_kw: Optional[Dict[str, Any]] = None,
              feat_kw: Optional[Dict[str, Any]] = None, rgb_kw: Optional[Dict[str, Any]] = None,
              last_rgb_kw: Optional[Dict[str, Any]] = None, level: Optional[Callable] = None,
              linear_rgb: Optional[Callable] = None, level_at: Optional[Collection[int]] = None) -> torch.Tensor:
    """The layer chain over the rows of one tile (rows (f, i, j) row-major, channels last).

    weights: one LayerWeights per program layer, in program order. linear(W, x, **kw): the fused
    linear op (kernels.fmm_linear or fmm_linear_autograd with precision / backend bound).
    index[level]: parent index of the level's rows (level_index); emb[i]: the embedding keywords
    (emb_A, emb_b, xs, ys) of layer i. Extra keywords: act_kw for the activated convs' outputs,
    feat_kw for split conv0's features part, rgb_kw for ToRGB (last_rgb_kw for the last one).
    Optional fused ops (the same results, fewer passes over the activations):
    level(group, emb=, pre_add=, pre_index=, img=, img_index=, act_out=, **ToRGB keywords): one op
    for a level from conv0's embedding call on (kernels.fmm_level), for the level groups
    (level_groups) whose split layer's index is in level_at (default: all of them); its split
    conv0's parent part stays a linear call. Below the top level it is called with act_out=True
    and returns (image, its last activation), which the next level reads.
    linear_rgb(W, x, layer keywords, ToRGB LayerWeights, img, img_index, ToRGB keywords) -> (x, img):
    a layer and the ToRGB that follows it in one op (kernels.fmm_linear_torgb).
    -> the image rows (M, img_channels) of the final level."""
    act_kw, feat_kw, rgb_kw = act_kw or {}, feat_kw or {}, rgb_kw or {}
    last_rgb_kw = rgb_kw if last_rgb_kw is None else last_rgb_kw
    x = img = None
    last = len(weights) - 1
    groups = level_groups([lw.layer for lw in weights]) if level is not None else {}
    if level_at is not None:
        groups = {i: j for i, j in groups.items() if i in level_at}
    folded = -1                                                           # a ToRGB already computed
    done = -1                                                             # the last layer a level op ran
    for i, lw in enumerate(weights):
        layer = lw.layer
        if i <= done:
            continue
        idx = index[layer.level] if layer.up else None
        if i in groups:
            j = groups[i]
            y = linear(lw.W, x, **feat_kw)                                # parent rows
            common = dict(emb=emb[i], pre_add=y, pre_index=idx, img=img, img_index=idx if img is not None else None)
            if j == last:
                return level(weights[i:], act_out=False, **common, **last_rgb_kw)
            img, x = level(weights[i:j + 1], act_out=True, **common, **rgb_kw)
            y = common = None
            done = j
            continue
        if layer.kind == "torgb":
            if i != folded:
                img = linear(lw.W, x, bias=lw.bias, clamp=lw.clamp, post_add=img,
                             post_index=idx if img is not None else None,
                             **(last_rgb_kw if i == last else rgb_kw))
            continue
        act = dict(bias=lw.bias, act=True, clamp=lw.clamp, **act_kw)
        if layer.kind == "emb":                                           # b4: embedding only
            W, src, kw = lw.W_e, None, dict(emb[i], **act)
        elif layer.kind == "split":                                       # split conv0
            y = linear(lw.W, x, **feat_kw)                                # parent rows
            W, src, kw = lw.W_e, None, dict(emb[i], pre_add=y, pre_index=idx, **act)
        else:
            W, src, kw = lw.W, x, dict(x_index=idx, **act)
        nxt = weights[i + 1] if i < last else None
        if linear_rgb is not None and nxt is not None and nxt.layer.kind == "torgb":
            r_idx = index[nxt.layer.level] if nxt.layer.up and img is not None else None
            x, img = linear_rgb(W, src, kw, nxt, img, r_idx, last_rgb_kw if i + 1 == last else rgb_kw)
            folded = i + 1
        else:
            x = linear(W, src, **kw)
        kw = y = None                                                     # free split conv0's part
    if img is None:
        raise ValueError("the chain has no ToRGB layer")
    return img
