"""Inert stand-ins for what an official pickle contains, and the size budget of one unpickle.

Stand-in classes hold pickled data and nothing else; `_construct`/`_new` are the only way a builtin or
stand-in class gets instantiated, with every argument checked and its size charged first.
"""
from __future__ import annotations

import builtins as _builtins
import collections
import contextvars
from dataclasses import dataclass, field
from typing import Any, Dict, List, Tuple

import numpy as np
import torch

from ..config import _brief

# =============================================================================================
# Inert stand-ins for what an official pickle contains
# =============================================================================================

@dataclass
class PersistentRecord:
    """What `torch_utils.persistence._reconstruct_persistent_obj(meta)` becomes: data only.

    `module_src` is kept as a string for inspection; nothing here ever executes or imports it."""
    class_name: str
    version: Any
    state: Dict[str, Any]
    module_src: str = field(default="", repr=False)


class _Inert:
    """Base of the stand-in classes for allowed classes (torch.nn containers, omegaconf objects,
    torch.distributions): instances hold the pickled constructor args and state, nothing else."""
    _global: Tuple[str, str] = ("", "")

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        obj.__dict__["newargs"] = args
        obj.__dict__["state"] = None
        return obj

    def __init__(self, *args, **kwargs):
        pass

    def _set_state(self, state: Any) -> None:
        self.__dict__["state"] = state

    @property
    def class_name(self) -> str:
        return ".".join(self._global)

    def __repr__(self) -> str:
        return f"<inert {self.class_name}>"


class _InertDict(dict):
    """Stand-in for dict subclasses (dnnlib.util.EasyDict): the items are the data."""
    _global: Tuple[str, str] = ("", "")

    def _set_state(self, state: Any) -> None:
        self.__dict__["state"] = state


class _TypeRef:
    """A reference to a type that pickles carry as a value (typing.Any in omegaconf metadata,
    torch.Tensor in `_rebuild_from_type_v2`). Not callable, so it can never be instantiated."""

    def __init__(self, module: str, name: str):
        self.module, self.name = module, name

    def __repr__(self) -> str:
        return f"<type {self.module}.{self.name}>"


class _BadData(Exception):
    """Raised by the allowed functions on malformed arguments; the unpickler adds file and place."""

    def __init__(self, msg: str, unsafe: bool = False):
        super().__init__(msg)
        self.unsafe = unsafe


# ---- the size budget of one unpickle -------------------------------------------------------------
# A pickle is a program: a few bytes can ask for list(range(3e8)) or bytearray(1e10). Everything an
# allowed callable allocates is charged, before it is allocated, to the budget of the file being
# read: twice its size (tensor storages are copies of bytes that are in the file) plus 64 MiB for
# the small Python values (config dicts) a real network pickle builds. Refusal is then a matter of
# a few operations, whatever the pickle asks for.
UNPICKLE_BUDGET_SLACK = 64 << 20
MAX_CALL_ITEMS = 1 << 22          # items one builtin call may build (4M: far beyond any config)
MAX_PLAIN_VALUES = 100_000        # values one to_plain result may expand to (shared references count

MAX_MODULES = 10_000              # sub-module visits per network (DIGAN-128 G has ~150 modules)
MAX_FLAT_ENTRIES = 1_000_000      # dict entries visited while flattening a torch.save state dict


class _Budget:
    def __init__(self, limit: int):
        self.limit, self.used = int(limit), 0

    def charge(self, n: int, what: str) -> None:
        self.used += max(int(n), 0)
        if self.used > self.limit:
            raise _BadData(f"{what} would take what the pickle builds past its size budget ({self.limit} bytes: "
                           f"twice the file plus {UNPICKLE_BUDGET_SLACK >> 20} MiB); this is not a network pickle")


_BUDGET: contextvars.ContextVar = contextvars.ContextVar("digan_unpickle_budget", default=None)


def _charge(n: int, what: str) -> None:
    budget = _BUDGET.get()
    if budget is None:  # called outside _unpickle (direct use in tests): a fresh default budget
        budget = _Budget(UNPICKLE_BUDGET_SLACK)
    budget.charge(n, what)


