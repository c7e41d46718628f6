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
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, List, Optional, Sequence, Tuple

import torch

from kernels._common import interpreter_enabled
from kernels import fmm_linear, fmm_modulate, nearest_index
from digan.networks import Generator, SynthesisBlock
from digan.view import level_coords, level_rects, num_levels

from .plan import FrameChunk, Plan, Tile, make_plan
from .request import RenderRequest

CPU_TILE_BYTES = 128 << 20
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
    b: Optional[torch.Tensor] = None  # (T, E) fp32 embedding bias per frame


def pick_device(request: RenderRequest) -> torch.device:
    if request.device is not None:
        return torch.device(request.device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pick_backend(request: RenderRequest, device: torch.device) -> str:
    if request.backend == "auto":
        return "triton" if device.type == "cuda" else "torch"
    if request.backend == "triton" and device.type != "cuda" and not interpreter_enabled():
        raise ValueError("backend 'triton' needs a CUDA device (or TRITON_INTERPRET=1 for testing)")
    return request.backend


@torch.no_grad()
def prepare_video(G: Generator, ws: torch.Tensor, z_motion: torch.Tensor, Ts: torch.Tensor,
                  precision: str, backend: str) -> List[BlockWeights]:
    """ws (num_ws, w_dim), z_motion (w_dim,), Ts (T,) -> modulated weights of every layer, once."""
    dtype = COMPUTE_DTYPES[precision]
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
            A, b = block.fuser.params(bws[0:1], z_motion[None], Ts[None])
            bw.A, bw.b = A[0].contiguous(), b[0].contiguous()
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


class Renderer:
    """Renders a request with a generator: `frames()` yields (video, frame, uint8 (H, W, 3))."""

    def __init__(self, G: Generator, request: RenderRequest, plan: Optional[Plan] = None):
        self.G, self.request = G, request
        self.device = pick_device(request)
        self.backend = pick_backend(request, self.device)
        self.Ts = request.time_grid()
        act_bytes = 2 if request.precision == "bf16" else 4
        # CPU: tiles of <= ~128 MiB working set (one 128x128 frame of the official model) keep
        # each layer's activations near the cache: 9.1 fps vs 6.1 with 16-frame tiles (fp32,
        # 128x128, 2 cores). Small models get proportionally more rows. The bits are the same.
        cap = CPU_TILE_BYTES if self.device.type == "cpu" else None
        self.plan = plan or make_plan(G.cfg, request.view, len(self.Ts), request.memory_budget, act_bytes=act_bytes,
                                      max_tile_bytes=cap)
        self.H, self.W = request.view.output_size(G.cfg.img_resolution)
        self.G = G.to(self.device).eval()

    @property
    def num_videos(self) -> int:
        return len(self.request.seeds)

    @torch.no_grad()
    def video_weights(self, k: int) -> List[BlockWeights]:
        cfg = self.G.cfg
        z, zm, c = self.request.codes(cfg.z_dim, cfg.w_dim, cfg.c_dim)
        z, zm = z[k:k + 1].to(self.device), zm[k:k + 1].to(self.device)
        c = c[k:k + 1].to(self.device) if c is not None else None
        ws = self.G.mapping(z, c, truncation_psi=self.request.psi)[0]
        return prepare_video(self.G, ws, zm[0], self.Ts.to(self.device), self.request.precision, self.backend)

    def render_chunk(self, blocks: List[BlockWeights], chunk: FrameChunk, out: str = "uint8",
                     buffer: Optional[torch.Tensor] = None) -> torch.Tensor:
        """All tiles of a frame chunk assembled: (F, H, W, 3) uint8 (or fp32 for out='float')."""
        f0, f1 = chunk.frames
        top, _, left, _ = self.request.view.final_rect(self.G.cfg.img_resolution)
        if buffer is None:
            dtype = torch.uint8 if out == "uint8" else torch.float32
            buffer = torch.empty((f1 - f0, self.H, self.W, 3), dtype=dtype, device=self.device)
        for tile in chunk.tiles:
            r0, r1, c0, c1 = tile.rect
            buffer[:, r0 - top:r1 - top, c0 - left:c1 - left] = render_tile(
                self.G, blocks, tile, self.request.view.scale, self.request.precision, self.backend, self.device, out)
        return buffer

    def frames(self, videos: Optional[Sequence[int]] = None, start: int = 0,
               end: Optional[int] = None) -> Iterator[Tuple[int, int, torch.Tensor]]:
        """Yields (video index, frame index, uint8 (H, W, 3) CPU tensor) for frames [start, end)
        of each video, in order.

        On CUDA, chunk k+1 is computed while chunk k is copied to pinned host memory on a side
        stream (double-buffered), so the GPU never waits for the host copy."""
        videos = range(self.num_videos) if videos is None else videos
        if self.device.type != "cuda":
            for k in videos:
                blocks = self.video_weights(k)
                for chunk in self.plan.chunks(start, end):
                    buf = self.render_chunk(blocks, chunk)
                    for i in range(buf.shape[0]):
                        yield k, chunk.frames[0] + i, buf[i]
            return
        yield from self._frames_cuda(videos, start, end)

    def _frames_cuda(self, videos, start, end) -> Iterator[Tuple[int, int, torch.Tensor]]:
        copy_stream = torch.cuda.Stream(self.device)
        n = self.plan.frames_per_chunk
        host = [torch.empty((n, self.H, self.W, 3), dtype=torch.uint8, pin_memory=True) for _ in range(2)]
        dev = [torch.empty((n, self.H, self.W, 3), dtype=torch.uint8, device=self.device) for _ in range(2)]
        events = [None, None]
        pending = None  # (slot, video, chunk) whose copy is in flight
        slot = 0
        for k in videos:
            blocks = self.video_weights(k)
            for chunk in self.plan.chunks(start, end):
                F = chunk.frames[1] - chunk.frames[0]
                if events[slot] is not None:
                    events[slot].synchronize()        # host[slot] was consumed before reuse below
                self.render_chunk(blocks, chunk, buffer=dev[slot][:F])
                done = torch.cuda.Event()
                done.record(torch.cuda.current_stream(self.device))
                with torch.cuda.stream(copy_stream):
                    copy_stream.wait_event(done)
                    host[slot][:F].copy_(dev[slot][:F], non_blocking=True)
                    ev = torch.cuda.Event()
                    ev.record(copy_stream)
                events[slot] = ev
                if pending is not None:
                    yield from self._drain(host, events, pending)
                pending = (slot, k, chunk)
                slot ^= 1
        if pending is not None:
            yield from self._drain(host, events, pending)

    @staticmethod
    def _drain(host, events, pending):
        slot, k, chunk = pending
        events[slot].synchronize()
        F = chunk.frames[1] - chunk.frames[0]
        for i in range(F):  # cloned: the pinned slot is refilled two chunks later
            yield k, chunk.frames[0] + i, host[slot][i].clone()

    @torch.no_grad()
    def render_float(self) -> torch.Tensor:
        """All videos, fp32 unclipped, (B*T, 3, H, W) video-major: the layout of G.synthesis."""
        out = []
        for k in range(self.num_videos):
            blocks = self.video_weights(k)
            for chunk in self.plan.chunks():
                out.append(self.render_chunk(blocks, chunk, out="float").permute(0, 3, 1, 2).cpu())
        return torch.cat(out)
