"""Official pickle records -> plain data (`to_plain`, `OfficialNetwork`), and the hyper-parameters
read from pickled init kwargs and module attributes (the 'hints' of config inference).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, Optional, Sequence, Tuple

import numpy as np
import torch

from ..config import _brief
from ._common import CheckpointError, PathLike, _existing
from .standins import MAX_MODULES, MAX_PLAIN_VALUES, PersistentRecord, _Inert, _InertDict, _TypeRef
from .unpickler import _unpickle

# ---- from inert records to plain data -----------------------------------------------------------

def _state_of(obj: Any) -> Optional[dict]:
    if isinstance(obj, PersistentRecord):
        return obj.state
    if isinstance(obj, _Inert):
        s = obj.state
        if isinstance(s, tuple) and len(s) == 2:
            s = s[0]
        return s if isinstance(s, dict) else None
    return None


def _is_module(obj: Any) -> bool:
    st = _state_of(obj)
    return st is not None and ("_parameters" in st or "_modules" in st)


def _class_name(obj: Any) -> str:
    if isinstance(obj, PersistentRecord):
        return obj.class_name
    if isinstance(obj, (_Inert, _InertDict)):
        return obj._global[1]
    return type(obj).__name__


def to_plain(obj: Any, memo: Optional[Dict[int, Any]] = None) -> Any:
    """Inert pickle data -> plain Python: EasyDict -> dict, omegaconf DictConfig/ListConfig -> dict/list
    (interpolations stay strings), numpy scalars -> Python numbers. Records and tensors are kept.

    A pickle can share one object between many places (60 levels of [x, x] are 2**60 values):
    each object is converted once (`memo`, keyed by id, can be shared between calls on data that
    stays alive) and the result keeps the sharing; a result that would expand to more than
    MAX_PLAIN_VALUES values when walked (repr, comparison) is refused."""
    memo = {} if memo is None else memo
    return _plain(obj, memo, 0)[0]


def _plain(obj: Any, memo: Dict[int, Any], depth: int) -> Tuple[Any, int]:
    """(plain value, its expanded size in values)."""
    if type(obj) in (str, bytes, int, float, complex, bool, type(None)) or isinstance(obj, (torch.Tensor, torch.dtype)):
        return obj, 1  # (exact types: numpy scalars subclass float and become Python numbers below)
    key = id(obj)
    if key in memo:
        return memo[key][1], memo[key][2]
    if depth > 200:
        raise CheckpointError("config data nested too deeply")
    d = depth + 1
    size = 1

    def conv(v):
        nonlocal size
        out, n = _plain(v, memo, d)
        size += n
        if size > MAX_PLAIN_VALUES:
            raise CheckpointError(f"config data expands to more than {MAX_PLAIN_VALUES} values (shared references "
                                  f"nested in a pickle)")
        return out

    def conv_items(items):
        return {conv(k): conv(v) for k, v in items}

    result: Any = obj
    if isinstance(obj, (_InertDict, dict)) and not isinstance(obj, _Inert):
        result = conv_items(obj.items())
    elif isinstance(obj, _Inert):
        name = obj._global[1]
        st = _state_of(obj) or {}
        if name == "DictConfig":
            content = st.get("_content")
            result = conv_items(content.items()) if isinstance(content, dict) else conv(content)
        elif name == "ListConfig":
            content = st.get("_content")
            result = [conv(v) for v in content] if isinstance(content, (list, tuple)) else conv(content)
        elif name.endswith("Node"):
            result = conv(st.get("_val"))
    elif isinstance(obj, list):
        result = [conv(v) for v in obj]
    elif isinstance(obj, tuple) and not isinstance(obj, torch.Size):
        result = tuple(conv(v) for v in obj)
    elif isinstance(obj, np.generic):
        result = obj.item()
    elif isinstance(obj, _TypeRef):
        result = f"{obj.module}.{obj.name}"
    memo[key] = (obj, result, size)  # obj is kept so that its id is not reused while memo lives
    return result, size


@dataclass
class OfficialNetwork:
    """One network of an official pickle, as data: its official state dict and init kwargs."""
    class_name: str
    state_dict: Dict[str, torch.Tensor]
    init_args: tuple
    init_kwargs: Dict[str, Any]
    record: Any = field(repr=False)

    memo: Dict[int, Any] = field(default_factory=dict, repr=False, compare=False)  # to_plain's, shared

    def modules(self) -> Iterator[Tuple[str, Any]]:
        """(dotted path, record) of this network and every sub-module, parents first."""
        visits = 0

        def walk(rec, prefix, depth):
            nonlocal visits
            visits += 1
            if visits > MAX_MODULES or depth > 100:
                raise CheckpointError(f"the network has more than {MAX_MODULES} sub-modules or nests them more than "
                                      f"100 deep (shared sub-modules in a pickle)")
            yield prefix, rec
            modules = _state_of(rec).get("_modules") or {}
            if not isinstance(modules, dict):
                return
            for name, child in modules.items():
                if child is not None and _is_module(child):
                    yield from walk(child, f"{prefix}.{name}" if prefix else str(name), depth + 1)
        yield from walk(self.record, "", 0)

    def attrs(self, path: str) -> Dict[str, Any]:
        """Plain attributes of the sub-module at `path` ('' = the network itself)."""
        for p, rec in self.modules():
            if p == path:
                return {k: to_plain(v, self.memo) for k, v in _state_of(rec).items() if not str(k).startswith("_")}
        return {}

    def plain(self, value: Any) -> Any:
        """to_plain with this network's memo (values shared between its modules are converted once)."""
        return to_plain(value, self.memo)


