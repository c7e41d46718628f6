"""DIGAN generator and discriminator in plain PyTorch: the reference math of the project.

Module structure, parameter names and buffers match the official implementation (StyleGAN2-ADA
code base with INR-GAN's coordinate generator and DIGAN's motion code), so an official state dict
loads with strict=True and gives the same outputs (../shared/DESIGN.md §1). The computation is
written the way the official code runs it — NCHW tensors, one modulated weight per frame,
upsampled features concatenated with the embedding — because this module is also the "eager
reference" our engine is benchmarked against. Fast paths live in kernels/ and engine/.

Shapes: B videos, T frames per video, C channels, E = emb_size, r = FMM rank.
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .config import DiscriminatorConfig, GeneratorConfig
from .view import View, level_coords, level_rects, num_levels, upsample_index

SQRT2 = math.sqrt(2.0)


# ---- StyleGAN2-ADA building blocks ------------------------------------------------------------

def lrelu_gain(x: torch.Tensor, gain: float = SQRT2) -> torch.Tensor:
    return F.leaky_relu(x, 0.2) * gain


def bias_act(x: torch.Tensor, b: Optional[torch.Tensor], act: str = "linear", gain: Optional[float] = None,
             clamp: Optional[float] = None, dim: int = 1) -> torch.Tensor:
    """StyleGAN2-ADA bias_act (reference path): x + b, activation, gain, clamp."""
    if b is not None:
        shape = [1] * x.ndim
        shape[dim] = -1
        x = x + b.reshape(shape)
    if act == "lrelu":
        x = F.leaky_relu(x, 0.2)
        gain = SQRT2 if gain is None else gain
    elif act != "linear":
        raise ValueError(f"unknown activation {act!r}")
    gain = 1.0 if gain is None else gain
    if gain != 1:
        x = x * gain
    if clamp is not None and clamp >= 0:
        x = x.clamp(-clamp, clamp)
    return x


def setup_filter(f: Sequence[float] = (1, 3, 3, 1)) -> torch.Tensor:
    t = torch.as_tensor(f, dtype=torch.float32)
    t = t.ger(t)
    return t / t.sum()


class FullyConnectedLayer(nn.Module):
    def __init__(self, in_features: int, out_features: int, bias: bool = True, activation: str = "linear",
                 lr_multiplier: float = 1.0, bias_init: float = 0.0):
        super().__init__()
        self.activation = activation
        self.weight = nn.Parameter(torch.randn([out_features, in_features]) / lr_multiplier)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init))) if bias else None
        self.weight_gain = lr_multiplier / np.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.to(x.dtype) * self.weight_gain
        b = self.bias
        if b is not None:
            b = b.to(x.dtype)
            if self.bias_gain != 1:
                b = b * self.bias_gain
        if self.activation == "linear" and b is not None:
            return torch.addmm(b.unsqueeze(0), x, w.t())
        x = x.matmul(w.t())
        return bias_act(x, b, act=self.activation)


def normalize_2nd_moment(x: torch.Tensor, dim: int = 1, eps: float = 1e-8) -> torch.Tensor:
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


class MappingNetwork(nn.Module):
    """z (B, z_dim), c (B, c_dim) -> ws (B, num_ws, w_dim); lr_mult 0.01, lrelu fc layers."""

    def __init__(self, z_dim: int, c_dim: int, w_dim: int, num_ws: Optional[int], num_layers: int = 8,
                 lr_multiplier: float = 0.01, w_avg_beta: Optional[float] = 0.995):
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim, self.num_ws = z_dim, c_dim, w_dim, num_ws
        self.num_layers, self.w_avg_beta = num_layers, w_avg_beta
        embed_features = w_dim if c_dim > 0 else 0
        features = [z_dim + embed_features] + [w_dim] * num_layers
        if c_dim > 0:
            self.embed = FullyConnectedLayer(c_dim, embed_features)
        for idx in range(num_layers):
            setattr(self, f"fc{idx}", FullyConnectedLayer(features[idx], features[idx + 1], activation="lrelu",
                                                          lr_multiplier=lr_multiplier))
        if num_ws is not None and w_avg_beta is not None:
            self.register_buffer("w_avg", torch.zeros([w_dim]))

    def forward(self, z: Optional[torch.Tensor], c: Optional[torch.Tensor], truncation_psi: float = 1.0,
                truncation_cutoff: Optional[int] = None, skip_w_avg_update: bool = False) -> torch.Tensor:
        x = None
        if self.z_dim > 0:
            if z is None or z.ndim != 2 or z.shape[1] != self.z_dim:
                raise ValueError(f"z must have shape (B, {self.z_dim}), got {None if z is None else tuple(z.shape)}")
            x = normalize_2nd_moment(z.to(torch.float32))
        if self.c_dim > 0:
            if c is None or c.ndim != 2 or c.shape[1] != self.c_dim:
                raise ValueError(f"c must have shape (B, {self.c_dim}) (one-hot labels), got "
                                 f"{None if c is None else tuple(c.shape)}")
            y = normalize_2nd_moment(self.embed(c.to(torch.float32)))
            x = torch.cat([x, y], dim=1) if x is not None else y
        for idx in range(self.num_layers):
            x = getattr(self, f"fc{idx}")(x)
        if self.w_avg_beta is not None and self.training and not skip_w_avg_update and self.num_ws is not None:
            self.w_avg.copy_(x.detach().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))
        if self.num_ws is None:
            return x
        x = x.unsqueeze(1).repeat([1, self.num_ws, 1])
        if truncation_psi != 1:
            if truncation_cutoff is None:
                x = self.w_avg.lerp(x, truncation_psi)
            else:
                x[:, :truncation_cutoff] = self.w_avg.lerp(x[:, :truncation_cutoff], truncation_psi)
        return x


# ---- generator ------------------------------------------------------------------------------

class CoordFuser(nn.Module):
    """Fourier coordinate embedding with DIGAN's motion code in the bias.

    A = sqrt(10) * xyaffine(w)[:2E] viewed (E, 2); b(t) = xyaffine(w)[2E:] + motion(w, z_motion, t),
    motion = mlp(leaky_relu(affine([w, z_motion]) * t * sigma, 0.01)); e = [sin(A p + b), cos(A p + b)].
    """

    def __init__(self, cfg: GeneratorConfig):
        super().__init__()
        E, w_dim = cfg.emb_size, cfg.w_dim
        self.emb_size, self.motion_sigma, self.fourier_scale = E, cfg.motion_sigma, cfg.fourier_scale
        self.xyaffine = FullyConnectedLayer(w_dim, 3 * E, bias_init=0)
        self.affine = FullyConnectedLayer(2 * w_dim, E, bias_init=0)
        self.motion_mlp = nn.Sequential(FullyConnectedLayer(E, E, activation="lrelu"), FullyConnectedLayer(E, E))

    def params(self, w: torch.Tensor, z_motion: torch.Tensor, Ts: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """w (B, w_dim), z_motion (B, w_dim), Ts (B, T) -> A (B, E, 2), b (B, T, E)."""
        B, E = w.shape[0], self.emb_size
        m = self.xyaffine(w)                                          # (B, 3E)
        A = self.fourier_scale * m[:, :2 * E].reshape(B, E, 2)
        beta = m[:, 2 * E:]                                           # (B, E)
        u = self.affine(torch.cat([w, z_motion.to(w.dtype)], dim=1))  # (B, E)
        u = F.leaky_relu(u[:, None, :] * Ts[:, :, None].to(w.dtype) * self.motion_sigma)  # slope 0.01
        u = self.motion_mlp(u.reshape(-1, E)).reshape(B, -1, E)       # (B, T, E)
        return A, beta[:, None, :] + u


def coord_embedding(A: torch.Tensor, b: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """A (B, E, 2), b (B, T, E), xs (w,), ys (h,) -> e (B*T, 2E, h, w), sin block then cos block.

    The phase is formed as A[:,0]*x + A[:,1]*y + b in this order everywhere in the project."""
    B, E, _ = A.shape
    T = b.shape[1]
    ax = A[:, :, 0].reshape(B, 1, E, 1, 1)
    ay = A[:, :, 1].reshape(B, 1, E, 1, 1)
    phase = ax * xs.reshape(1, 1, 1, 1, -1) + ay * ys.reshape(1, 1, 1, -1, 1) + b.reshape(B, T, E, 1, 1)
    phase = phase.reshape(B * T, E, len(ys), len(xs))
    return torch.cat([phase.sin(), phase.cos()], dim=1)


def fmm_weight(weight: torch.Tensor, styles: torch.Tensor, rank: int, demodulate: bool = True) -> torch.Tensor:
    """weight (Cout, Cin), styles (B, (Cin+Cout)*r) -> W' (B, Cout, Cin) (FMM + row demodulation)."""
    Cout, Cin = weight.shape
    B = styles.shape[0]
    left = styles[:, :Cout * rank].reshape(B, Cout, rank)
    right = styles[:, Cout * rank:].reshape(B, rank, Cin)
    W = weight.unsqueeze(0) * (left @ right / np.sqrt(rank) + 1.0)
    if demodulate:
        W = W / (W.norm(dim=2, keepdim=True) + 1e-8)
    return W


