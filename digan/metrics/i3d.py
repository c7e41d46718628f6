"""Inception-v1 I3D (Carreira & Zisserman 2017) as DIGAN's FVD/KVD use it, in plain PyTorch.

The module tree reproduces the state-dict keys of the pytorch-i3d port that VideoGPT ships and
DIGAN's evaluation loads (`i3d_pretrained_400.pt`, 400 Kinetics classes), e.g.

    Conv3d_1a_7x7.conv3d.weight          (64, 3, 7, 7, 7)
    Conv3d_1a_7x7.bn.{weight,bias,running_mean,running_var,num_batches_tracked}
    Mixed_3b.b0 / b1a / b1b / b2a / b2b / b3b .conv3d.weight, .bn.*   (b3a is a max-pool)
    logits.conv3d.{weight,bias}          (400, 1024, 1, 1, 1), (400,)

so that file loads with strict key and shape checks (`load_i3d`, weights_only=True; nothing is
downloaded: the weights are the user's file).

The feature of a clip is what DIGAN's `get_fvd_logits` returns: the model's forward, i.e. the
400 logits after the final average pool (kernel (2, 7, 7), stride 1), squeezed over space and
averaged over the remaining time steps — not `extract_features` (the 1024-d pooled map).

Every convolution and max-pool pads like TensorFlow's 'SAME' (front = pad // 2, back = the
rest), recomputed from the input size at each call, with zeros (the max-pools only ever see
ReLU outputs, so zero padding equals -inf padding there).  Dropout is inference-time identity.

Preprocessing (`preprocess`, DIGAN = VideoGPT's `preprocess`): uint8 (N, T, H, W, 3) -> float
/255, bilinear resize (align_corners=False) of the short side to 224 (long side ceil(w * scale)),
centre crop 224 x 224 (offset (size - 224) // 2), then (x - 0.5) * 2 in [-1, 1]; channels first.
"""
from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path
from typing import Dict, List, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

PathLike = Union[str, os.PathLike]

I3D_RESOLUTION = 224   # DIGAN's target_resolution
NUM_CLASSES = 400      # Kinetics-400 logits: the feature dimension D of FVD/KVD

# (name, in_channels, [b0, b1a, b1b, b2a, b2b, b3b] output channels) of the inception modules.
_MIXED = (
    ("Mixed_3b", 192, (64, 96, 128, 16, 32, 32)),
    ("Mixed_3c", 256, (128, 128, 192, 32, 96, 64)),
    ("Mixed_4b", 480, (192, 96, 208, 16, 48, 64)),
    ("Mixed_4c", 512, (160, 112, 224, 24, 64, 64)),
    ("Mixed_4d", 512, (128, 128, 256, 24, 64, 64)),
    ("Mixed_4e", 512, (112, 144, 288, 32, 64, 64)),
    ("Mixed_4f", 528, (256, 160, 320, 32, 128, 128)),
    ("Mixed_5b", 832, (256, 160, 320, 32, 128, 128)),
    ("Mixed_5c", 832, (384, 192, 384, 48, 128, 128)),
)


class I3DWeightsError(ValueError):
    """The detector file does not fit the I3D architecture (missing/unexpected keys, wrong shapes)."""


def _same_pad(size: int, kernel: int, stride: int) -> Tuple[int, int]:
    """TF 'SAME' padding of one dimension, as pytorch-i3d's compute_pad: (front, back)."""
    if size % stride == 0:
        pad = max(kernel - stride, 0)
    else:
        pad = max(kernel - size % stride, 0)
    return pad // 2, pad - pad // 2


def _pad_same(x: torch.Tensor, kernel: Sequence[int], stride: Sequence[int]) -> torch.Tensor:
    t, h, w = x.shape[2:]                                       # x (N, C, T, H, W)
    pt, ph, pw = (_same_pad(s, k, st) for s, k, st in zip((t, h, w), kernel, stride))
    if not any(pt + ph + pw):
        return x
    return F.pad(x, (pw[0], pw[1], ph[0], ph[1], pt[0], pt[1]))


