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

bf16 on a CPU without native bf16 matmul (AVX2: torch's bf16 matmul ran 1.3 GFLOP/s against 94
fp32) would be slower than fp32, so the Renderer warns once and renders fp32 there
(`Renderer.precision` says what it really uses); `cpu_bf16_support` decides, lazily.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import os
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch

from kernels._common import interpreter_enabled
from kernels import fmm_linear, fmm_modulate, nearest_index
from digan.networks import Generator, SynthesisBlock
from digan.view import level_coords, level_rects, num_levels

from .plan import FrameChunk, Plan, Tile, make_plan
from .request import RenderRequest, TimeGrid

CPU_TILE_BYTES = 128 << 20
# Frames per embedding-bias computation. Blocks are aligned to absolute frame 0 and always this
# long (padded past the end of the grid), so every frame's b(t) comes out of the same GEMM shape
# at the same row whatever the segment, chunk or request length: frames do not depend on those.
BIAS_BLOCK = 64
# Per-video weights kept between frames() calls (grid renders cycle through all their videos per
# chunk); at least one video is always kept. digan-128 needs ~20 MiB per video.
WEIGHT_CACHE_BYTES = 512 << 20
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


# ---- bf16 on CPUs ----------------------------------------------------------------------------

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


def _tensors(module: torch.nn.Module):
    yield from module.parameters()
    yield from module.buffers()


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


class Renderer:
    """Renders a request with a generator: `frames()` yields (video, frame, uint8 (H, W, 3)).

    The caller's G is never modified: not moved (a G on another device is copied to the render
    device), not switched to eval mode (the mapping runs without its training-mode w_avg update).
    Codes and labels go to the device once per request; times are made on the device per bias
    block (FrameBias)."""

    def __init__(self, G: Generator, request: RenderRequest, plan: Optional[Plan] = None):
        self.G, self.request = G, request
        self.device = pick_device(request)
        self.backend = pick_backend(request, self.device)
        self.precision = resolve_precision(request.precision, self.device)  # what really runs
        self.Ts = request.grid()                 # TimeGrid: parameters, O(1) in the frame count
        self._weights: "OrderedDict[int, List[BlockWeights]]" = OrderedDict()
        act_bytes = 2 if self.precision == "bf16" else 4
        # CPU: tiles of <= ~128 MiB working set (one 128x128 frame of the official model) keep
        # each layer's activations near the cache: 9.1 fps vs 6.1 with 16-frame tiles (fp32,
        # 128x128, 2 cores). Small models get proportionally more rows. The bits are the same.
        cap = CPU_TILE_BYTES if self.device.type == "cpu" else None
        self.plan = plan or make_plan(G.cfg, request.view, len(self.Ts), request.memory_budget, act_bytes=act_bytes,
                                      max_tile_bytes=cap)
        self.H, self.W = request.view.output_size(G.cfg.img_resolution)
        self.G = G if all(t.device == self.device for t in _tensors(G)) else copy.deepcopy(G).to(self.device)
        cfg = G.cfg
        z, zm, c = request.codes(cfg.z_dim, cfg.w_dim, cfg.c_dim)   # (B, z_dim), (B, w_dim), (B, c_dim)
        self._codes = (z.to(self.device), zm.to(self.device), None if c is None else c.to(self.device))

    @property
    def num_videos(self) -> int:
        return len(self.request.seeds)

    def content_hash(self, model_id: str) -> str:
        """The request's content hash with the precision really used (bf16 that fell back to fp32
        renders the frames of an fp32 request)."""
        return dataclasses.replace(self.request, precision=self.precision).content_hash(model_id)

    def video_weights(self, k: int) -> List[BlockWeights]:
        """Video k's prepared weights, built once and kept (up to WEIGHT_CACHE_BYTES of videos)."""
        if k in self._weights:
            self._weights.move_to_end(k)
            return self._weights[k]
        blocks = self.build_video_weights(k)
        self._weights[k] = blocks
        size = lambda bl: sum(b.nbytes() for b in bl)  # noqa: E731
        while len(self._weights) > 1 and sum(size(v) for v in self._weights.values()) > WEIGHT_CACHE_BYTES:
            self._weights.popitem(last=False)
        return blocks

    @torch.no_grad()
    def build_video_weights(self, k: int) -> List[BlockWeights]:
        z, zm, c = self._codes
        z, zm = z[k:k + 1], zm[k:k + 1]
        c = c[k:k + 1] if c is not None else None
        ws = self.G.mapping(z, c, truncation_psi=self.request.psi, skip_w_avg_update=True)[0]
        return prepare_video(self.G, ws, zm[0], self.Ts, self.precision, self.backend)

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
                self.G, blocks, tile, self.request.view.scale, self.precision, self.backend, self.device, out)
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