def modulated_conv1x1(x: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """x (N, Cin, H, W), W (N, Cout, Cin): one weight per sample, as a grouped 1x1 convolution
    (StyleGAN2-ADA's fused_modconv path)."""
    N, Cin, H, Wd = x.shape
    Cout = W.shape[1]
    y = F.conv2d(x.reshape(1, N * Cin, H, Wd), W.reshape(N * Cout, Cin, 1, 1), groups=N)
    return y.reshape(N, Cout, H, Wd)


class SynthesisLayer(nn.Module):
    """FMM-modulated 1x1 layer: lrelu(W'(w) x + bias) * sqrt(2), clamped at +-conv_clamp (the
    official act_clamp = conv_clamp * gain, with the call's extra gain = 1)."""

    def __init__(self, in_channels: int, out_channels: int, cfg: GeneratorConfig):
        super().__init__()
        self.in_channels, self.out_channels, self.rank = in_channels, out_channels, cfg.rank
        self.conv_clamp = cfg.conv_clamp
        self.affine = FullyConnectedLayer(cfg.w_dim, (in_channels + out_channels) * cfg.rank, bias_init=0)
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, 1, 1]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))
        self.register_buffer("resample_filter", setup_filter())  # unused by this architecture; kept for keys

    def modulated_weight(self, w: torch.Tensor) -> torch.Tensor:
        """w (N, w_dim) -> W' (N, Cout, Cin)."""
        return fmm_weight(self.weight[:, :, 0, 0], self.affine(w), self.rank)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        y = modulated_conv1x1(x, self.modulated_weight(w))
        return bias_act(y, self.bias, act="lrelu", clamp=self.conv_clamp)


