"""Writing our safetensors format (save_generator / save_discriminator / save_training) and convert."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional

import torch

from ..config import DiscriminatorConfig, GeneratorConfig
from ..fsio import atomic_save
from ._common import FORMAT, FORMAT_VERSION, NETWORK_PREFIXES, PathLike, _existing, _first_line
from .formats import _read_networks
from .loading import _build

# =============================================================================================
# Writing
# =============================================================================================

def _module_config(module: Any, cls, what: str):
    cfg = getattr(module, "cfg", None)
    if not isinstance(cfg, cls):
        raise TypeError(f"{what} must be a digan.networks module with a {cls.__name__} in .cfg, "
                        f"got {type(module).__name__}")
    return cfg


def _plain_tensors(sd: Mapping[str, torch.Tensor], prefix: str, out: Dict[str, torch.Tensor], seen: set) -> None:
    for k, t in sd.items():
        t = t.detach().to("cpu").contiguous()
        ptr = t.untyped_storage().data_ptr() if t.numel() else None
        if ptr is not None and ptr in seen:
            t = t.clone()
        elif ptr is not None:
            seen.add(ptr)
        out[prefix + k] = t


def _base_metadata(kind: str) -> Dict[str, str]:
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": kind}


def _umask() -> int:
    """The process umask (read from /proc where possible: os.umask can only be read by setting it)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def check_output_path(path: PathLike) -> Path:
    """The output path of a checkpoint, checked before any work: its folder must exist (it is not
    created, so a typo in a path is reported instead of making folders) and it is not a folder."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.exists():
        raise FileNotFoundError(f"cannot write {path}: the folder {parent} does not exist")
    if not parent.is_dir():
        raise NotADirectoryError(f"cannot write {path}: {parent} is not a folder")
    if path.is_dir():
        raise IsADirectoryError(f"cannot write {path}: it is a folder")
    return path


def _write(path: PathLike, tensors: Dict[str, torch.Tensor], metadata: Dict[str, str]) -> Path:
    """Write atomically (temp file + rename). The output folder must exist: it is not created, so a
    typo in a path is reported (FileNotFoundError, one line in the CLI) instead of making folders."""
    from safetensors.torch import save_file

    path = check_output_path(path)

    def save(tmp: Path) -> None:
        try:
            save_file(tensors, str(tmp), metadata=metadata)
        except Exception as e:  # safetensors' errors are not OSErrors (disk full, permissions)
            if isinstance(e, OSError):
                raise
            raise OSError(f"cannot write {path}: {_first_line(e)}") from None
        # safetensors writes through a private temp file (mode 0600): give the checkpoint the mode
        # any file created by this user gets (0666 minus the umask), like open() would.
        os.chmod(tmp, 0o666 & ~_umask())

    return atomic_save(path, save)  # readers never see a half-written checkpoint


def save_generator(G: Any, path: PathLike) -> Path:
    cfg = _module_config(G, GeneratorConfig, "G")
    tensors: Dict[str, torch.Tensor] = {}
    _plain_tensors(G.state_dict(), "", tensors, set())
    return _write(path, tensors, {**_base_metadata("generator"), "config": cfg.to_json()})


def save_discriminator(D: Any, path: PathLike) -> Path:
    cfg = _module_config(D, DiscriminatorConfig, "D")
    tensors: Dict[str, torch.Tensor] = {}
    _plain_tensors(D.state_dict(), "", tensors, set())
    return _write(path, tensors, {**_base_metadata("discriminator"), "config": cfg.to_json()})


def save_training(path: PathLike, G: Any = None, D: Any = None, G_ema: Any = None,
                  extra_tensors: Optional[Mapping[str, torch.Tensor]] = None,
                  extra_metadata: Optional[Mapping[str, str]] = None) -> Path:
    """Training checkpoint: G., D., G_ema. tensors, g_config/d_config, plus extra tensors (names must
    not use those prefixes, e.g. 'opt.G.0.exp_avg') and extra string metadata."""
    if G is None and G_ema is None and D is None:
        raise ValueError("save_training needs at least one network")
    meta = _base_metadata("training")
    g_cfgs = [_module_config(m, GeneratorConfig, n) for n, m in (("G", G), ("G_ema", G_ema)) if m is not None]
    if len(g_cfgs) == 2 and g_cfgs[0] != g_cfgs[1]:
        raise ValueError("G and G_ema have different configs")
    if g_cfgs:
        meta["g_config"] = g_cfgs[0].to_json()
    if D is not None:
        meta["d_config"] = _module_config(D, DiscriminatorConfig, "D").to_json()
    for k, v in (extra_metadata or {}).items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise TypeError(f"extra_metadata must map str to str, got {k!r}: {type(v).__name__}")
        if k in meta or k in ("format", "format_version", "kind", "config", "g_config", "d_config"):
            raise ValueError(f"extra_metadata key {k!r} is reserved")
        meta[k] = v
    tensors: Dict[str, torch.Tensor] = {}
    seen: set = set()
    for prefix, m in (("G.", G), ("D.", D), ("G_ema.", G_ema)):
        if m is not None:
            _plain_tensors(m.state_dict(), prefix, tensors, seen)
    extra = {}
    for k, t in (extra_tensors or {}).items():
        if not isinstance(k, str) or k.startswith(NETWORK_PREFIXES):
            raise ValueError(f"extra tensor name {k!r} must not start with {', '.join(NETWORK_PREFIXES)}")
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"extra tensor {k!r} is a {type(t).__name__}, not a tensor")
        extra[k] = t
    _plain_tensors(extra, "", tensors, seen)
    return _write(path, tensors, meta)


def convert(in_path: PathLike, out_path: PathLike,
            progress: Optional[Callable[[str, int, int], None]] = None) -> Path:
    """Official .pkl, torch state dict or foreign safetensors -> our safetensors; returns out_path.

    The kind written is 'training' when the input holds more than one network (e.g. G, D and G_ema,
    so that `load_generator` picks G_ema), else 'generator' or 'discriminator'. Every network is
    built and loaded strictly first, so a converted file always loads.

    `progress(step, n, total)`, when given, counts tensors: total = 2 x the input's tensors (each is
    loaded into its network, then written); called with n = 0 once the input is parsed ('read'),
    with each network's tensor count as it is loaded ('load G_ema') and with all of them once the
    file is written ('write')."""
    in_path = _existing(in_path)
    if os.path.abspath(in_path) == os.path.abspath(os.fspath(out_path)):
        raise ValueError("convert: the output must be a different file from the input")
    check_output_path(out_path)        # before reading anything: a bad output path costs nothing
    report = progress or (lambda step, n, total: None)
    nets = _read_networks(in_path)
    # Strict loading (_build) makes each module's state dict the network's tensors, key for key, so
    # the file written holds exactly these.
    n_tensors = sum(len(net.state_dict) for net in nets.values())
    total = 2 * n_tensors
    report("read", 0, total)
    mods = {}
    for role, net in nets.items():
        mods[role] = _build(in_path, net, "cpu")
        report(f"load {role}", len(net.state_dict), total)
    gens = [r for r in ("G", "G_ema") if r in mods]
    if len(mods) > 1:
        out = save_training(out_path, G=mods.get("G"), D=mods.get("D"), G_ema=mods.get("G_ema"))
    elif gens:
        out = save_generator(mods[gens[0]], out_path)
    else:
        out = save_discriminator(mods["D"], out_path)
    report("write", n_tensors, total)
    return out