def _length(x: Any, what: str) -> int:
    """len() of an argument that a builtin will iterate; only finite, already-built data."""
    if not isinstance(x, (list, tuple, set, frozenset, dict, str, bytes, bytearray, range)):
        raise _BadData(f"{what} of a {type(x).__name__} (only lists, tuples, sets, dicts, strings, bytes "
                       f"and ranges are read)")
    try:
        n = len(x)
    except OverflowError:
        n = MAX_CALL_ITEMS + 1
    if n > MAX_CALL_ITEMS:
        raise _BadData(f"{what} of {n if n <= 1 << 62 else 'more than 2**62'} items (at most {MAX_CALL_ITEMS})")
    return n


_KEY_SCALARS = (str, bytes, int, float, complex, bool, type(None), torch.dtype, type, np.generic)


def _check_key(k: Any, what: str = "a dict key") -> None:
    """Keys and set elements are hashed (and compared) on insertion: a tuple of shared tuples 60
    levels deep takes 2**60 steps to hash. Only plain values and shallow tuples of them are keys."""
    count = 0

    def walk(x, depth):
        nonlocal count
        count += 1
        if count > 1024 or depth > 4:
            raise _BadData(f"{what} is a large or deeply nested tuple (checkpoint keys are plain values)")
        if isinstance(x, (_KEY_SCALARS, _TypeRef, _Inert)):
            return
        if isinstance(x, frozenset):  # its elements were checked when it was built; its hash is cached
            count += len(x)
            return
        if isinstance(x, tuple):
            for v in x:
                walk(v, depth + 1)
            return
        raise _BadData(f"{what} is a {type(x).__name__}, not a plain value")

    walk(k, 0)


def _pairs(x: Any, what: str) -> List[Tuple[Any, Any]]:
    """Key/value pairs of a dict-like argument (dict or sequence of pairs), keys checked, charged."""
    n = _length(x, what)
    _charge(64 * n, what)
    if isinstance(x, dict):
        items = list(x.items())
    else:
        items = []
        for p in x:
            if not isinstance(p, (tuple, list)) or len(p) != 2:
                raise _BadData(f"{what}: an item is not a key/value pair")
            items.append((p[0], p[1]))
    for k, _ in items:
        _check_key(k, f"a key of {what}")
    return items


_BUILTIN_SCALARS = (str, bytes, bytearray, int, float, complex, bool, type(None))


def _construct(cls: type, args: tuple, kwargs: dict) -> Any:
    """cls(*args, **kwargs) for an allowed class, with every argument checked and its size charged."""
    name = getattr(cls, "__name__", "?")
    what = f"{name}(...)"
    if isinstance(cls, type) and issubclass(cls, _Inert):
        return cls.__new__(cls, *args, **kwargs)  # keeps the arguments as data, builds nothing
    if kwargs and cls is not dict:
        raise _BadData(f"{what} with keyword arguments")
    if isinstance(cls, type) and (issubclass(cls, _InertDict) or cls in (dict, collections.OrderedDict)):
        if len(args) > 1:
            raise _BadData(f"{what} with {len(args)} arguments")
        obj = cls.__new__(cls)
        for k, v in (_pairs(args[0], what) if args else []) + _pairs(kwargs, what):
            obj[k] = v
        return obj
    if cls in (list, tuple, set, frozenset):
        if len(args) > 1:
            raise _BadData(f"{what} with {len(args)} arguments")
        if args:
            n = _length(args[0], what)
            _charge(8 * n if cls in (list, tuple) else 64 * n, what)
            if cls in (set, frozenset):
                for v in args[0]:
                    _check_key(v, f"an element of {what}")
        return cls(*args)
    if cls in (bytes, bytearray):
        if len(args) > 3:
            raise _BadData(f"{what} with {len(args)} arguments")
        if args:
            x = args[0]
            if isinstance(x, int) and not isinstance(x, bool):
                _charge(x, what)  # bytes(n) allocates n zero bytes
            elif isinstance(x, str):
                if len(args) < 2 or not all(isinstance(a, str) for a in args[1:]):
                    raise _BadData(f"{what} of a string without an encoding")
                _charge(4 * len(x), what)
            else:
                _charge(_length(x, what), what)
        elif len(args) > 1:
            raise _BadData(f"{what}: bad arguments")
        return cls(*args)
    if cls is str:
        # str(x) of a container would repr it: a shared structure expands exponentially.
        if len(args) > 3 or not all(isinstance(a, _BUILTIN_SCALARS) for a in args):
            raise _BadData(f"{what} of a {type(args[0]).__name__ if args else '?'} (only of plain values)")
        if args and isinstance(args[0], (bytes, bytearray)):
            _charge(4 * len(args[0]), what)
        return cls(*args)
    if cls in (int, float, complex, bool):
        if len(args) > 2 or not all(isinstance(a, _BUILTIN_SCALARS) for a in args):
            raise _BadData(f"{what} of a non-scalar")
        return cls(*args)
    if cls in (range, slice):
        if len(args) > 3 or not all(isinstance(a, (int, type(None))) for a in args):
            raise _BadData(f"{what} of non-integers")
        return cls(*args)  # lazy: what iterates it later is charged by its length
    if cls is object:
        if args:
            raise _BadData("object() with arguments")
        return object()
    raise _BadData(f"{what} is not an allowed constructor", unsafe=True)