class ToRGBLayer(nn.Module):
    """rgb = (weight * affine(w)/sqrt(Cin)) x + bias (modulated, not demodulated), clamped."""

    def __init__(self, in_channels: int, cfg: GeneratorConfig):
        super().__init__()
        self.conv_clamp = cfg.conv_clamp
        self.affine = FullyConnectedLayer(cfg.w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn([cfg.img_channels, in_channels, 1, 1]))
        self.bias = nn.Parameter(torch.zeros([cfg.img_channels]))
        self.weight_gain = 1 / np.sqrt(in_channels)

    def modulated_weight(self, w: torch.Tensor) -> torch.Tensor:
        """w (N, w_dim) -> (N, 3, Cin)."""
        styles = self.affine(w) * self.weight_gain
        return self.weight[:, :, 0, 0].unsqueeze(0) * styles.unsqueeze(1)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        y = modulated_conv1x1(x, self.modulated_weight(w))
        return bias_act(y, self.bias, clamp=self.conv_clamp)


class CoordsInput(nn.Module):
    def __init__(self, cfg: GeneratorConfig):
        super().__init__()
        self.coord_fuser = CoordFuser(cfg)


class GenInput(nn.Module):
    """b4's input: only the coordinate embedding (key path `b4.input.input.coord_fuser`)."""

    def __init__(self, cfg: GeneratorConfig):
        super().__init__()
        self.input = CoordsInput(cfg)


