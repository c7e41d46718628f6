"""Reading files: format sniffing, the safetensors and torch.save readers, and the networks of a file."""
from __future__ import annotations

import json
import math
import os
import pickle
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from ..config import DiscriminatorConfig, GeneratorConfig
from ._common import (
    FORMAT,
    FORMAT_VERSION,
    KINDS,
    CheckpointError,
    PathLike,
    UnsafeCheckpointError,
    _existing,
    _first_line,
    _torch_refusal,
)
from .inference import infer_discriminator_config, infer_generator_config
from .official import OfficialNetwork, _discriminator_hints, _generator_hints, read_official_pickle
from .standins import MAX_FLAT_ENTRIES

# =============================================================================================
# Reading files
# =============================================================================================

_SAFETENSORS_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                         "BOOL": 1, "U16": 2, "U32": 4, "U64": 8, "F8_E4M3": 1, "F8_E5M2": 1}
_LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"


def _sniff(path: str) -> str:
    """'safetensors', 'pickle' (official network pickle) or 'torch' (torch.save), from the content."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(16)
    if size == 0:
        raise CheckpointError(f"{path}: the file is empty")
    if head.startswith(b"PK\x03\x04") or head.startswith(_LEGACY_TORCH_MAGIC):
        return "torch"
    if len(head) >= 9 and head[8:9] == b"{":
        # A safetensors header length can start with byte 0x80 (e.g. 0xD880 bytes); a pickle's first
        # 8 bytes (0x80, protocol, frame opcode, ...) read as a length far beyond the file.
        n = int.from_bytes(head[:8], "little")
        if n <= size - 8:
            return "safetensors"
        if head[:1] != b"\x80":
            raise CheckpointError(f"{path}: truncated safetensors file: the header needs {n} bytes but the file has "
                                  f"{size - 8} after the length")
    if head[:1] == b"\x80" or head[:1] in (b"(", b"}", b"]", b"c"):  # protocol >= 2; typical protocol 0/1 starts
        return "pickle"
    raise CheckpointError(f"{path}: unknown checkpoint format (starts with {head[:8]!r}); expected our safetensors "
                          f"format, an official .pkl network pickle or a torch.save state dict")


@dataclass
class _SafetensorsFile:
    path: str
    metadata: Dict[str, str]
    entries: Dict[str, dict]

    def keys(self) -> List[str]:
        return list(self.entries)

    def get(self, names: Sequence[str]) -> Dict[str, torch.Tensor]:
        from safetensors import safe_open

        out = {}
        try:
            with safe_open(self.path, framework="pt", device="cpu") as f:
                for name in names:
                    try:
                        out[name] = f.get_tensor(name)
                    except Exception as e:
                        raise CheckpointError(f"{self.path}: cannot read tensor {name!r}: {_first_line(e)}") from None
        except CheckpointError:
            raise
        except Exception as e:
            raise CheckpointError(f"{self.path}: corrupt safetensors file: {_first_line(e)}") from None
        return out


def _read_safetensors_header(path: str) -> _SafetensorsFile:
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if n > size - 8 or n > 1 << 28:
            raise CheckpointError(f"{path}: truncated safetensors file: the header needs {n} bytes")
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: corrupt safetensors header ({e})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header (not a JSON object)")
    meta = header.pop("__metadata__", None) or {}
    data_len = size - 8 - n
    for name, e in sorted(header.items(), key=lambda kv: _offsets(kv[1])[1]):
        begin, end = _offsets(e)
        if not (0 <= begin <= end):
            raise CheckpointError(f"{path}: corrupt safetensors header: tensor {name!r} has offsets {begin}..{end}")
        if end > data_len:
            raise CheckpointError(f"{path}: truncated safetensors file: tensor {name!r} needs bytes {begin}..{end} of "
                                  f"the data section but the file holds only {data_len}")
        item = _SAFETENSORS_ITEMSIZE.get(e.get("dtype"))
        shape = e.get("shape")
        if item is not None and isinstance(shape, list) and math.prod(shape) * item != end - begin:
            raise CheckpointError(f"{path}: corrupt safetensors header: tensor {name!r} of shape {tuple(shape)} and "
                                  f"dtype {e.get('dtype')} does not fill its {end - begin} bytes")
    return _SafetensorsFile(path, {str(k): str(v) for k, v in meta.items()}, header)


def _offsets(e: Any) -> Tuple[int, int]:
    try:
        b, en = e["data_offsets"]
        return int(b), int(en)
    except Exception:
        return -1, -1


def read_metadata(path: PathLike) -> Dict[str, str]:
    """The metadata dict of a safetensors checkpoint (ours: format, format_version, kind, configs)."""
    path = _existing(path)
    if _sniff(path) != "safetensors":
        raise CheckpointError(f"{path}: not a safetensors file")
    return dict(_read_safetensors_header(path).metadata)


def _torch_load(path: str) -> Any:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights_only" in str(e).lower() or "Unsupported global" in str(e):
            raise UnsafeCheckpointError(f"{path}: refusing to load: the torch.save file is not plain weights"
                                        f"{_torch_refusal(e)}") from None
        raise CheckpointError(f"{path}: corrupt torch.save file ({_first_line(e)})") from None
    except Exception as e:
        raise CheckpointError(f"{path}: corrupt or truncated torch.save file "
                              f"({type(e).__name__}: {_first_line(e)})") from None


def _flatten(obj: Any, prefix: str, out: Dict[str, torch.Tensor], depth: int = 0,
             _count: Optional[List[int]] = None) -> None:
    # A shared dict (torch's unpickler keeps references) would be walked once per reference: count.
    count = [0] if _count is None else _count
    if depth > 20:
        return
    for k, v in obj.items():
        count[0] += 1
        if count[0] > MAX_FLAT_ENTRIES:
            raise CheckpointError(f"the state dict has more than {MAX_FLAT_ENTRIES} entries (shared nested dicts?)")
        key = f"{prefix}{k}"
        if isinstance(v, torch.Tensor):
            out[key] = v
        elif isinstance(v, dict):
            _flatten(v, key + ".", out, depth + 1, count)


def _flat(path: str, obj: dict) -> Dict[str, torch.Tensor]:
    flat: Dict[str, torch.Tensor] = {}
    try:
        _flatten(obj, "", flat)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    return flat


def _split_networks(flat: Mapping[str, torch.Tensor]) -> Dict[str, Dict[str, torch.Tensor]]:
    """{'G': sd, 'G_ema': sd, 'D': sd} from a flat dict with G./G_ema./D. prefixes or unprefixed keys."""
    groups = {}
    for role in ("G_ema", "G", "D"):
        p = role + "."
        sub = {k[len(p):]: v for k, v in flat.items() if k.startswith(p)}
        if sub:
            groups[role] = sub
    if not groups:
        gen = {k: v for k, v in flat.items() if not k.startswith(("videoD.", "imageD."))}
        dis = {k: v for k, v in flat.items() if k.startswith(("videoD.", "imageD."))}
        if any(k.startswith(("mapping.", "synthesis.")) for k in gen):
            groups["G"] = gen
        if dis:
            groups["D"] = dis
    return groups


@dataclass
class _Net:
    role: str                       # 'G', 'G_ema' or 'D'
    state_dict: Dict[str, torch.Tensor]
    config: Any                     # GeneratorConfig / DiscriminatorConfig
    label: str                      # key prefix for messages ('' or 'G_ema.')


def _parse_config(path: str, meta: Mapping[str, str], key: str, cls):
    if key not in meta:
        raise CheckpointError(f"{path}: the metadata lacks {key!r}")
    try:
        return cls.from_dict(json.loads(meta[key]))
    except (json.JSONDecodeError, TypeError, ValueError, RecursionError) as e:
        # the config's own validation (digan.config) bounds every size before anything is built
        raise CheckpointError(f"{path}: metadata {key!r} is not a valid {cls.__name__}: "
                              f"{'nested too deeply' if isinstance(e, RecursionError) else _first_line(e)}") \
            from None


def _gen_roles(which: str) -> List[str]:
    if which not in ("G_ema", "G"):
        raise ValueError(f"which must be 'G_ema' or 'G', got {which!r}")
    return ["G_ema", "G"] if which == "G_ema" else ["G"]


def _choose(path: str, available: Sequence[str], roles: Sequence[str], what: str) -> str:
    for role in roles:
        if role in available:
            return role
    raise CheckpointError(f"{path}: no {what} in the checkpoint (looked for {', '.join(roles)}; it holds "
                          f"{', '.join(available) or 'no network'})")


def _networks_from_ours(path: str, st: _SafetensorsFile, roles: Optional[Sequence[str]]) -> Dict[str, _Net]:
    """The networks of our safetensors file (all of them, or the first of `roles` that it holds)."""
    meta = st.metadata
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{path}: format_version {version!r} is not supported (this engine reads "
                              f"{FORMAT_VERSION!r})")
    kind = meta.get("kind")
    if kind not in KINDS:
        raise CheckpointError(f"{path}: unknown checkpoint kind {kind!r} (expected one of {', '.join(KINDS)})")
    if kind == "training":
        present = {r for r in ("G_ema", "G", "D") if any(k.startswith(r + ".") for k in st.keys())}
        layout = {r: (r + ".", "g_config" if r != "D" else "d_config") for r in present}
    else:
        role = "G" if kind == "generator" else "D"
        layout = {role: ("", "config")}
    wanted = list(layout)
    if roles is not None and not (kind == "generator" and roles[0] != "D"):
        wanted = [_choose(path, list(layout), roles, "discriminator" if roles[0] == "D" else "generator")]
        if wanted[0] != roles[0]:
            _warn_fallback(path, roles[0], wanted[0])
    out = {}
    for role in wanted:
        prefix, cfg_key = layout[role]
        cfg = _parse_config(path, meta, cfg_key, DiscriminatorConfig if role == "D" else GeneratorConfig)
        names = [k for k in st.keys() if k.startswith(prefix)] if prefix else st.keys()
        tensors = st.get(names)
        out[role] = _Net(role, {k[len(prefix):]: v for k, v in tensors.items()}, cfg, prefix)
    return out


def _networks_from_state_dict(path: str, flat: Mapping[str, torch.Tensor]) -> Dict[str, _Net]:
    groups = _split_networks(flat)
    out = {}
    for role, sd in groups.items():
        label = f"{role}." if any(k.startswith(role + ".") for k in flat) else ""
        src = f"{path}{f' ({role})' if label else ''}"
        infer = infer_discriminator_config if role == "D" else infer_generator_config
        out[role] = _Net(role, sd, _Lazy(lambda sd=sd, src=src, infer=infer: infer(sd, None, src)), label)
    return out


class _Lazy:
    """A config inferred only when that network is actually used (so warnings concern it alone)."""

    def __init__(self, fn: Callable[[], Any]):
        self.fn = fn


def _networks_from_pickle(path: str) -> Dict[str, _Net]:
    data = read_official_pickle(path)
    nets = {k: v for k, v in data.items() if isinstance(v, OfficialNetwork) and k in ("G", "G_ema", "D")}
    if not nets:
        flat = _flat(path, data)
        if flat:
            return _networks_from_state_dict(path, flat)
        raise CheckpointError(f"{path}: the pickle holds no networks (keys: {', '.join(map(str, data)) or 'none'})")
    out = {}
    for role, net in nets.items():
        src = f"{path} ({role})"
        if role == "D":
            cfg = _Lazy(lambda net=net, src=src: infer_discriminator_config(
                net.state_dict, _discriminator_hints(net, src), src))
        else:
            cfg = _Lazy(lambda net=net, src=src: infer_generator_config(
                net.state_dict, _generator_hints(net, src), src))
        out[role] = _Net(role, net.state_dict, cfg, f"{role}.")
    return out


def _read_networks(path: str, roles: Optional[Sequence[str]] = None) -> Dict[str, _Net]:
    """Networks of any supported file; with `roles`, only the first of them that the file holds."""
    fmt = _sniff(path)
    if fmt == "safetensors":
        st = _read_safetensors_header(path)
        if st.metadata.get("format") == FORMAT:
            return _networks_from_ours(path, st, roles)
        nets = _networks_from_state_dict(path, st.get(st.keys()))
    elif fmt == "pickle":
        nets = _networks_from_pickle(path)
    else:
        obj = _torch_load(path)
        if not isinstance(obj, dict):
            raise CheckpointError(f"{path}: the torch.save file holds a {type(obj).__name__}, not a state dict")
        nets = _networks_from_state_dict(path, _flat(path, obj))
    if roles is not None:
        role = _choose(path, list(nets), roles, "discriminator" if roles[0] == "D" else "generator")
        if role != roles[0] and nets[role].label:  # an unprefixed state dict is simply "the generator"
            _warn_fallback(path, roles[0], role)
        nets = {role: nets[role]}
    return nets


def _warn_fallback(path: str, wanted: str, got: str) -> None:
    warnings.warn(f"{path}: the checkpoint has no {wanted}; loading {got}", UserWarning, stacklevel=4)
