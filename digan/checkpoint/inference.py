"""Config inference: GeneratorConfig / DiscriminatorConfig from the shapes of an official state dict."""
from __future__ import annotations

import math
import re
import warnings
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import torch

from ..config import DiscriminatorConfig, GeneratorConfig, _brief
from ._common import CheckpointError

# =============================================================================================
# Config inference
# =============================================================================================

_G_NONSHAPE = ("w_avg_beta", "motion_sigma", "fourier_scale", "conv_clamp")
_D_NONSHAPE = ("mbstd_group_size", "conv_clamp", "num_fp16_res")


def _refuse(source: str, param: str, why: str) -> CheckpointError:
    return CheckpointError(f"{source}: cannot infer {param}: {why}")


def _shape(sd: Mapping[str, torch.Tensor], key: str, source: str, param: str) -> Tuple[int, ...]:
    if key not in sd:
        raise _refuse(source, param, f"tensor {key!r} is missing")
    return tuple(sd[key].shape)


def _infer_channels(channels: Dict[int, int], hints: Mapping[str, Any], source: str) -> Tuple[int, int]:
    """(channel_base, channel_max) such that channels[res] == min(channel_base // res, channel_max)."""
    def explains(base, cmax):
        return all(min(base // r, cmax) == c for r, c in channels.items())

    desc = ", ".join(f"{r}: {c}" for r, c in sorted(channels.items()))
    if "channel_base" in hints and "channel_max" in hints:
        base, cmax = hints["channel_base"], hints["channel_max"]
        if not (isinstance(base, int) and isinstance(cmax, int) and explains(base, cmax)):
            bad = [r for r, c in sorted(channels.items()) if not isinstance(base, int) or not isinstance(cmax, int)
                   or min(base // r, cmax) != c]
            raise _refuse(source, "channel_base/channel_max",
                          f"the stored channel_base={_brief(base)}, channel_max={_brief(cmax)} do not give the "
                          f"tensors' channels "
                          f"per block ({desc}); first mismatch at resolution {bad[0] if bad else '?'}")
        return base, cmax
    if any(c <= 0 for c in channels.values()):
        raise _refuse(source, "channel_base/channel_max", f"a block has no channels ({desc})")
    cmax = max(channels.values())
    lo, hi = 0, math.inf
    for r, c in channels.items():
        if c < cmax:
            lo, hi = max(lo, c * r), min(hi, c * r + r - 1)
        else:
            lo = max(lo, cmax * r)
    if lo > hi or not explains(lo, cmax):
        raise _refuse(source, "channel_base/channel_max",
                      f"the channels per block ({desc}) cannot be written as min(channel_base // res, channel_max) "
                      f"for any channel_base and channel_max")
    return int(lo), int(cmax)


def _check_hint(hints: Mapping[str, Any], name: str, value: Any, source: str, evidence: str) -> None:
    if name in hints and hints[name] is not None and hints[name] != value:
        raise _refuse(source, name, f"the checkpoint's stored {name}={_brief(hints[name])} contradicts the tensors "
                                    f"({evidence} gives {value!r})")


def _pick_nonshape(names: Sequence[str], hints: Mapping[str, Any], defaults: Any, source: str,
                   what: str) -> Dict[str, Any]:
    out, defaulted = {}, []
    for name in names:
        if name in hints:
            out[name] = hints[name]
        else:
            out[name] = getattr(defaults, name)
            defaulted.append(f"{name}={out[name]!r}")
    if defaulted:
        names = ", ".join(n.split("=")[0] for n in defaulted)
        warnings.warn(f"{source}: the {what} checkpoint does not store {names}; using DIGAN's released defaults "
                      f"({', '.join(defaulted)})", UserWarning, stacklevel=3)
    return out


def _make_config(cls, kwargs: Dict[str, Any], source: str):
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{source}: inferred hyper-parameters are invalid: {e}") from None


def infer_generator_config(sd: Mapping[str, torch.Tensor], hints: Optional[Mapping[str, Any]] = None,
                           source: str = "state dict") -> GeneratorConfig:
    """GeneratorConfig from an official generator state dict (unprefixed keys).

    `hints` holds values the checkpoint stores (shape-derived ones are checked against the tensors;
    non-shape ones — w_avg_beta, motion_sigma, fourier_scale, conv_clamp — are used as given, and
    DIGAN's defaults are used with a warning for those absent)."""
    hints = dict(hints or {})
    # ---- mapping ---------------------------------------------------------------------------
    fc = sorted(int(m.group(1)) for k in sd for m in [re.fullmatch(r"mapping\.fc(\d+)\.weight", k)] if m)
    if not fc:
        raise _refuse(source, "mapping_layers", "there is no mapping.fc{i}.weight tensor")
    if fc != list(range(len(fc))):
        raise _refuse(source, "mapping_layers", f"mapping layers are numbered {fc}, not 0..{len(fc) - 1}")
    mapping_layers = len(fc)
    w_dim = _shape(sd, f"mapping.fc{mapping_layers - 1}.weight", source, "w_dim")[0]
    c_dim = _shape(sd, "mapping.embed.weight", source, "c_dim")[1] if "mapping.embed.weight" in sd else 0
    if c_dim and _shape(sd, "mapping.embed.weight", source, "c_dim")[0] != w_dim:
        raise _refuse(source, "c_dim", f"mapping.embed.weight has shape {tuple(sd['mapping.embed.weight'].shape)}; "
                                       f"its output must be w_dim={w_dim}")
    fc0_in = _shape(sd, "mapping.fc0.weight", source, "z_dim")[1]
    z_dim = fc0_in - (w_dim if c_dim else 0)
    if z_dim <= 0:
        raise _refuse(source, "z_dim", f"mapping.fc0.weight takes {fc0_in} inputs, leaving {z_dim} for z "
                                       f"after the {w_dim}-wide label embedding")
    # ---- blocks ----------------------------------------------------------------------------
    blocks = sorted({int(m.group(1)) for k in sd for m in [re.match(r"synthesis\.b(\d+)\.", k)] if m})
    if not blocks:
        raise _refuse(source, "img_resolution", "there is no synthesis.b{res} tensor")
    R = blocks[-1]
    want = [2 ** i for i in range(2, int(math.log2(R)) + 1)] if R >= 4 and R & (R - 1) == 0 else None
    if want != blocks:
        raise _refuse(source, "img_resolution", f"synthesis blocks {blocks} are not the blocks 4, 8, ..., R of a "
                                                f"power-of-two resolution")
    channels = {r: _shape(sd, f"synthesis.b{r}.conv1.weight", source, "channel_base/channel_max")[0] for r in blocks}
    img_channels = _shape(sd, "synthesis.b4.torgb.weight", source, "img_channels")[0]
    channel_base, channel_max = _infer_channels(channels, hints, source)
    # ---- FMM rank ----------------------------------------------------------------------------
    ranks = {}
    for k in sd:
        m = re.fullmatch(r"(synthesis\.b\d+\.(?:conv0|conv1|extra_convs\.\d+))\.affine\.weight", k)
        if not m:
            continue
        wshape = _shape(sd, f"{m.group(1)}.weight", source, "rank")
        n_out, cio = sd[k].shape[0], wshape[0] + wshape[1]
        if n_out % cio:
            raise _refuse(source, "rank", f"{k} has {n_out} outputs, not a multiple of C_in + C_out = {cio}")
        ranks[m.group(1)] = n_out // cio
    if not ranks:
        raise _refuse(source, "rank", "there is no synthesis layer")
    if len(set(ranks.values())) > 1:
        raise _refuse(source, "rank", f"layers disagree: {dict(sorted(ranks.items()))}")
    rank = next(iter(ranks.values()))
    # ---- coordinate embedding ----------------------------------------------------------------
    b4_fuser = "synthesis.b4.input.input.coord_fuser"
    n_xy = _shape(sd, f"{b4_fuser}.xyaffine.weight", source, "emb_size")[0]
    if n_xy % 3:
        raise _refuse(source, "emb_size", f"{b4_fuser}.xyaffine.weight has {n_xy} outputs, not 3 * emb_size "
                                          f"(2-D frequencies plus a phase per embedding channel)")
    emb_size = n_xy // 3
    conv1_in = _shape(sd, "synthesis.b4.conv1.weight", source, "emb_size")[1]
    if conv1_in != 2 * emb_size:
        raise _refuse(source, "emb_size", f"synthesis.b4.conv1.weight takes {conv1_in} channels but a {emb_size}-wide "
                                          f"embedding with sin and cos gives {2 * emb_size}")
    fused = [r for r in blocks if r > 4 and f"synthesis.b{r}.coord_fuser.xyaffine.weight" in sd]
    input_resolution = fused[0] // 2 if fused else R
    if not fused and isinstance(hints.get("input_resolution"), int) and hints["input_resolution"] >= R:
        hints.pop("input_resolution")  # every block runs at R either way
    if fused != [r for r in blocks if r > input_resolution]:
        raise _refuse(source, "input_resolution", f"blocks {fused} have a coordinate embedding; they must be exactly "
                                                  f"the blocks above the input resolution")
    # ---- extra convs -------------------------------------------------------------------------
    extra: Dict[int, int] = {}
    for r in blocks:
        pattern = re.compile(rf"synthesis\.b{r}\.extra_convs\.(\d+)\.")
        idx = sorted({int(m.group(1)) for k in sd for m in [pattern.match(k)] if m})
        if idx != list(range(len(idx))):
            raise _refuse(source, "num_extra_convs", f"block {r} has extra convs numbered {idx}")
        if idx:
            extra[r] = len(idx)
    stored_extra = hints.get("num_extra_convs")
    base_extra = stored_extra if isinstance(stored_extra, dict) else GeneratorConfig().num_extra_convs
    num_extra_convs = {**{int(k): int(v) for k, v in base_extra.items() if int(k) > R}, **extra}
    # ---- check what the checkpoint stores against the tensors ---------------------------------
    _check_hint(hints, "z_dim", z_dim, source, "mapping.fc0.weight")
    _check_hint(hints, "w_dim", w_dim, source, "mapping.fc*.weight")
    _check_hint(hints, "c_dim", c_dim, source, "mapping.embed.weight")
    _check_hint(hints, "img_resolution", R, source, "the synthesis blocks")
    _check_hint(hints, "img_channels", img_channels, source, "synthesis.b4.torgb.weight")
    _check_hint(hints, "mapping_layers", mapping_layers, source, "the mapping.fc{i} tensors")
    _check_hint(hints, "rank", rank, source, "the affine layers")
    _check_hint(hints, "emb_size", emb_size, source, f"{b4_fuser}.xyaffine.weight")
    _check_hint(hints, "input_resolution", input_resolution, source, "the blocks with a coordinate embedding")
    extra_values = _pick_nonshape(_G_NONSHAPE, hints, GeneratorConfig(), source, "generator")
    return _make_config(GeneratorConfig, dict(
        z_dim=z_dim, w_dim=w_dim, c_dim=c_dim, img_resolution=R, img_channels=img_channels,
        channel_base=channel_base, channel_max=channel_max, mapping_layers=mapping_layers, rank=rank,
        emb_size=emb_size, input_resolution=input_resolution, num_extra_convs=num_extra_convs, **extra_values), source)


def infer_discriminator_config(sd: Mapping[str, torch.Tensor], hints: Optional[Mapping[str, Any]] = None,
                               source: str = "state dict") -> DiscriminatorConfig:
    """DiscriminatorConfig from an official two-headed discriminator state dict (videoD.*, imageD.*)."""
    hints = dict(hints or {})
    for head in ("videoD", "imageD"):
        if not any(k.startswith(head + ".") for k in sd):
            raise _refuse(source, "img_resolution", f"there are no {head}.* tensors (DIGAN's discriminator has a "
                                                    f"motion head videoD and an image head imageD)")
    blocks = sorted({int(m.group(1)) for k in sd for m in [re.match(r"videoD\.b(\d+)\.", k)] if m})
    R = blocks[-1] if blocks else 0
    want = [2 ** i for i in range(2, int(math.log2(R)) + 1)] if R >= 8 and R & (R - 1) == 0 else None
    if want != blocks:
        raise _refuse(source, "img_resolution", f"videoD blocks {blocks} are not the blocks 4, 8, ..., R of a "
                                                f"power-of-two resolution")
    channels = {r: _shape(sd, f"videoD.b{r}.conv0.weight", source, "channel_base/channel_max")[0]
                for r in blocks if r > 4}
    conv = _shape(sd, "videoD.b4.conv.weight", source, "mbstd_num_channels")
    channels[4] = conv[0]
    mbstd_num_channels = conv[1] - conv[0]
    if mbstd_num_channels < 0:
        raise _refuse(source, "mbstd_num_channels",
                      f"videoD.b4.conv.weight has shape {conv}: fewer inputs than outputs")
    img_channels = _shape(sd, f"imageD.b{R}.fromrgb.weight", source, "img_channels")[1]
    vid_in = _shape(sd, f"videoD.b{R}.fromrgb.weight", source, "img_channels")[1]
    if vid_in != 2 * img_channels + 1:
        raise _refuse(source, "img_channels", f"videoD.b{R}.fromrgb.weight takes {vid_in} channels; the motion head "
                                              f"sees 2 * img_channels + 1 = {2 * img_channels + 1}")
    if not any(re.fullmatch(r"videoD\.b\d+\.skip\.weight", k) for k in sd):
        raise _refuse(source, "architecture", "there are no skip tensors: only the 'resnet' discriminator is supported")
    c_dim = _shape(sd, "videoD.mapping.embed.weight", source, "c_dim")[1] if "videoD.mapping.embed.weight" in sd else 0
    cmap_dim, mapping_layers = None, DiscriminatorConfig().mapping_layers
    if c_dim:
        out_dim = _shape(sd, "videoD.b4.out.weight", source, "cmap_dim")[0]
        cmap_dim = None if out_dim == channels[4] else out_dim
        fc = sorted(int(m.group(1)) for k in sd for m in [re.fullmatch(r"videoD\.mapping\.fc(\d+)\.weight", k)] if m)
        if fc != list(range(len(fc))) or not fc:
            raise _refuse(source, "mapping_layers", f"videoD label mapping layers are numbered {fc}")
        mapping_layers = len(fc)
    _check_hint(hints, "c_dim", c_dim, source, "videoD.mapping.embed.weight")
    _check_hint(hints, "img_resolution", R, source, "the videoD blocks")
    _check_hint(hints, "img_channels", img_channels, source, f"imageD.b{R}.fromrgb.weight")
    _check_hint(hints, "mbstd_num_channels", mbstd_num_channels, source, "videoD.b4.conv.weight")
    if c_dim:
        _check_hint(hints, "mapping_layers", mapping_layers, source, "videoD.mapping.fc{i}")
        if hints.get("cmap_dim") is not None:
            _check_hint(hints, "cmap_dim", cmap_dim if cmap_dim is not None else channels[4], source,
                        "videoD.b4.out.weight")
    channel_base, channel_max = _infer_channels(channels, hints, source)
    extra_values = _pick_nonshape(_D_NONSHAPE, hints, DiscriminatorConfig(), source, "discriminator")
    return _make_config(DiscriminatorConfig, dict(
        c_dim=c_dim, img_resolution=R, img_channels=img_channels, channel_base=channel_base, channel_max=channel_max,
        mbstd_num_channels=mbstd_num_channels, cmap_dim=cmap_dim, mapping_layers=mapping_layers, **extra_values),
        source)