class SynthesisBlock(nn.Module):
    def __init__(self, res: int, in_channels: int, cfg: GeneratorConfig):
        super().__init__()
        C = cfg.channels(res)
        self.res, self.in_channels, self.out_channels = res, in_channels, C
        self.up = res > cfg.input_resolution          # nearest x2 before this block
        self.num_conv = cfg.num_conv(res)
        self.register_buffer("resample_filter", setup_filter())
        if res == 4:
            self.input = GenInput(cfg)
            self.conv1 = SynthesisLayer(cfg.emb_channels, C, cfg)
        else:
            if cfg.has_embedding(res):
                self.coord_fuser = CoordFuser(cfg)
                conv0_in = in_channels + cfg.emb_channels
            else:
                conv0_in = in_channels
            self.conv0 = SynthesisLayer(conv0_in, C, cfg)
            self.conv1 = SynthesisLayer(C, C, cfg)
        n_extra = cfg.extra_convs(res)
        if n_extra:
            self.extra_convs = nn.ModuleList([SynthesisLayer(C, C, cfg) for _ in range(n_extra)])
        self.torgb = ToRGBLayer(C, cfg)

    @property
    def fuser(self) -> Optional[CoordFuser]:
        if self.res == 4:
            return self.input.input.coord_fuser
        return getattr(self, "coord_fuser", None)

    def conv_layers(self) -> List[SynthesisLayer]:
        layers = [self.conv1] if self.res == 4 else [self.conv0, self.conv1]
        return layers + (list(self.extra_convs) if hasattr(self, "extra_convs") else [])


TIME_LAYOUTS = "(B*T,), (B*T, 1, 1, 1) (the official code's), (B, T) or (B, T, 1, 1)"


def _parse_times(Ts: Union[torch.Tensor, Sequence[float]], B: int) -> torch.Tensor:
    """Times in any layout an entry point accepts -> (B, T), video-major.

    The official `Generator.forward` builds (B*T, 1, 1, 1) (one row per frame, video-major) and its
    synthesis infers T = rows / B; (B*T,), (B, T) and (B, T, 1, 1) are accepted besides. With T = 1
    the flat and per-video layouts coincide, so no shape is ambiguous."""
    Ts = torch.as_tensor(Ts, dtype=torch.float32)
    shape = tuple(Ts.shape)
    if Ts.numel() == 0 or Ts.numel() % B != 0:
        raise ValueError(f"Ts must hold T times per video (T >= 1) for {B} videos, got shape {shape}; "
                         f"accepted layouts: {TIME_LAYOUTS}")
    flat = Ts.ndim == 1 or (Ts.ndim == 4 and shape[1:] == (1, 1, 1))
    per_video = (Ts.ndim == 2 or (Ts.ndim == 4 and shape[2:] == (1, 1))) and shape[0] == B
    if not (flat or per_video):
        raise ValueError(f"Ts of shape {shape} does not fit {B} videos; accepted layouts: {TIME_LAYOUTS}")
    if not torch.isfinite(Ts).all():
        raise ValueError("Ts must be finite")
    return Ts.reshape(B, -1)


