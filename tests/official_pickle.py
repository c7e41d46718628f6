"""Writes network pickles in the official StyleGAN2-ADA / DIGAN `persistence` format (tests only).

The official training loop pickles dict(G=..., D=..., G_ema=..., augment_pipe=..., training_set_kwargs=...)
where every network module is a `@persistence.persistent_class` instance. Such an instance pickles as
the call `torch_utils.persistence._reconstruct_persistent_obj(meta)`, with
meta = dict(type='class', version=6, module_src=<source of its module>, class_name=..., state=<__dict__>),
and the state holds `_parameters` / `_buffers` / `_modules` OrderedDicts, `_init_args`, `_init_kwargs`
(with dnnlib EasyDicts) and plain attributes: numpy scalars, omegaconf DictConfigs, torch.distributions
Betas. Sub-modules from torch.nn (Sequential, ModuleList) pickle normally through copyreg.

Here the same bytes are produced from one of our networks without the official code: the globals
that the pickle must name (torch_utils.persistence, dnnlib.util, omegaconf.*) are stand-ins that are
registered in sys.modules only while `pickle.dump` runs. Every record's module_src is a program that,
if anything ever executed it, would create a marker file and exit — so a test can prove it never ran.
"""
from __future__ import annotations

import collections
import contextlib
import io
import pickle
import sys
import types
import typing
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch

from digan.config import DiscriminatorConfig, GeneratorConfig

# Our class name -> the official one, where they differ.
OFFICIAL_CLASS_NAMES = {"SingleDiscriminator": "ImageDiscriminator", "Discriminator": "OurDiscriminator"}


def module_src(marker: Path) -> str:
    """Source stored in every record; running it would leave `marker` behind."""
    return (f"import pathlib\npathlib.Path({str(marker)!r}).write_text('module_src was executed')\n"
            f"raise SystemExit('module_src must never be executed')\n")


# ---- stand-ins for the globals an official pickle names ----------------------------------------

def _reconstruct_persistent_obj(meta):  # referenced by name only while pickling
    raise RuntimeError("the test stand-in of torch_utils.persistence must never be used to load")


_reconstruct_persistent_obj.__module__ = "torch_utils.persistence"


class EasyDict(dict):
    pass


EasyDict.__module__ = "dnnlib.util"


class DictConfig:
    pass


class ListConfig:
    pass


class AnyNode:
    pass


class ContainerMetadata:
    pass


class Metadata:
    pass


DictConfig.__module__ = "omegaconf.dictconfig"
ListConfig.__module__ = "omegaconf.listconfig"
AnyNode.__module__ = "omegaconf.nodes"
ContainerMetadata.__module__ = Metadata.__module__ = "omegaconf.base"

_FAKE_MODULES = {
    "torch_utils": {},
    "torch_utils.persistence": {"_reconstruct_persistent_obj": _reconstruct_persistent_obj},
    "dnnlib": {"EasyDict": EasyDict},
    "dnnlib.util": {"EasyDict": EasyDict},
    "omegaconf": {"DictConfig": DictConfig, "ListConfig": ListConfig},
    "omegaconf.dictconfig": {"DictConfig": DictConfig},
    "omegaconf.listconfig": {"ListConfig": ListConfig},
    "omegaconf.nodes": {"AnyNode": AnyNode},
    "omegaconf.base": {"ContainerMetadata": ContainerMetadata, "Metadata": Metadata},
}


@contextlib.contextmanager
def fake_official_modules():
    """Register the stand-in modules while pickling; afterwards sys.modules is as before."""
    saved = {name: sys.modules.get(name) for name in _FAKE_MODULES}
    try:
        for name, attrs in _FAKE_MODULES.items():
            mod = types.ModuleType(name)
            mod.__dict__.update(attrs)
            sys.modules[name] = mod
        yield
    finally:
        for name, old in saved.items():
            if old is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = old


def _new(cls, state: dict):
    obj = cls.__new__(cls)
    obj.__dict__.update(state)
    return obj


