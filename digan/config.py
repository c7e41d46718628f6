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

# ---- validation ------------------------------------------------------------------------------
# Bounds for every field that sizes a tensor, in ONE place. Configs come from untrusted checkpoint
# metadata (JSON) and pickles, so a config must be refused before anything is allocated from it.
# The limits are far above any published DIGAN/StyleGAN2 model (512-wide, 2-8 mapping layers,
# rank 10, 128-1024 px) yet small enough that the largest valid layer stays far below the RAM of
# one machine: (4096 x 4096 weights = 64 MiB in fp32).
MAX_DIM = 4096            # z_dim, w_dim, c_dim, channel_max, emb_size, cmap_dim
MAX_CHANNEL_BASE = 1 << 24
MAX_RESOLUTION = 4096     # img_resolution, input_resolution
MAX_IMG_CHANNELS = 16
MAX_MAPPING_LAYERS = 32
MAX_RANK = 64
MAX_EXTRA_CONVS = 16      # per block
MAX_MBSTD = 1024          # mbstd_group_size / mbstd_num_channels
MAX_FP16_RES = 16


def _brief(value: Any) -> str:
    """repr of a value for an error message, cut short (the value may be a huge hostile structure)."""
    import reprlib

    r = reprlib.Repr()
    r.maxlevel, r.maxstring, r.maxother, r.maxlong = 3, 60, 60, 40
    return r.repr(value)


def _check_int(name: str, value: Any, low: int, high: int) -> None:
    # bool is an int subclass, but `z_dim: true` is a typo, not a size.
    if type(value) is not int:
        raise ValueError(f"{name} must be an integer, got {_brief(value)} ({type(value).__name__})")
    if not low <= value <= high:
        raise ValueError(f"{name} must be in [{low}, {high}], got {value}")


def _check_image_fields(cfg) -> None:
    """The fields G and D share: labels, image channels and the channel budget, which must give
    the top block at least one channel."""
    _check_int("c_dim", cfg.c_dim, 0, MAX_DIM)
    _check_int("img_channels", cfg.img_channels, 1, MAX_IMG_CHANNELS)
    _check_int("channel_base", cfg.channel_base, 1, MAX_CHANNEL_BASE)
    if cfg.channel_base < cfg.img_resolution:
        raise ValueError(f"channel_base={cfg.channel_base} gives the {cfg.img_resolution}x{cfg.img_resolution} "
                         f"block no channels (channel_base // resolution must be >= 1)")


def _check_pow2(name: str, value: Any, low: int, high: int = MAX_RESOLUTION) -> None:
    if type(value) is not int:
        raise ValueError(f"{name} must be an integer, got {_brief(value)} ({type(value).__name__})")
    if not low <= value <= high or value & (value - 1):
        raise ValueError(f"{name} must be a power of two in [{low}, {high}], got {value}")


def _check_float(name: str, value: Any, low: float, high: float, *, low_open: bool = False,
                 optional: bool = False) -> None:
    if optional and value is None:
        return
    if type(value) is bool or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {_brief(value)} ({type(value).__name__})")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if value < low or (low_open and value == low) or value > high:
        raise ValueError(f"{name} must be in {'(' if low_open else '['}{low}, {high}], got {value}")


def _check_fields(cls, d: Any) -> None:
    if not isinstance(d, dict):
        raise ValueError(f"a {cls.__name__} must be a JSON object, got {type(d).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = [k for k in d if k not in known]
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {_brief(sorted(map(str, unknown)))}")


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
        self.validate()

    def validate(self) -> None:
        """Types, finiteness and bounds of every field (ValueError naming the field); also run by
        every checkpoint loader before anything is built from the config."""
        if not isinstance(self.num_extra_convs, dict):
            raise ValueError("num_extra_convs must be a mapping resolution -> count, "
                             f"got {_brief(self.num_extra_convs)}")
        if len(self.num_extra_convs) > 16:
            raise ValueError(f"num_extra_convs has {len(self.num_extra_convs)} entries (at most one per resolution)")
        extra = {}
        for k, v in self.num_extra_convs.items():
            # JSON turns int keys into strings: normalise so a round trip compares equal.
            key = int(k) if isinstance(k, str) and k.isdigit() and len(k) <= 5 else k
            _check_pow2("a num_extra_convs resolution", key, 4)
            _check_int(f"num_extra_convs[{key}]", v, 0, MAX_EXTRA_CONVS)
            extra[key] = v
        self.num_extra_convs = extra
        _check_pow2("img_resolution", self.img_resolution, 8)
        _check_pow2("input_resolution", self.input_resolution, 4)
        if self.input_resolution > self.img_resolution:
            raise ValueError("input_resolution must not exceed img_resolution")
        for name in ("z_dim", "w_dim", "channel_max", "emb_size"):
            _check_int(name, getattr(self, name), 1, MAX_DIM)
        _check_image_fields(self)
        _check_int("mapping_layers", self.mapping_layers, 1, MAX_MAPPING_LAYERS)
        _check_int("rank", self.rank, 1, MAX_RANK)
        _check_float("w_avg_beta", self.w_avg_beta, 0.0, 1.0)
        _check_float("motion_sigma", self.motion_sigma, 0.0, 1e6)
        _check_float("fourier_scale", self.fourier_scale, 0.0, 1e6, low_open=True)
        _check_float("conv_clamp", self.conv_clamp, 0.0, 1e9, low_open=True, optional=True)

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
        _check_fields(cls, d)
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
        self.validate()

    def validate(self) -> None:
        """Types, finiteness and bounds of every field (ValueError naming the field)."""
        _check_pow2("img_resolution", self.img_resolution, 8)
        _check_image_fields(self)
        _check_int("channel_max", self.channel_max, 1, MAX_DIM)
        _check_int("mbstd_group_size", self.mbstd_group_size, 1, MAX_MBSTD)
        _check_int("mbstd_num_channels", self.mbstd_num_channels, 0, MAX_MBSTD)
        _check_float("conv_clamp", self.conv_clamp, 0.0, 1e9, low_open=True, optional=True)
        _check_int("num_fp16_res", self.num_fp16_res, 0, MAX_FP16_RES)
        if self.cmap_dim is not None:
            _check_int("cmap_dim", self.cmap_dim, 1, MAX_DIM)
        _check_int("mapping_layers", self.mapping_layers, 1, MAX_MAPPING_LAYERS)

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
        _check_fields(cls, d)
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