class SynthesisNetwork(nn.Module):
    def __init__(self, cfg: GeneratorConfig):
        super().__init__()
        self.cfg = cfg
        self.w_dim, self.img_resolution, self.img_channels = cfg.w_dim, cfg.img_resolution, cfg.img_channels
        self.block_resolutions = cfg.block_resolutions
        in_ch = 0
        for res in self.block_resolutions:
            setattr(self, f"b{res}", SynthesisBlock(res, in_ch, cfg))
            in_ch = cfg.channels(res)
        self.num_ws = cfg.num_ws

    def blocks(self) -> List[SynthesisBlock]:
        return [getattr(self, f"b{res}") for res in self.block_resolutions]

    def block_ws(self, ws: torch.Tensor) -> List[torch.Tensor]:
        """Slices of ws per block: convs use consecutive ws, torgb the next one (StyleGAN2-ADA)."""
        out, idx = [], 0
        for block in self.blocks():
            out.append(ws.narrow(1, idx, block.num_conv + 1))
            idx += block.num_conv
        return out

    def check_codes(self, ws: torch.Tensor, z_motion: torch.Tensor) -> int:
        """Validate ws (B, num_ws, w_dim) and z_motion (B, w_dim); returns B."""
        if ws.ndim != 3 or ws.shape[1:] != (self.num_ws, self.w_dim):
            raise ValueError(f"ws must have shape (B, {self.num_ws}, {self.w_dim}), got {tuple(ws.shape)}")
        B = ws.shape[0]
        if z_motion.shape != (B, self.w_dim):
            raise ValueError(f"z_motion must have shape ({B}, {self.w_dim}), got {tuple(z_motion.shape)}")
        return B

    def forward(self, ws: torch.Tensor, Ts: Union[torch.Tensor, Sequence[float]], z_motion: torch.Tensor,
                view: Optional[View] = None, **_ignored) -> torch.Tensor:
        """ws (B, num_ws, w_dim), Ts video-major in any of TIME_LAYOUTS, z_motion (B, w_dim) -> (B*T, 3, H, W)."""
        cfg = self.cfg
        B = self.check_codes(ws, z_motion)
        Ts = _parse_times(Ts, B).to(ws.device)
        T = Ts.shape[1]
        view = view or View()
        n_lv = num_levels(cfg.img_resolution, cfg.input_resolution)
        rects = level_rects(view.final_rect(cfg.img_resolution), n_lv)
        ws = ws.to(torch.float32)
        x = img = None
        level = 0
        for block, bws in zip(self.blocks(), self.block_ws(ws)):
            bws_f = bws.repeat_interleave(T, dim=0)
            if block.up:
                level += 1
                ri, ci = upsample_index(rects[level], rects[level - 1], device=ws.device)
                x = x.index_select(2, ri).index_select(3, ci)
                img = img.index_select(2, ri).index_select(3, ci)
            convs = block.conv_layers()
            fuser = block.fuser
            if fuser is not None:
                n_total = cfg.block_size(block.res) * view.scale
                xs, ys = level_coords(rects[level], n_total, device=ws.device)
                A, b = fuser.params(bws[:, 0], z_motion, Ts)
                e = coord_embedding(A, b, xs, ys)                      # (B*T, 2E, h, w)
                x = e if x is None else torch.cat([x, e], dim=1)
            for k, conv in enumerate(convs):
                x = conv(x, bws_f[:, k])
            y = block.torgb(x, bws_f[:, block.num_conv])
            img = y if img is None else img + y
        return img


