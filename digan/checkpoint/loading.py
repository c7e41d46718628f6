"""Building networks from what a file holds (shape, dtype and finiteness checks first) and the loaders."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Mapping, Union

import torch

from ..config import DiscriminatorConfig, GeneratorConfig
from ._common import FORMAT, NETWORK_PREFIXES, CheckpointError, PathLike, _existing
from .formats import _gen_roles, _Lazy, _Net, _read_networks, _read_safetensors_header, _sniff

# =============================================================================================
# Building modules
# =============================================================================================

def _check_finite(path: str, sd: Mapping[str, torch.Tensor], label: str) -> None:
    for k, t in sd.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            n_nan, n_inf = int(torch.isnan(t).sum()), int(torch.isinf(t).sum())
            raise CheckpointError(f"{path}: tensor {label + k!r} has non-finite values ({n_nan} NaN, {n_inf} Inf)")


def _check_layout(path: str, sd: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], label: str,
                  what: str) -> None:
    def names(ks):
        ks = sorted(ks)
        return ", ".join(repr(label + k) for k in ks[:6]) + (f" and {len(ks) - 6} more" if len(ks) > 6 else "")

    missing = set(expected) - set(sd)
    unexpected = set(sd) - set(expected)
    if missing or unexpected:
        parts = ([f"missing tensors {names(missing)}"] if missing else []) + \
                ([f"unexpected tensors {names(unexpected)}"] if unexpected else [])
        raise CheckpointError(f"{path}: the {what} tensors do not match its config: {'; '.join(parts)}")
    for k in sorted(sd):
        if tuple(sd[k].shape) != tuple(expected[k].shape):
            raise CheckpointError(f"{path}: tensor {label + k!r} has shape {tuple(sd[k].shape)}, but the {what}'s "
                                  f"config gives {tuple(expected[k].shape)}")


# Real construction happens without the meta check only when the config cannot allocate more than
# this many times the file's elements (plus 16M elements = 64 MiB of fp32).
META_CHECK_FACTOR = 4
META_CHECK_SLACK = 1 << 24


def numel_bound(cfg: Union[GeneratorConfig, DiscriminatorConfig]) -> int:
    """An upper bound of the elements (parameters + buffers) a network of this config allocates,
    from the config alone. It over-counts (every layer at the widest channel count plus the
    embedding); tests check it against real networks of many configs."""
    if isinstance(cfg, GeneratorConfig):
        C = max(cfg.channels(r) for r in cfg.block_resolutions)
        E, W, r = cfg.emb_size, cfg.w_dim, cfg.rank
        cin = C + 2 * E
        layer = (cin + 1) * C + (cin + C) * r * (W + 1) + 64
        torgb = (W + 1) * C + (cfg.img_channels + 1) * (C + 1) + 64
        fuser = (W + 1) * 3 * E + (2 * W + 1) * E + 2 * (E + 1) * E + 64
        blocks = sum(cfg.num_conv(res) * layer + torgb + fuser + 64 for res in cfg.block_resolutions)
        mapping = (cfg.c_dim + 1) * W + (cfg.z_dim + W + 1) * W + cfg.mapping_layers * (W + 1) * W + 2 * W + 64
        return blocks + mapping
    C = max(cfg.channels(r) for r in [4, *cfg.block_resolutions])
    k, m, cm = cfg.img_channels, cfg.mbstd_num_channels, max(cfg.effective_cmap_dim, 1)
    block = (2 * k + 2) * (C + 1) + 2 * (9 * C + 1) * C + C * C + 512      # + resampling filters
    epilogue = (9 * (C + m) + 1) * C + (16 * C + 1) * C + (C + 1) * cm + 512
    mapping = (cfg.c_dim + 1) * cm + cfg.mapping_layers * (2 * cm + 1) * cm + 512
    return 2 * (len(cfg.block_resolutions) * block + epilogue + mapping)


def _check_dtypes(path: str, sd: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], label: str,
                  what: str) -> None:
    """Floating-point tensors where the model has them (load_state_dict would cast int8/bool weights
    silently); any float width is fine (fp16/bf16/fp64 checkpoints are cast to the model's fp32)."""
    for k in sorted(sd):
        t, e = sd[k], expected[k]
        if t.is_complex() or t.is_floating_point() != e.is_floating_point():
            raise CheckpointError(f"{path}: tensor {label + k!r} has dtype {str(t.dtype).replace('torch.', '')}, but "
                                  f"the {what} expects "
                                  f"{'a floating-point tensor' if e.is_floating_point() else e.dtype}")


def _build(path: str, net: _Net, device: Union[str, torch.device]) -> torch.nn.Module:
    from ..networks import Discriminator, Generator

    is_d = net.role == "D"
    what = "discriminator" if is_d else "generator"
    cfg = net.config.fn() if isinstance(net.config, _Lazy) else net.config
    try:
        cfg.validate()  # bounds of every size (digan.config), whatever path the config came by
    except ValueError as e:
        raise CheckpointError(f"{path}: the {what}'s config is invalid: {e}") from None
    cls = Discriminator if is_d else Generator
    # A config (e.g. JSON in the metadata) can describe a network far larger than the file. When its
    # size bound exceeds the file's tensors, the shapes are compared on the meta device first (no
    # memory; but its first use imports torch._dynamo, seconds, so files that fit skip it).
    file_numel = sum(t.numel() for t in net.state_dict.values())
    if numel_bound(cfg) > META_CHECK_FACTOR * file_numel + META_CHECK_SLACK:
        with torch.device("meta"):
            _check_layout(path, net.state_dict, cls(cfg).state_dict(), net.label, what)
    with torch.random.fork_rng(devices=[]):  # random init must not move the caller's RNG
        module = cls(cfg)
    reference = module.state_dict()
    _check_layout(path, net.state_dict, reference, net.label, what)
    _check_dtypes(path, net.state_dict, reference, net.label, what)
    _check_finite(path, net.state_dict, net.label)
    try:
        module.load_state_dict(net.state_dict, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: {e}") from None
    return module.to(device).eval()


def load_generator(path: PathLike, device: Union[str, torch.device] = "cpu", which: str = "G_ema"):
    """Generator from our safetensors (generator or training file), an official .pkl or a torch state dict.

    which: 'G_ema' (default; falls back to 'G' with a warning when the file has no G_ema) or 'G'."""
    path = _existing(path)
    roles = _gen_roles(which)
    nets = _read_networks(path, roles)
    return _build(path, next(iter(nets.values())), device)


def load_discriminator(path: PathLike, device: Union[str, torch.device] = "cpu"):
    """Discriminator from our safetensors (discriminator or training file), an official .pkl or a state dict."""
    path = _existing(path)
    nets = _read_networks(path, ["D"])
    return _build(path, nets["D"], device)


@dataclass
class TrainingCheckpoint:
    G: Any
    D: Any
    G_ema: Any
    extra_tensors: Dict[str, torch.Tensor]
    metadata: Dict[str, str]


def load_training(path: PathLike, device: Union[str, torch.device] = "cpu") -> TrainingCheckpoint:
    """Every network of a checkpoint (None where absent), plus, for our files, the other tensors
    (e.g. 'opt.*') and the metadata."""
    path = _existing(path)
    nets = _read_networks(path)
    mods = {role: _build(path, net, device) for role, net in nets.items()}
    extra, meta = {}, {}
    if _sniff(path) == "safetensors":
        st = _read_safetensors_header(path)
        meta = dict(st.metadata)
        if meta.get("format") == FORMAT and meta.get("kind") == "training":
            extra = st.get([k for k in st.keys() if not k.startswith(NETWORK_PREFIXES)])
    return TrainingCheckpoint(G=mods.get("G"), D=mods.get("D"), G_ema=mods.get("G_ema"), extra_tensors=extra,
                              metadata=meta)
