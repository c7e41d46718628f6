"""Dataclass configs for the DIGAN generator and discriminator, with presets.

Field names follow the official configuration (configs/digan.yml and StyleGAN2-ADA's kwargs) so
that a user can map one onto the other; everything derived (block resolutions, channel counts,
number of ws) is a property, never stored, so a config rebuilt from JSON is always consistent.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any, Dict, Optional


def _check_pow2(name: str, value: int, low: int) -> None:
    if value < low or value & (value - 1):
        raise ValueError(f"{name} must be a power of two >= {low}, got {value}")


@dataclass
class GeneratorConfig:
    z_dim: int = 512                  # content code size
    w_dim: int = 512                  # style size; z_motion has w_dim entries too
    c_dim: int = 0                    # class labels (101 for UCF-101), 0 = unconditional
    img_resolution: int = 128         # output side R at scale 1
    img_channels: int = 3
    channel_base: int = 32768         # 32768 * fmaps
    channel_max: int = 512
    mapping_layers: int = 2           # DIGAN uses 2 (StyleGAN2 uses 8)
    w_avg_beta: float = 0.995         # EMA of w during training (StyleGAN2-ADA), used by truncation
    rank: int = 10                    # FMM rank r
    emb_size: int = 128               # predictable_emb_size: 2*emb_size embedding channels
    input_resolution: int = 32        # blocks with nominal res <= this all run at this size
    motion_sigma: float = 0.25
    fourier_scale: float = math.sqrt(10.0)
    num_extra_convs: Dict[int, int] = field(default_factory=lambda: {128: 1, 256: 1})
    conv_clamp: Optional[float] = None   # DIGAN's generator is fp32, so train.py sets None (256 only with fp16)

    def __post_init__(self) -> None:
        # JSON turns int keys into strings: normalise so a round trip compares equal.
        self.num_extra_convs = {int(k): int(v) for k, v in self.num_extra_convs.items()}
        _check_pow2("img_resolution", self.img_resolution, 8)
        _check_pow2("input_resolution", self.input_resolution, 4)
        if self.input_resolution > self.img_resolution:
            raise ValueError("input_resolution must not exceed img_resolution")
        for name in ("z_dim", "w_dim", "rank", "emb_size", "mapping_layers", "channel_base", "channel_max"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")

    # ---- derived -------------------------------------------------------------------------
    @property
    def block_resolutions(self) -> list:
        return [2 ** i for i in range(2, int(math.log2(self.img_resolution)) + 1)]

    def channels(self, res: int) -> int:
        return min(self.channel_base // res, self.channel_max)

    def block_size(self, res: int) -> int:
        """Pixel side a block really runs at (at scale 1)."""
        return max(res, self.input_resolution)

    def extra_convs(self, res: int) -> int:
        return self.num_extra_convs.get(res, 0)

    def num_conv(self, res: int) -> int:
        return (1 if res == 4 else 2) + self.extra_convs(res)

    @property
    def num_ws(self) -> int:
        return sum(self.num_conv(r) for r in self.block_resolutions) + 1

    @property
    def emb_channels(self) -> int:
        return 2 * self.emb_size

    def has_embedding(self, res: int) -> bool:
        return res == 4 or res > self.input_resolution

    # ---- serialisation ---------------------------------------------------------------------
    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d["num_extra_convs"] = {str(k): v for k, v in self.num_extra_convs.items()}
        return d

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "GeneratorConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown GeneratorConfig fields: {sorted(unknown)}")
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


@dataclass
class DiscriminatorConfig:
    c_dim: int = 0
    img_resolution: int = 128
    img_channels: int = 3             # per frame; the motion head sees 2*img_channels + 1
    channel_base: int = 32768
    channel_max: int = 512
    mbstd_group_size: int = 4
    mbstd_num_channels: int = 1
    conv_clamp: Optional[float] = 256.0
    num_fp16_res: int = 4             # blocks at res >= 2**(log2 R + 1 - n) run in fp16 on CUDA
    cmap_dim: Optional[int] = None    # None = channels at 4x4 (StyleGAN2-ADA default)
    mapping_layers: int = 8           # StyleGAN2-ADA's default for D's label mapping

    def __post_init__(self) -> None:
        _check_pow2("img_resolution", self.img_resolution, 8)

    @property
    def block_resolutions(self) -> list:
        return [2 ** i for i in range(int(math.log2(self.img_resolution)), 2, -1)]

    def channels(self, res: int) -> int:
        return min(self.channel_base // res, self.channel_max)

    @property
    def effective_cmap_dim(self) -> int:
        if self.c_dim == 0:
            return 0
        return self.channels(4) if self.cmap_dim is None else self.cmap_dim

    @property
    def fp16_resolution(self) -> int:
        return max(2 ** (int(math.log2(self.img_resolution)) + 1 - self.num_fp16_res), 8)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "DiscriminatorConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown DiscriminatorConfig fields: {sorted(unknown)}")
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


# ---- presets ---------------------------------------------------------------------------------
# The released DIGAN models are 128x128, fmaps 1, 2 mapping layers; UCF-101 is class-conditional.
GENERATOR_PRESETS: Dict[str, GeneratorConfig] = {
    "digan-128": GeneratorConfig(),
    "digan-128-ucf101": GeneratorConfig(c_dim=101),
    # The architecture of ../shared/fixtures/official_digan_64_small.safetensors.
    "small-64": GeneratorConfig(z_dim=128, w_dim=128, img_resolution=64, channel_base=4096, channel_max=128),
    # Seconds on a CPU: for tests and the --tiny training preset.
    "tiny-64": GeneratorConfig(z_dim=32, w_dim=32, img_resolution=64, channel_base=512, channel_max=32,
                               emb_size=16, input_resolution=16, num_extra_convs={64: 1}),
    "tiny-32": GeneratorConfig(z_dim=32, w_dim=32, img_resolution=32, channel_base=256, channel_max=32,
                               emb_size=16, input_resolution=8, rank=4),
}

DISCRIMINATOR_PRESETS: Dict[str, DiscriminatorConfig] = {
    "digan-128": DiscriminatorConfig(),
    "digan-128-ucf101": DiscriminatorConfig(c_dim=101),
    "small-64": DiscriminatorConfig(img_resolution=64, channel_base=4096, channel_max=128),
    "tiny-64": DiscriminatorConfig(img_resolution=64, channel_base=512, channel_max=32),
    "tiny-32": DiscriminatorConfig(img_resolution=32, channel_base=256, channel_max=32),
}


def generator_preset(name: str) -> GeneratorConfig:
    if name not in GENERATOR_PRESETS:
        raise ValueError(f"unknown generator preset {name!r}; choose one of {sorted(GENERATOR_PRESETS)}")
    return dataclasses.replace(GENERATOR_PRESETS[name])


def discriminator_preset(name: str) -> DiscriminatorConfig:
    if name not in DISCRIMINATOR_PRESETS:
        raise ValueError(f"unknown discriminator preset {name!r}; choose one of {sorted(DISCRIMINATOR_PRESETS)}")
    return dataclasses.replace(DISCRIMINATOR_PRESETS[name])