class MaxPoolSame(nn.Module):
    """Max-pool with dynamic TF 'SAME' zero padding (no parameters, so no state-dict keys)."""

    def __init__(self, kernel: Sequence[int], stride: Sequence[int]):
        super().__init__()
        self.kernel, self.stride = tuple(kernel), tuple(stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool3d(_pad_same(x, self.kernel, self.stride), self.kernel, self.stride)


class Unit3D(nn.Module):
    """Conv3d (no padding of its own) after dynamic 'SAME' padding, then BatchNorm and ReLU.

    Keys: conv3d.weight (+ conv3d.bias without BN), bn.* (BatchNorm3d, eps 1e-5)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: Sequence[int] = (1, 1, 1),
                 stride: Sequence[int] = (1, 1, 1), batch_norm: bool = True, bias: bool = False,
                 relu: bool = True):
        super().__init__()
        self.kernel, self.stride, self.relu = tuple(kernel), tuple(stride), relu
        self.conv3d = nn.Conv3d(in_channels, out_channels, self.kernel, self.stride, padding=0, bias=bias)
        self.bn = nn.BatchNorm3d(out_channels, eps=1e-5, momentum=0.001) if batch_norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv3d(_pad_same(x, self.kernel, self.stride))
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x) if self.relu else x


class InceptionModule(nn.Module):
    def __init__(self, in_channels: int, out: Sequence[int]):
        super().__init__()
        self.b0 = Unit3D(in_channels, out[0])
        self.b1a = Unit3D(in_channels, out[1])
        self.b1b = Unit3D(out[1], out[2], (3, 3, 3))
        self.b2a = Unit3D(in_channels, out[3])
        self.b2b = Unit3D(out[3], out[4], (3, 3, 3))
        self.b3a = MaxPoolSame((3, 3, 3), (1, 1, 1))
        self.b3b = Unit3D(in_channels, out[5])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], dim=1)


class InceptionI3d(nn.Module):
    """x (N, 3, T, H, W) in [-1, 1] -> logits (N, num_classes), DIGAN's FVD feature.

    At the protocol's input (T = 16, 224 x 224) the map before the average pool is (2, 7, 7) and
    the pool leaves one position.  Smaller inputs (tests) would make the official pool fail; there
    the pool kernel is clipped to the map, i.e. it averages the whole map (same result at 224)."""

    POOL_KERNEL = (2, 7, 7)

    def __init__(self, num_classes: int = NUM_CLASSES, in_channels: int = 3):
        super().__init__()
        self.num_classes = num_classes
        self.Conv3d_1a_7x7 = Unit3D(in_channels, 64, (7, 7, 7), (2, 2, 2))
        self.MaxPool3d_2a_3x3 = MaxPoolSame((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(64, 64)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, (3, 3, 3))
        self.MaxPool3d_3a_3x3 = MaxPoolSame((1, 3, 3), (1, 2, 2))
        for name, cin, out in _MIXED[:2]:
            self.add_module(name, InceptionModule(cin, out))
        self.MaxPool3d_4a_3x3 = MaxPoolSame((3, 3, 3), (2, 2, 2))
        for name, cin, out in _MIXED[2:7]:
            self.add_module(name, InceptionModule(cin, out))
        self.MaxPool3d_5a_2x2 = MaxPoolSame((2, 2, 2), (2, 2, 2))
        for name, cin, out in _MIXED[7:]:
            self.add_module(name, InceptionModule(cin, out))
        self.logits = Unit3D(1024, num_classes, batch_norm=False, bias=True, relu=False)

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, T, H, W) -> (N, 1024, ceil(T/8), ceil(H/32), ceil(W/32)) before the average pool."""
        for name, module in self.named_children():
            if name == "logits":
                break
            x = module(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5 or x.shape[1] != self.Conv3d_1a_7x7.conv3d.in_channels:
            raise ValueError(f"I3D expects (N, 3, T, H, W), got {tuple(x.shape)}")
        x = self.trunk(x)                                          # (N, 1024, t, h, w)
        kernel = [min(k, s) for k, s in zip(self.POOL_KERNEL, x.shape[2:])]
        x = F.avg_pool3d(x, kernel, stride=1)                      # (N, 1024, t', 1, 1) at 224
        x = self.logits(x)                                         # (N, 400, t', h', w')
        # Space is 1 x 1 here at 224 (averaging one value is exact); the official mean is over time.
        return x.flatten(3).mean(dim=3).mean(dim=2)                 # (N, 400)


# ---- loading ------------------------------------------------------------------------------------

def file_sha256(path: PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def _unwrap(state) -> Dict[str, torch.Tensor]:
    """A bare state dict, or one under 'state_dict'/'model'; 'module.' prefixes (DataParallel) dropped."""
    if isinstance(state, dict) and not any(isinstance(v, torch.Tensor) for v in state.values()):
        for key in ("state_dict", "model"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict):
        raise I3DWeightsError(f"expected a state dict, got {type(state).__name__}")
    if state and all(isinstance(k, str) and k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return dict(state)


def check_i3d_state(model: InceptionI3d, state: Dict[str, torch.Tensor]) -> None:
    """Raises I3DWeightsError naming every missing/unexpected key and wrong shape.

    BatchNorm's num_batches_tracked may be absent (older PyTorch saves; unused at inference)."""
    want = model.state_dict()
    missing = [k for k in want if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in want]
    bad = [f"{k}: file {tuple(v.shape)}, I3D {tuple(want[k].shape)}" for k, v in state.items()
           if k in want and isinstance(v, torch.Tensor) and tuple(v.shape) != tuple(want[k].shape)]
    not_tensor = [k for k, v in state.items() if k in want and not isinstance(v, torch.Tensor)]
    problems = []
    for what, items in (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", bad),
                        ("not tensors", not_tensor)):
        if items:
            shown = ", ".join(items[:8]) + (f", ... ({len(items)} in all)" if len(items) > 8 else "")
            problems.append(f"{what}: {shown}")
    if problems:
        raise I3DWeightsError("not an InceptionI3d (i3d_pretrained_400.pt) state dict: " + "; ".join(problems))


def load_i3d(path: PathLike, device: Union[str, torch.device, None] = None) -> InceptionI3d:
    """The user's I3D weights (VideoGPT's i3d_pretrained_400.pt layout), read with weights_only=True.

    device: default CUDA when available.  The model is in eval mode without gradients."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"I3D weights {path} not found (give the i3d_pretrained_400.pt file)")
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling refusals and corrupt files are all 'not a weights file'
        raise I3DWeightsError(f"{path} is not a torch state dict readable with weights_only=True: "
                              f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc
    state = _unwrap(state)
    logits = state.get("logits.conv3d.weight")
    classes = int(logits.shape[0]) if isinstance(logits, torch.Tensor) and logits.ndim == 5 else NUM_CLASSES
    model = InceptionI3d(num_classes=classes)
    try:
        check_i3d_state(model, state)
    except I3DWeightsError as exc:
        raise I3DWeightsError(f"{path}: {exc}") from None
    model.load_state_dict(state, strict=False)  # strictness enforced above (num_batches_tracked optional)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model = model.to(device).eval().requires_grad_(False)
    if torch.device(device).type == "cpu":
        # oneDNN's 3-D convolutions run ~25% faster channels-last on the CPU (measured on 2 cores;
        # results equal to float rounding, ~1e-6 relative).  GPUs keep the official layout.
        model = model.to(memory_format=torch.channels_last_3d)
    return model


# ---- preprocessing and features -----------------------------------------------------------------

def preprocess(videos: torch.Tensor, resolution: int = I3D_RESOLUTION, resize: bool = True) -> torch.Tensor:
    """uint8 (N, T, H, W, 3) -> float32 (N, 3, T, resolution, resolution) in [-1, 1], DIGAN's way.

    resize=False (internal, tests) skips resize and crop: the clip is used at its own size."""
    n, t, h, w, c = videos.shape
    x = videos.permute(0, 1, 4, 2, 3).reshape(n * t, c, h, w).float() / 255.0   # (N*T, 3, H, W)
    if resize:
        scale = resolution / min(h, w)
        size = (resolution, math.ceil(w * scale)) if h < w else (math.ceil(h * scale), resolution)
        if size != (h, w):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        hh, ww = x.shape[2:]
        top, left = (hh - resolution) // 2, (ww - resolution) // 2
        x = x[:, :, top:top + resolution, left:left + resolution]
    x = x.reshape(n, t, c, x.shape[2], x.shape[3]).transpose(1, 2)             # (N, 3, T, S, S)
    return ((x - 0.5) * 2.0).contiguous()  # same float32 steps as `video -= 0.5` then `* 2`


def _as_uint8_tensor(videos) -> torch.Tensor:
    if isinstance(videos, np.ndarray):
        if videos.dtype != np.uint8:
            raise ValueError(f"videos must be uint8 (N, T, H, W, 3), got numpy {videos.dtype}")
        videos = torch.from_numpy(np.ascontiguousarray(videos))
    if not isinstance(videos, torch.Tensor):
        raise ValueError(f"videos must be a numpy array or torch tensor, got {type(videos).__name__}")
    if videos.dtype != torch.uint8:
        raise ValueError(f"videos must be uint8 (N, T, H, W, 3), got {videos.dtype}")
    if videos.ndim != 5 or videos.shape[-1] != 3:
        raise ValueError(f"videos must be (N, T, H, W, 3), got shape {tuple(videos.shape)}")
    return videos


@torch.no_grad()
def i3d_features(model: InceptionI3d, videos, batch_size: int = 16, resize: bool = True,
                 resolution: int = I3D_RESOLUTION) -> torch.Tensor:
    """uint8 videos (N, T, H, W, 3), numpy or torch -> float32 features (N, 400) on the CPU.

    Clips go to the model's device in batches of `batch_size` (preprocessing runs there too, so
    only uint8 crosses the bus).  T must be at least 9 at the protocol's 224 (the time axis is
    strided 8x).  resolution other than 224 (benchmarks at a reduced size) is not DIGAN's FVD."""
    videos = _as_uint8_tensor(videos)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = next(model.parameters()).device
    channels_last = model.Conv3d_1a_7x7.conv3d.weight.is_contiguous(memory_format=torch.channels_last_3d)
    model.eval()
    out: List[torch.Tensor] = []
    for i in range(0, len(videos), batch_size):
        x = preprocess(videos[i:i + batch_size].to(device, non_blocking=True), resolution, resize=resize)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        out.append(model(x).float().cpu())
    if not out:
        return torch.zeros(0, model.num_classes)
    return torch.cat(out)