def _new(cls: Any, args: tuple, kwargs: dict, op: str) -> Any:
    """cls.__new__(cls, *args, **kwargs) (NEWOBJ, copyreg.__newobj__) for an allowed class."""
    if not _is_constructible(cls):
        raise _BadData(f"{op} of a disallowed class {_brief(cls)}", unsafe=True)
    if not isinstance(args, tuple) or not isinstance(kwargs, dict):
        raise _BadData(f"{op} arguments are not a tuple and a dict")
    if issubclass(cls, _Inert):
        return cls.__new__(cls, *args, **kwargs)
    if cls in (list, dict, set, bytearray, collections.OrderedDict) or issubclass(cls, _InertDict):
        return cls.__new__(cls)  # their __new__ ignores the arguments: the items come later, checked
    return _construct(cls, args, kwargs)


# Real, inert builtins. They are never called directly: `_construct` checks and charges the
# arguments first (list(range(3e8)) or bytearray(1e10) are refused, not attempted).
_SAFE_BUILTINS = {name: getattr(_builtins, name) for name in (
    "set", "frozenset", "slice", "complex", "dict", "list", "tuple", "int", "float", "str", "bytes",
    "bytearray", "bool", "range", "object")}


# Classes rebuilt as stand-ins (never the real class): name -> base ("object" or "dict").
_STANDIN_CLASSES: Dict[Tuple[str, str], str] = {
    **{("torch.nn.modules.container", n): "object" for n in
       ("Sequential", "ModuleList", "ModuleDict", "ParameterList", "ParameterDict")},
    ("torch.distributions.beta", "Beta"): "object",
    ("torch.distributions.dirichlet", "Dirichlet"): "object",
    ("omegaconf.dictconfig", "DictConfig"): "object",
    ("omegaconf.listconfig", "ListConfig"): "object",
    ("omegaconf.base", "ContainerMetadata"): "object",
    ("omegaconf.base", "Metadata"): "object",
    **{("omegaconf.nodes", n): "object" for n in
       ("AnyNode", "StringNode", "IntegerNode", "FloatNode", "BooleanNode", "BytesNode", "PathNode",
        "ValueNode", "InterpolationResultNode")},
    ("dnnlib.util", "EasyDict"): "dict",
    ("dnnlib", "EasyDict"): "dict",
}


_standin_cache: Dict[Tuple[str, str], type] = {}


def _standin(module: str, name: str) -> type:
    key = (module, name)
    if key not in _standin_cache:
        base = _InertDict if _STANDIN_CLASSES[key] == "dict" else _Inert
        _standin_cache[key] = type(f"Inert_{name}", (base,), {"_global": key, "__module__": __name__})
    return _standin_cache[key]


def _is_constructible(cls: Any) -> bool:
    return isinstance(cls, type) and (
        cls in _standin_cache.values() or cls in _SAFE_BUILTINS.values() or cls is collections.OrderedDict)
