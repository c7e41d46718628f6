"""Executor: per video, prepare modulated weights once; per tile, run the fused layer chain.

Row layout inside a tile: (frame, row, col) row-major, channels last, so every layer is one GEMM
[rows, C_in] x [C_in, C_out] (DESIGN §2). The chain per tile, level by level:
    b4      x = act(e @ W_e^T + bias)                       (embedding generated in the prologue)
    b8..32  x = act(x @ W^T + bias) per conv
    b64+    y = x_parent @ W_h^T at the parent resolution   (split conv0, 4x fewer rows)
            x = act(e @ W_e^T + y[parent(row)] + bias)
    torgb   img = clamp(x @ W_rgb^T + b) + img_parent[parent(row)]
    final   uint8 = rint((img + 1) * 127.5) clipped
Backends: 'triton' (CUDA) runs the fused kernels; 'torch' runs the same ops in plain PyTorch and
is the CPU path. Both live in kernels/ beside each other.

Cost per frame does not depend on the length of the video (issue 8): a video's modulated weights
are built once and cached across `frames()` calls (one per segment in `digan render`), and the
embedding bias b(t) is computed per block of BIAS_BLOCK frames when those frames are rendered,
from the time grid's parameters (`engine.request.TimeGrid`), never for the whole grid.

"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple, Union

import torch

from kernels import fmm_linear, fmm_modulate, nearest_index
from digan.networks import Generator
from digan.view import level_coords, level_rects, num_levels

from .plan import Tile
from .request import TimeGrid

# Frames per embedding-bias computation. Blocks are aligned to absolute frame 0 and always this
# long (padded past the end of the grid), so every frame's b(t) comes out of the same GEMM shape
# at the same row whatever the segment, chunk or request length: frames do not depend on those.
BIAS_BLOCK = 64
COMPUTE_DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16}


@dataclass
class LayerWeights:
    W: torch.Tensor                  # (Cout, Cin) compute dtype; conv0 with embedding: features part
    bias: torch.Tensor               # (Cout,) fp32
    W_e: Optional[torch.Tensor] = None  # (Cout, 2E) embedding part (b4 conv1, upper conv0)


@dataclass
class BlockWeights:
    res: int
    up: bool
    layers: List[LayerWeights]
    rgb_W: torch.Tensor              # (3, C) compute dtype
    rgb_bias: torch.Tensor           # (3,) fp32
    A: Optional[torch.Tensor] = None  # (E, 2) fp32 embedding frequencies
    b: Optional["FrameBias"] = None   # b[f0:f1] -> (f1 - f0, E) fp32 embedding bias per frame

    def nbytes(self) -> int:
        ts = [lw.W for lw in self.layers] + [lw.W_e for lw in self.layers if lw.W_e is not None] + [self.rgb_W]
        return sum(t.numel() * t.element_size() for t in ts)


class FrameBias:
    """The embedding bias b(t) = beta + motion(t) of one block, for any frame range, computed when
    asked in blocks of BIAS_BLOCK frames aligned to frame 0 (O(BIAS_BLOCK) memory whatever the
    length of the grid). Keeps the blocks of the last range asked for: all tiles of a chunk ask
    for the same frames."""

    def __init__(self, fuser, w: torch.Tensor, z_motion: torch.Tensor, grid: TimeGrid):
        self.fuser, self.w, self.z_motion, self.grid = fuser, w, z_motion, grid  # w, z_motion (1, w_dim)
        self._blocks: Dict[int, torch.Tensor] = {}
        self._last: Optional[Tuple[int, int, torch.Tensor]] = None

    @torch.no_grad()
    def _block(self, j: int) -> torch.Tensor:
        Ts = self.grid.slice(j * BIAS_BLOCK, (j + 1) * BIAS_BLOCK, device=self.w.device)  # (BIAS_BLOCK,)
        return self.fuser.params(self.w, self.z_motion, Ts[None])[1][0]                   # (BIAS_BLOCK, E)

    def __len__(self) -> int:
        return len(self.grid)

    def __getitem__(self, frames: slice) -> torch.Tensor:
        if not isinstance(frames, slice) or frames.step not in (None, 1):
            raise TypeError("FrameBias takes a frame range, b[f0:f1]")
        f0, f1, _ = frames.indices(len(self.grid))
        if self._last is not None and self._last[:2] == (f0, f1):
            return self._last[2]
        if f1 <= f0:
            return self._block(0)[:0]
        js = range(f0 // BIAS_BLOCK, (f1 - 1) // BIAS_BLOCK + 1)
        self._blocks = {j: self._blocks[j] if j in self._blocks else self._block(j) for j in js}
        b = torch.cat([self._blocks[j] for j in js])[f0 - js[0] * BIAS_BLOCK:f1 - js[0] * BIAS_BLOCK].contiguous()
        self._last = (f0, f1, b)
        return b


@torch.no_grad()
def prepare_video(G: Generator, ws: torch.Tensor, z_motion: torch.Tensor, Ts: Union[TimeGrid, torch.Tensor],
                  precision: str, backend: str) -> List[BlockWeights]:
    """ws (num_ws, w_dim), z_motion (w_dim,), Ts a TimeGrid (or (T,) times) -> modulated weights of
    every layer, once per video; the embedding bias per frame is computed as frames are rendered."""
    dtype = COMPUTE_DTYPES[precision]
    grid = Ts if isinstance(Ts, TimeGrid) else TimeGrid(values=tuple(float(t) for t in Ts.reshape(-1).tolist()))
    syn = G.synthesis
    out = []
    for block, bws in zip(syn.blocks(), syn.block_ws(ws[None])):
        bws = bws[0]                                                    # (num_conv + 1, w_dim)
        layers = []
        for k, conv in enumerate(block.conv_layers()):
            W = fmm_modulate(conv.weight[:, :, 0, 0], conv.affine(bws[k:k + 1]), conv.rank,
                             out_dtype=dtype, backend=backend)[0]  # (Cout, Cin)
            bias = conv.bias.float()
            if k == 0 and block.fuser is not None:
                n_feat = W.shape[1] - G.cfg.emb_channels
                layers.append(LayerWeights(W[:, :n_feat].contiguous(), bias, W[:, n_feat:].contiguous()))
            else:
                layers.append(LayerWeights(W.contiguous(), bias))
        rgb_W = block.torgb.modulated_weight(bws[block.num_conv:block.num_conv + 1])[0].to(dtype).contiguous()
        bw = BlockWeights(block.res, block.up, layers, rgb_W, block.torgb.bias.float())
        if block.fuser is not None:
            A, _ = block.fuser.params(bws[0:1], z_motion[None], grid.slice(0, 1, device=ws.device)[None])
            bw.A, bw.b = A[0].contiguous(), FrameBias(block.fuser, bws[0:1], z_motion[None], grid)
        out.append(bw)
    return out


@torch.no_grad()
def render_tile(G: Generator, blocks: List[BlockWeights], tile: Tile, scale: int, precision: str, backend: str,
                device: torch.device, out: str = "uint8") -> torch.Tensor:
    """-> uint8 (F, h, w, 3) (out='uint8') or fp32 (F, h, w, 3) unclipped (out='float')."""
    cfg = G.cfg
    dtype = COMPUTE_DTYPES[precision]
    f0, f1 = tile.frames
    F = f1 - f0
    rects = level_rects(tile.rect, num_levels(cfg.img_resolution, cfg.input_resolution))
    clamp = rgb_clamp = cfg.conv_clamp  # the official act_clamp = conv_clamp * (call gain = 1)
    common = dict(precision=precision, backend=backend)
    x = img = None
    level = 0
    index = None
    n_blocks = len(blocks)
    for bi, bw in enumerate(blocks):
        if bw.up:
            level += 1
            index = nearest_index(F, rects[level], rects[level - 1], device=device)
        else:
            index = None
        rect = rects[level]
        emb = {}
        if bw.A is not None:
            xs, ys = level_coords(rect, cfg.block_size(bw.res) * scale, device=device)
            emb = dict(emb_A=bw.A, emb_b=bw.b[f0:f1], xs=xs, ys=ys)
        for lw in bw.layers:
            if lw.W_e is not None and x is None:                 # b4: embedding only
                x = fmm_linear(lw.W_e, None, bias=lw.bias, act=True, clamp=clamp, out_dtype=dtype, **emb, **common)
            elif lw.W_e is not None:                              # split conv0
                y = fmm_linear(lw.W, x, out_dtype=torch.float32, **common)
                x = fmm_linear(lw.W_e, None, pre_add=y, pre_index=index, bias=lw.bias, act=True, clamp=clamp,
                               out_dtype=dtype, **emb, **common)
                del y
            else:
                x = fmm_linear(lw.W, x, bias=lw.bias, act=True, clamp=clamp, out_dtype=dtype, **common)
        last = bi == n_blocks - 1
        to_u8 = last and out == "uint8"
        img = fmm_linear(bw.rgb_W, x, bias=bw.rgb_bias, clamp=rgb_clamp, post_add=img,
                         post_index=index if img is not None else None,
                         out_dtype=None if to_u8 else torch.float32, out_uint8=to_u8, **common)
    h, w = rects[-1][1] - rects[-1][0], rects[-1][3] - rects[-1][2]
    return img.view(F, h, w, 3)