class Generator(nn.Module):
    """G.mapping(z, c, truncation_psi) -> ws; G.synthesis(ws, Ts, z_motion) -> frames (B*T, 3, H, W)."""

    def __init__(self, cfg: Optional[GeneratorConfig] = None):
        super().__init__()
        self.cfg = cfg = cfg or GeneratorConfig()
        self.z_dim, self.c_dim, self.w_dim = cfg.z_dim, cfg.c_dim, cfg.w_dim
        self.img_resolution, self.img_channels = cfg.img_resolution, cfg.img_channels
        self.synthesis = SynthesisNetwork(cfg)
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(cfg.z_dim, cfg.c_dim, cfg.w_dim, self.num_ws, num_layers=cfg.mapping_layers,
                                      w_avg_beta=cfg.w_avg_beta)

    def forward(self, z: torch.Tensor, c: Optional[torch.Tensor], timesteps: Optional[int] = None,
                truncation_psi: float = 1.0, truncation_cutoff: Optional[int] = None,
                z_motion: Optional[torch.Tensor] = None, view: Optional[View] = None, **kwargs):
        """The official DIGAN call: returns (frames (B*T, 3, H, W), dT).

        timesteps > 2: times linspace(0, 1, T) per video, dT = None. timesteps <= 2: the training
        pairs, one Beta(2, 1) and one Beta(1, 2) draw per video, sorted; dT = t1 - t0 (B, 1, 1, 1).
        z_motion defaults to a fresh randn (B, w_dim), as in the official forward."""
        if timesteps is None:
            raise ValueError("DIGAN's generator needs timesteps (the number of frames per video)")
        if timesteps < 1:
            raise ValueError(f"timesteps must be >= 1, got {timesteps}")
        B = z.shape[0]
        dT = None
        # Ts in the official layout (B*T, 1, 1, 1), video-major, as the official forward builds it.
        if timesteps > 2:
            Ts = torch.linspace(0, 1, timesteps, device=z.device).repeat(B).view(-1, 1, 1, 1)
        else:
            t = torch.stack([torch.distributions.Beta(2.0, 1.0).sample((B,)),
                             torch.distributions.Beta(1.0, 2.0).sample((B,))], dim=1).sort(dim=1).values
            dT = (t[:, 1] - t[:, 0]).view(B, 1, 1, 1).to(z.device)
            Ts = t.reshape(-1, 1, 1, 1).to(z.device)
        if z_motion is None:
            z_motion = torch.randn([B, self.w_dim], device=z.device)
        ws = self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff)
        return self.synthesis(ws, Ts, z_motion, view=view, **kwargs), dT


# ---- discriminator --------------------------------------------------------------------------