def _module_state_dict(rec: Any, source: str) -> Dict[str, torch.Tensor]:
    """nn.Module.state_dict() of an inert module record: parameters, persistent buffers, children."""
    out: Dict[str, torch.Tensor] = {}
    visits = 0

    def walk(r, prefix, depth):
        nonlocal visits
        visits += 1
        if depth > 100:
            raise CheckpointError(f"{source}: modules nested too deeply")
        if visits > MAX_MODULES:
            raise CheckpointError(f"{source}: the network has more than {MAX_MODULES} sub-modules (shared "
                                  f"sub-modules in a pickle expand)")
        st = _state_of(r)
        non_persistent = st.get("_non_persistent_buffers_set") or set()
        for group in ("_parameters", "_buffers"):
            items = st.get(group) or {}
            if not isinstance(items, dict):
                raise CheckpointError(f"{source}: {prefix or 'the network'} has a malformed {group}")
            for name, t in items.items():
                if not isinstance(name, str):
                    raise CheckpointError(f"{source}: {prefix or 'the network'} has a tensor named {_brief(name)}")
                if t is None or (group == "_buffers" and isinstance(non_persistent, (set, frozenset, list, tuple))
                                 and name in non_persistent):
                    continue
                if not isinstance(t, torch.Tensor):
                    raise CheckpointError(f"{source}: tensor {prefix + str(name)!r} is a {type(t).__name__}, "
                                          f"not a tensor")
                out[prefix + str(name)] = t
        children = st.get("_modules") or {}
        if not isinstance(children, dict):
            raise CheckpointError(f"{source}: {prefix or 'the network'} has malformed _modules")
        for name, child in children.items():
            if child is None:
                continue
            if not _is_module(child):
                raise CheckpointError(f"{source}: sub-module {prefix + str(name)!r} is a {_class_name(child)} without "
                                      f"module state")
            walk(child, f"{prefix}{name}.", depth + 1)

    walk(rec, "", 0)
    return out