def dictconfig(d: Any, parent: Any = None, key: Any = None) -> Any:
    """An omegaconf-2.0-like DictConfig/ListConfig/AnyNode tree holding `d` (interpolations as strings)."""
    if isinstance(d, dict):
        meta = _new(ContainerMetadata, dict(ref_type=typing.Any, object_type=dict, optional=True, key=key,
                                            flags={}, resolver_cache=collections.defaultdict(dict),
                                            key_type=typing.Any, element_type=typing.Any))
        node = _new(DictConfig, dict(_metadata=meta, _parent=parent, _content=None))
        node._content = {k: dictconfig(v, node, k) for k, v in d.items()}
        return node
    if isinstance(d, (list, tuple)):
        meta = _new(ContainerMetadata, dict(ref_type=typing.Any, object_type=list, optional=True, key=key, flags={},
                                            resolver_cache=collections.defaultdict(dict), key_type=int,
                                            element_type=typing.Any))
        node = _new(ListConfig, dict(_metadata=meta, _parent=parent, _content=None))
        node._content = [dictconfig(v, node, i) for i, v in enumerate(d)]
        return node
    meta = _new(Metadata, dict(ref_type=typing.Any, object_type=None, optional=True, key=key, flags={}))
    return _new(AnyNode, dict(_metadata=meta, _parent=parent, _val=d))


class Persistent:
    """A persistent_class instance as the official code pickles it."""

    def __init__(self, class_name: str, state: dict, src: str):
        self.class_name, self.state, self.src = class_name, state, src

    def __reduce__(self):
        meta = dict(type="class", version=6, module_src=self.src, class_name=self.class_name, state=self.state)
        return _reconstruct_persistent_obj, (meta,)