def upfirdn2d(x: torch.Tensor, f: Optional[torch.Tensor], down: int = 1, padding: Sequence[int] = (0, 0, 0, 0),
              gain: float = 1.0) -> torch.Tensor:
    """StyleGAN2-ADA's reference upfirdn2d for up = 1: pad [x0, x1, y0, y1], FIR filter, decimate."""
    px0, px1, py0, py1 = padding
    x = F.pad(x, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    x = x[:, :, max(-py0, 0): x.shape[2] - max(-py1, 0), max(-px0, 0): x.shape[3] - max(-px1, 0)]
    if f is not None:
        C = x.shape[1]
        f = (f * gain ** (f.ndim / 2)).to(x.dtype).flip(list(range(f.ndim)))
        x = F.conv2d(x, f[None, None].repeat([C, 1, 1, 1]), groups=C)
    return x[:, :, ::down, ::down]


class Conv2dLayer(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bias: bool = True,
                 activation: str = "linear", down: int = 1, conv_clamp: Optional[float] = None):
        super().__init__()
        self.activation, self.down, self.conv_clamp = activation, down, conv_clamp
        self.register_buffer("resample_filter", setup_filter())
        self.padding = kernel_size // 2
        self.weight_gain = 1 / np.sqrt(in_channels * kernel_size ** 2)
        self.act_gain = SQRT2 if activation == "lrelu" else 1.0
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        self.bias = nn.Parameter(torch.zeros([out_channels])) if bias else None

    def forward(self, x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
        w = (self.weight * self.weight_gain).to(x.dtype)
        b = self.bias.to(x.dtype) if self.bias is not None else None
        kh = w.shape[-1]
        f = self.resample_filter
        if self.down > 1:
            fw = f.shape[-1]
            p0 = self.padding + (fw - self.down + 1) // 2
            p1 = self.padding + (fw - self.down) // 2
            if kh == 1:   # downsample first, then the 1x1 conv (conv2d_resample's fast path)
                x = upfirdn2d(x, f, down=self.down, padding=[p0, p1, p0, p1])
                x = F.conv2d(x, w)
            else:         # pad, conv, then FIR + decimate (the generic path)
                x = upfirdn2d(x, None, padding=[p0, p1, p0, p1])
                x = F.conv2d(x, w)
                x = upfirdn2d(x, f, down=self.down)
        else:
            x = F.conv2d(x, w, padding=self.padding)
        act_gain = self.act_gain * gain
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act(x, b, act=self.activation, gain=act_gain, clamp=clamp)


class DiscriminatorBlock(nn.Module):
    """Resnet block: (fromrgb at the top) conv0 3x3, conv1 3x3 down 2, skip 1x1 down 2, both * sqrt(.5)."""

    def __init__(self, in_channels: int, tmp_channels: int, out_channels: int, img_channels: int,
                 conv_clamp: Optional[float], use_fp16: bool):
        super().__init__()
        self.in_channels, self.use_fp16 = in_channels, use_fp16
        self.register_buffer("resample_filter", setup_filter())
        if in_channels == 0:
            self.fromrgb = Conv2dLayer(img_channels, tmp_channels, 1, activation="lrelu", conv_clamp=conv_clamp)
        self.conv0 = Conv2dLayer(tmp_channels, tmp_channels, 3, activation="lrelu", conv_clamp=conv_clamp)
        self.conv1 = Conv2dLayer(tmp_channels, out_channels, 3, activation="lrelu", down=2, conv_clamp=conv_clamp)
        self.skip = Conv2dLayer(tmp_channels, out_channels, 1, bias=False, down=2)

    def forward(self, x: Optional[torch.Tensor], img: torch.Tensor) -> torch.Tensor:
        # fp16 only on CUDA, as the official training runs it; fp32 elsewhere (exact reference).
        dtype = torch.float16 if (self.use_fp16 and img.is_cuda) else torch.float32
        if self.in_channels == 0:
            x = self.fromrgb(img.to(dtype))
        x = x.to(dtype)
        y = self.skip(x, gain=np.sqrt(0.5))
        x = self.conv1(self.conv0(x), gain=np.sqrt(0.5))
        return y.add_(x)


class MinibatchStdLayer(nn.Module):
    def __init__(self, group_size: int, num_channels: int = 1):
        super().__init__()
        self.group_size, self.num_channels = group_size, num_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        N, C, H, W = x.shape
        G = min(self.group_size, N) if self.group_size is not None else N
        if N % G:
            raise ValueError(f"minibatch-std: batch {N} is not divisible by group size {G}")
        Fc = self.num_channels
        c = C // Fc
        y = x.reshape(G, -1, Fc, c, H, W)
        y = y - y.mean(dim=0)
        y = y.square().mean(dim=0)
        y = (y + 1e-8).sqrt()
        y = y.mean(dim=[2, 3, 4])
        y = y.reshape(-1, Fc, 1, 1)
        y = y.repeat(G, 1, H, W)
        return torch.cat([x, y], dim=1)


class DiscriminatorEpilogue(nn.Module):
    def __init__(self, in_channels: int, cmap_dim: int, cfg: DiscriminatorConfig):
        super().__init__()
        self.cmap_dim = cmap_dim
        self.mbstd = (MinibatchStdLayer(cfg.mbstd_group_size, cfg.mbstd_num_channels)
                      if cfg.mbstd_num_channels > 0 else None)
        self.conv = Conv2dLayer(in_channels + cfg.mbstd_num_channels, in_channels, 3, activation="lrelu",
                                conv_clamp=cfg.conv_clamp)
        self.fc = FullyConnectedLayer(in_channels * 16, in_channels, activation="lrelu")
        self.out = FullyConnectedLayer(in_channels, 1 if cmap_dim == 0 else cmap_dim)

    def forward(self, x: torch.Tensor, cmap: Optional[torch.Tensor]) -> torch.Tensor:
        x = x.to(torch.float32)
        if self.mbstd is not None:
            x = self.mbstd(x)
        x = self.conv(x)
        x = self.fc(x.flatten(1))
        x = self.out(x)
        if self.cmap_dim > 0:
            x = (x * cmap).sum(dim=1, keepdim=True) * (1 / np.sqrt(self.cmap_dim))
        return x


class SingleDiscriminator(nn.Module):
    """StyleGAN2-ADA resnet discriminator on img_channels input channels."""

    def __init__(self, cfg: DiscriminatorConfig, img_channels: int):
        super().__init__()
        self.c_dim, self.img_channels = cfg.c_dim, img_channels
        self.block_resolutions = cfg.block_resolutions
        for res in self.block_resolutions:
            in_ch = cfg.channels(res) if res < cfg.img_resolution else 0
            block = DiscriminatorBlock(in_ch, cfg.channels(res), cfg.channels(res // 2), img_channels,
                                       cfg.conv_clamp, use_fp16=res >= cfg.fp16_resolution)
            setattr(self, f"b{res}", block)
        cmap_dim = cfg.effective_cmap_dim
        if cfg.c_dim > 0:
            self.mapping = MappingNetwork(0, cfg.c_dim, cmap_dim, num_ws=None, num_layers=cfg.mapping_layers,
                                          w_avg_beta=None)
        self.b4 = DiscriminatorEpilogue(cfg.channels(4), cmap_dim, cfg)

    def forward(self, img: torch.Tensor, c: Optional[torch.Tensor]) -> torch.Tensor:
        x = None
        for res in self.block_resolutions:
            x = getattr(self, f"b{res}")(x, img)
        cmap = self.mapping(None, c) if self.c_dim > 0 else None
        return self.b4(x, cmap)


class Discriminator(nn.Module):
    """DIGAN's two heads: videoD on (frame0, frame1, dT) stacked on channels, imageD on each frame.

    D(vid (B, 2*3+1, H, W), c) -> (motion logits (B, 1), image logits (2B, 1), frames (2B, 3, H, W)),
    frames sample-major (sample 0 frame 0, sample 0 frame 1, sample 1 frame 0, ...)."""

    def __init__(self, cfg: Optional[DiscriminatorConfig] = None):
        super().__init__()
        self.cfg = cfg = cfg or DiscriminatorConfig()
        self.c_dim, self.img_resolution, self.img_channels = cfg.c_dim, cfg.img_resolution, cfg.img_channels
        self.videoD = SingleDiscriminator(cfg, 2 * cfg.img_channels + 1)
        self.imageD = SingleDiscriminator(cfg, cfg.img_channels)

    def split_frames(self, vid: torch.Tensor) -> torch.Tensor:
        B, _, H, W = vid.shape
        C = self.img_channels
        return vid[:, :2 * C].reshape(B * 2, C, H, W)

    def forward(self, vid: torch.Tensor, c: Optional[torch.Tensor] = None, **_ignored):
        C, R = self.img_channels, self.img_resolution
        if vid.ndim != 4 or vid.shape[1:] != (2 * C + 1, R, R):
            raise ValueError(f"D expects vid of shape (B, {2 * C + 1}, {R}, {R}), got {tuple(vid.shape)}")
        frames = self.split_frames(vid)
        c_img = c.repeat_interleave(2, dim=0) if (c is not None and self.c_dim > 0) else c
        return self.videoD(vid, c), self.imageD(frames, c_img), frames