def read_official_pickle(path: PathLike) -> Dict[str, Any]:
    """Read an official network pickle as inert data, executing nothing.

    Returns the pickle's dict with every network ('G', 'D', 'G_ema', 'augment_pipe', ...) as an
    `OfficialNetwork` (state dict of tensors, init args/kwargs as plain data, the record tree) and
    every other entry ('training_set_kwargs', ...) converted with `to_plain`."""
    path = _existing(path)
    data = _unpickle(path)
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: the pickle holds a {_class_name(data)}, not the dict of networks that "
                              f"official network pickles hold")
    try:
        return _official_entries(path, data)
    except CheckpointError as e:
        if str(e).startswith(path):
            raise
        raise CheckpointError(f"{path}: {e}") from None


def _official_entries(path: str, data: dict) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    memo: Dict[int, Any] = {}  # one for the whole file: networks share their config objects
    for key, value in data.items():
        if _is_module(value):
            st = _state_of(value)
            state_dict = _module_state_dict(value, f"{path}: {key}")
            init_args = to_plain(st.get("_init_args", ()), memo)
            init_kwargs = to_plain(st.get("_init_kwargs", {}), memo)
            out[key] = OfficialNetwork(
                class_name=_class_name(value), state_dict=state_dict,
                init_args=tuple(init_args) if isinstance(init_args, (list, tuple)) else (),
                init_kwargs=init_kwargs if isinstance(init_kwargs, dict) else {}, record=value, memo=memo)
        else:
            out[key] = to_plain(value, memo)
    return out


# ---- what an official network stores beyond its tensors --------------------------------------

def _as_dict(v: Any) -> Dict[str, Any]:
    return v if isinstance(v, dict) else {}


def _is_interp(v: Any) -> bool:
    return isinstance(v, str) and v.startswith("${")


def _agree(source: str, name: str, found: Dict[str, Any]) -> Any:
    values = {_brief(v): v for v in found.values()}
    if len(values) > 1:
        raise CheckpointError(f"{source}: {name} differs between modules ({_brief(found)}); this engine uses one "
                              f"value")
    return next(iter(values.values()))


def _generator_hints(net: OfficialNetwork, source: str) -> Dict[str, Any]:
    kw = net.init_kwargs
    h: Dict[str, Any] = {k: kw[k] for k in ("z_dim", "w_dim", "c_dim", "img_resolution", "img_channels") if k in kw}
    mk, sk = _as_dict(kw.get("mapping_kwargs")), _as_dict(kw.get("synthesis_kwargs"))
    if "num_layers" in mk:
        h["mapping_layers"] = mk["num_layers"]
    if "w_avg_beta" in mk:
        h["w_avg_beta"] = mk["w_avg_beta"]
    for k in ("channel_base", "channel_max", "conv_clamp"):
        if k in sk:
            h[k] = sk[k]
    cfg = _as_dict(kw.get("cfg")) or _as_dict(sk.get("cfg"))
    fmm, inp, coords = _as_dict(cfg.get("fmm")), _as_dict(cfg.get("input")), _as_dict(cfg.get("coords"))
    for value, name in ((fmm.get("rank"), "rank"), (inp.get("resolution"), "input_resolution"),
                        (coords.get("motion_sigma"), "motion_sigma")):
        if value is not None and not _is_interp(value):
            h[name] = value
    if isinstance(cfg.get("num_extra_convs"), dict):
        try:
            h["num_extra_convs"] = {int(k): int(v) for k, v in cfg["num_extra_convs"].items()}
        except (TypeError, ValueError):
            pass
    # Architecture switches this engine does not implement: refuse rather than render wrongly.
    for name, value, ok in (("upsampling_mode", cfg.get("upsampling_mode"), ("nearest",)),
                            ("fmm.enabled", fmm.get("enabled"), (True,)),
                            ("fmm.activation", fmm.get("activation"), ("demod",)),
                            ("coords.enabled", coords.get("enabled"), (True,)),
                            ("input.type", inp.get("type"), ("coords",)),
                            ("use_noise", cfg.get("use_noise"), (False,))):
        if value is not None and not _is_interp(value) and value not in ok:
            raise CheckpointError(f"{source}: the generator's cfg has {name}={_brief(value)}; this engine implements "
                                  f"DIGAN's {ok[0]!r} only")
    # Module attributes are what the network really used: they win over the kwargs.
    fusers, clamps = {}, {}
    for path, rec in net.modules():
        st = _state_of(rec)
        if path == "mapping" and "w_avg_beta" in st:
            h["w_avg_beta"] = net.plain(st["w_avg_beta"])
        if path.endswith("coord_fuser"):
            fusers[path] = {k: net.plain(st[k]) for k in ("motion_sigma", "fourier_scale", "use_cosine") if k in st}
        if re.fullmatch(r"synthesis\.b\d+\.(conv0|conv1|torgb|extra_convs\.\d+)", path) and "conv_clamp" in st:
            clamps[path] = net.plain(st["conv_clamp"])
    for name in ("motion_sigma", "fourier_scale", "use_cosine"):
        found = {p: f[name] for p, f in fusers.items() if name in f}
        if found:
            h[name] = _agree(source, name, found)
    if h.pop("use_cosine", True) is not True:
        raise CheckpointError(f"{source}: the generator's coordinate embedding has use_cosine off; this engine "
                              f"implements DIGAN's sin+cos embedding only")
    if clamps:
        h["conv_clamp"] = _agree(source, "conv_clamp", clamps)
    return _as_floats(h, ("motion_sigma", "fourier_scale", "w_avg_beta", "conv_clamp"), source)