class Gadget:
    """Pickles as func(*args): the classic code-execution payload."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


# ---- official configs ----------------------------------------------------------------------

def official_generator_cfg(cfg: GeneratorConfig) -> dict:
    """The `cfg` kwarg of the official Generator (OmegaConf.to_container of configs/digan.yml's generator)."""
    res_cfg = dict(predictable_emb_size=cfg.emb_size, use_cosine=True, use_diagonal=True)
    return dict(
        fp32=True, upsampling_mode="nearest", use_noise=False, fmaps=cfg.channel_base / 32768,
        num_extra_convs={str(k): v for k, v in cfg.num_extra_convs.items()},
        input=dict(type="coords", resolution=cfg.input_resolution, coord_fuser_cfg="${coords}"),
        coords=dict(enabled=True, per_resolution=True, kernel_size=1, coord_dim=2, fallback=False, use_full_cache=False,
                    global_motion=False, motion_sigma=cfg.motion_sigma, low_res_cfg=res_cfg,
                    res_configs={str(r): "${coords.low_res_cfg}" for r in (4, 8, 16, 32, 64, 128, 256)}),
        fmm=dict(enabled=True, rank=cfg.rank, activation="demod"))


def generator_init_kwargs(cfg: GeneratorConfig) -> dict:
    return dict(z_dim=cfg.z_dim, c_dim=cfg.c_dim, w_dim=cfg.w_dim, img_resolution=cfg.img_resolution,
                img_channels=cfg.img_channels, ours=True,
                mapping_kwargs=EasyDict(num_layers=cfg.mapping_layers),
                synthesis_kwargs=EasyDict(channel_base=cfg.channel_base, channel_max=cfg.channel_max, num_fp16_res=0,
                                          conv_clamp=cfg.conv_clamp),
                cfg=official_generator_cfg(cfg))


def discriminator_init_kwargs(cfg: DiscriminatorConfig) -> dict:
    return dict(c_dim=cfg.c_dim, img_resolution=cfg.img_resolution, img_channels=cfg.img_channels,
                channel_base=cfg.channel_base, channel_max=cfg.channel_max, num_fp16_res=cfg.num_fp16_res,
                conv_clamp=cfg.conv_clamp, architecture="resnet", block_kwargs=EasyDict(),
                mapping_kwargs=EasyDict(), epilogue_kwargs=EasyDict(mbstd_group_size=cfg.mbstd_group_size))


# ---- records from one of our modules ---------------------------------------------------------

_PLAIN = (bool, int, float, str, type(None), np.generic)


def module_record(module: torch.nn.Module, marker: Path, *, attrs: bool = True, init_kwargs: Optional[dict] = None,
                  official_cfg: Optional[dict] = None) -> Any:
    """The pickled form of `module` as the official code would write it (recursively)."""
    name = type(module).__name__
    children = collections.OrderedDict(
        (n, module_record(c, marker, attrs=attrs, official_cfg=official_cfg) if c is not None else None)
        for n, c in module._modules.items())
    state: Dict[str, Any] = {
        "training": False,
        "_parameters": collections.OrderedDict(module._parameters),
        "_buffers": collections.OrderedDict(module._buffers),
        "_non_persistent_buffers_set": set(module._non_persistent_buffers_set),
        "_backward_hooks": collections.OrderedDict(),
        "_forward_hooks": collections.OrderedDict(),
        "_forward_pre_hooks": collections.OrderedDict(),
        "_state_dict_hooks": collections.OrderedDict(),
        "_load_state_dict_pre_hooks": collections.OrderedDict(),
        "_modules": children,
    }
    if isinstance(module, (torch.nn.Sequential, torch.nn.ModuleList)):
        obj = type(module).__new__(type(module))   # pickled by copyreg: NEWOBJ + BUILD(state)
        object.__setattr__(obj, "__dict__", state)
        return obj
    if attrs:
        for k, v in module.__dict__.items():
            if not k.startswith("_") and k not in ("training", "cfg") and isinstance(v, _PLAIN):
                state[k] = v
        if name == "CoordFuser":
            state.update(use_cosine=True, predictable_emb_size=module.emb_size,
                         fourier_scale=np.float64(module.fourier_scale), motion_sigma=module.motion_sigma,
                         dist1=torch.distributions.beta.Beta(2.0, 1.0), dist2=torch.distributions.beta.Beta(1.0, 2.0))
        if name == "SynthesisBlock":
            state.setdefault("coord_fuser", None)
            state.setdefault("extra_convs", None)
        if name == "Generator":
            state.update(dist1=torch.distributions.beta.Beta(2.0, 1.0), dist2=torch.distributions.beta.Beta(1.0, 2.0),
                         img_shape=torch.Size([module.img_channels, module.img_resolution, module.img_resolution]))
        if official_cfg is not None and name in ("CoordFuser", "SynthesisLayer", "SynthesisBlock", "SynthesisNetwork"):
            state["cfg"] = dictconfig(official_cfg["coords"] if name == "CoordFuser" else official_cfg)
    state["_init_args"] = ()
    state["_init_kwargs"] = init_kwargs if init_kwargs is not None else {}
    return Persistent(OFFICIAL_CLASS_NAMES.get(name, name), state, module_src(marker))


def generator_record(G, marker: Path, *, attrs: bool = True, kwargs: bool = True) -> Persistent:
    official_cfg = official_generator_cfg(G.cfg) if attrs else None
    return module_record(G, marker, attrs=attrs, init_kwargs=generator_init_kwargs(G.cfg) if kwargs else {},
                         official_cfg=official_cfg)


def discriminator_record(D, marker: Path, *, attrs: bool = True, kwargs: bool = True) -> Persistent:
    return module_record(D, marker, attrs=attrs, init_kwargs=discriminator_init_kwargs(D.cfg) if kwargs else {})


def network_pickle_bytes(*, G=None, D=None, G_ema=None, marker: Path, protocol: int = 4, attrs: bool = True,
                         kwargs: bool = True, extra: Optional[dict] = None) -> bytes:
    """Bytes of an official network pickle holding the given networks (ours, as records)."""
    data: Dict[str, Any] = {}
    if G is not None:
        data["G"] = generator_record(G, marker, attrs=attrs, kwargs=kwargs)
    if D is not None:
        data["D"] = discriminator_record(D, marker, attrs=attrs, kwargs=kwargs)
    if G_ema is not None:
        data["G_ema"] = generator_record(G_ema, marker, attrs=attrs, kwargs=kwargs)
    data["augment_pipe"] = None
    data["training_set_kwargs"] = dict(class_name="training.dataset.ImageFolderDataset", path="/data/sky",
                                       use_labels=False, max_size=np.int64(1000), xflip=True, resolution=32)
    data.update(extra or {})
    return dump(data, protocol)


def dump(data: Any, protocol: int = 4) -> bytes:
    """pickle.dumps with the official globals resolvable (records, EasyDict, omegaconf stand-ins)."""
    buf = io.BytesIO()
    with fake_official_modules():
        pickle.dump(data, buf, protocol=protocol)
    return buf.getvalue()


def write_network_pickle(path: Path, **kw) -> Path:
    path = Path(path)
    path.write_bytes(network_pickle_bytes(**kw))
    return path