def _as_floats(h: Dict[str, Any], names: Sequence[str], source: str) -> Dict[str, Any]:
    for name in names:
        if h.get(name) is not None:
            try:
                h[name] = float(h[name])
            except (TypeError, ValueError):
                raise CheckpointError(f"{source}: the stored {name}={_brief(h[name])} is not a number") from None
    return h


def _discriminator_hints(net: OfficialNetwork, source: str) -> Dict[str, Any]:
    kw = net.init_kwargs
    h: Dict[str, Any] = {k: kw[k] for k in ("c_dim", "img_resolution", "img_channels", "channel_base", "channel_max",
                                            "num_fp16_res", "conv_clamp", "cmap_dim") if k in kw}
    if kw.get("architecture", "resnet") != "resnet":
        raise CheckpointError(f"{source}: the discriminator's architecture is {_brief(kw.get('architecture'))}; "
                              f"this engine "
                              f"implements 'resnet' only")
    ek, mk = _as_dict(kw.get("epilogue_kwargs")), _as_dict(kw.get("mapping_kwargs"))
    for k in ("mbstd_group_size", "mbstd_num_channels"):
        if k in ek:
            h[k] = ek[k]
    if "num_layers" in mk:
        h["mapping_layers"] = mk["num_layers"]
    fp16 = {}
    for path, rec in net.modules():
        st = _state_of(rec)
        if path == "videoD.b4.mbstd":
            if "group_size" in st:
                h["mbstd_group_size"] = net.plain(st["group_size"])
        if path == "videoD.b4.conv" and "conv_clamp" in st:
            h["conv_clamp"] = net.plain(st["conv_clamp"])
        m = re.fullmatch(r"videoD\.b(\d+)", path)
        if m and int(m.group(1)) > 4 and "use_fp16" in st:
            fp16[int(m.group(1))] = bool(st["use_fp16"])
    if fp16:  # the blocks' use_fp16 flags are the truth; several num_fp16_res can give the same flags
        R = max(fp16)

        def flags(n):
            return {r: r >= max(2 ** (int(math.log2(R)) + 1 - n), 8) for r in fp16}

        if not (isinstance(h.get("num_fp16_res"), int) and flags(h["num_fp16_res"]) == fp16):
            low = min((r for r, on in fp16.items() if on), default=None)
            h["num_fp16_res"] = 0 if low is None else int(math.log2(R)) + 1 - int(math.log2(low))
    if h.get("cmap_dim") is None:
        h.pop("cmap_dim", None)
    return _as_floats(h, ("conv_clamp",), source)
