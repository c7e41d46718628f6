"""Checkpoints: our safetensors format, official DIGAN network pickles read safely, torch state dicts.

Our format is a safetensors file whose tensors carry the official state-dict key names and whose
metadata holds the JSON config, so loading never executes anything:

    format = "digan-engine", format_version = "1"
    kind   = "generator"      config = GeneratorConfig JSON, tensors unprefixed (official keys)
           | "discriminator"  config = DiscriminatorConfig JSON, tensors unprefixed
           | "training"       g_config, d_config; tensors prefixed "G.", "D.", "G_ema." (any other
                              prefix, e.g. "opt.", is carried along and ignored by the loaders)

`load_generator` / `load_discriminator` also accept

- an official network pickle (StyleGAN2-ADA `persistence` format, a dict with 'G', 'D', 'G_ema', ...).
  It is read by a restricted unpickler with an explicit allow-list of inert globals: each persistent
  module becomes a plain record (class name + pickled state); its embedded `module_src` is never
  executed or imported; tensors are rebuilt from storages that are opened with
  `torch.load(weights_only=True)`. Every other global is refused with `UnsafeCheckpointError`.
- a `torch.save` state dict (read with `torch.load(weights_only=True)`), keys possibly prefixed
  with "G.", "G_ema.", "D.".
- any other safetensors file holding official keys (e.g. ../shared/fixtures), like a state dict.

Hyper-parameters that a pickle or state dict does not store are inferred from tensor shapes
(`infer_generator_config`, `infer_discriminator_config`); those that shapes cannot give come from
the pickle's module attributes or init kwargs, else from the released defaults with a warning.
Loading always builds the network from its config and uses `load_state_dict(strict=True)`.
All problems raise `CheckpointError` (a ValueError) naming the file and, where there is one, the
tensor or hyper-parameter.
"""
from __future__ import annotations

import builtins as _builtins
import collections
import contextvars
import io
import json
import math
import os
import pickle
import pickletools
import re
import struct
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .config import DiscriminatorConfig, GeneratorConfig, _brief

try:  # numpy >= 2
    from numpy._core import multiarray as _np_multiarray
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core import multiarray as _np_multiarray

PathLike = Union[str, os.PathLike]

FORMAT = "digan-engine"
FORMAT_VERSION = "1"
KINDS = ("generator", "discriminator", "training")
NETWORK_PREFIXES = ("G.", "D.", "G_ema.")

__all__ = [
    "CheckpointError", "UnsafeCheckpointError", "OfficialNetwork", "TrainingCheckpoint",
    "FORMAT", "FORMAT_VERSION", "save_generator", "save_discriminator", "save_training",
    "load_generator", "load_discriminator", "load_training", "read_metadata",
    "read_official_pickle", "convert", "infer_generator_config", "infer_discriminator_config",
]


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded: corrupt, truncated, inconsistent or of unknown format."""


class UnsafeCheckpointError(CheckpointError):
    """A pickle that references a global outside the allow-list (it could run code when loaded)."""


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
                                  # once per reference: they are what repr/compare would walk)
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


# ---- allowed functions (each validates its arguments; none can reach code) -------------------

def _reconstruct_persistent_obj(meta: Any) -> PersistentRecord:
    if not isinstance(meta, dict):
        raise _BadData("persistent object meta is not a dict")
    if meta.get("type") != "class":
        raise _BadData(f"persistent object of type {_brief(meta.get('type'))} is not supported (only 'class')")
    class_name, state = meta.get("class_name"), meta.get("state")
    if not isinstance(class_name, str) or not isinstance(state, dict):
        raise _BadData("persistent object meta lacks a class_name string or a state dict")
    src = meta.get("module_src", "")
    return PersistentRecord(class_name=class_name, version=meta.get("version"), state=state,
                            module_src=src if isinstance(src, str) else "")


def _load_storage_from_bytes(b: Any):
    if not isinstance(b, (bytes, bytearray)):
        raise _BadData("storage payload is not bytes")
    _scan_storage_payload(bytes(b))
    _charge(len(b), "a tensor storage")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            storage = torch.load(io.BytesIO(bytes(b)), weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as e:
        # torch's weights-only unpickler refuses any global it does not know.
        raise _BadData(f"a tensor storage holds a pickle that is not plain weights{_torch_refusal(e)}",
                       unsafe=True) from None
    except Exception as e:
        raise _BadData(f"corrupt tensor storage ({type(e).__name__}: {_first_line(e)})") from None
    if not isinstance(storage, (torch.storage.TypedStorage, torch.UntypedStorage)):
        raise _BadData(f"storage payload holds a {type(storage).__name__}, not a storage")
    return storage


# Storage classes a legacy torch.save of one storage names, and their element sizes.
_STORAGE_ITEMSIZE = {"FloatStorage": 4, "DoubleStorage": 8, "HalfStorage": 2, "BFloat16Storage": 2, "LongStorage": 8,
                     "IntStorage": 4, "ShortStorage": 2, "CharStorage": 1, "ByteStorage": 1, "BoolStorage": 1,
                     "UntypedStorage": 1, "ComplexFloatStorage": 8, "ComplexDoubleStorage": 16}
_SCALAR_OPS = {"PROTO", "FRAME", "STOP", "MARK", "NONE", "NEWTRUE", "NEWFALSE", "BININT", "BININT1", "BININT2", "INT",
               "LONG", "LONG1", "LONG4", "BINUNICODE", "SHORT_BINUNICODE", "UNICODE", "BINUNICODE8", "BINSTRING",
               "SHORT_BINSTRING", "STRING", "BINPUT", "LONG_BINPUT", "PUT", "MEMOIZE", "BINGET", "LONG_BINGET", "GET",
               "BINFLOAT", "FLOAT"}
# The five pickles of a legacy torch.save(storage): magic number, protocol, sys_info dict, the
# storage's persistent id ('storage', torch.XStorage, key, 'cpu', numel[, None]), storage keys.
_PAYLOAD_OPS = (_SCALAR_OPS, _SCALAR_OPS, _SCALAR_OPS | {"EMPTY_DICT", "DICT", "SETITEM", "SETITEMS"},
                _SCALAR_OPS | {"GLOBAL", "TUPLE", "TUPLE1", "TUPLE2", "TUPLE3", "EMPTY_TUPLE", "BINPERSID"},
                _SCALAR_OPS | {"EMPTY_LIST", "LIST", "APPEND", "APPENDS"})


def _scan_storage_payload(b: bytes) -> None:
    """Check the bytes given to torch.storage._load_from_bytes before torch reads them.

    torch allocates a storage of the numel its inner pickle declares before reading the data, and its
    weights-only unpickler allows bytearray(n): a 200-byte payload could ask for gigabytes. Each of the
    five inner pickles may use only the opcodes that torch.save writes there (no calls at all), the
    only globals are torch storage classes, and the declared size must fit in the payload."""
    f = io.BytesIO(b)
    for i, allowed in enumerate(_PAYLOAD_OPS):
        try:
            ops = [(op.name, arg) for op, arg, _ in pickletools.genops(f)]
        except Exception as e:
            raise _BadData(f"corrupt tensor storage ({type(e).__name__}: {_first_line(e)})") from None
        if i != 3:
            bad = sorted({name for name, _ in ops if name not in allowed})
            if bad:
                raise _BadData(f"a tensor storage's header uses the pickle opcodes {', '.join(bad)}, which "
                               f"torch.save does not write there", unsafe=True)
            continue
        itemsize = 0
        for name, arg in ops:
            if name == "GLOBAL":
                module, _, cls = str(arg).partition(" ")
                if module != "torch" or cls not in _STORAGE_ITEMSIZE:
                    raise _BadData(f"a tensor storage holds a pickle that is not plain weights (it references "
                                   f"the global {module}.{cls})", unsafe=True)
                itemsize = max(itemsize, _STORAGE_ITEMSIZE[cls])
        bad = sorted({name for name, _ in ops if name not in allowed})
        if bad:
            raise _BadData(f"a tensor storage holds a pickle that is not plain weights (it uses the opcodes "
                           f"{', '.join(bad)})", unsafe=True)
        if sum(name == "BINPERSID" for name, _ in ops) != 1 or not itemsize:
            raise _BadData("a tensor storage payload does not hold exactly one storage")
        numel = max((arg for name, arg in ops if isinstance(arg, int) and name not in ("PROTO", "FRAME") and
                     "PUT" not in name and "GET" not in name and name != "MEMOIZE"), default=0)
        if numel * itemsize > len(b):
            raise _BadData(f"a tensor storage declares {numel} elements of {itemsize} bytes but its payload has "
                           f"{len(b)} bytes")


def _torch_refusal(e: BaseException) -> str:
    """' (it references the global X)' from torch's weights-only refusal message, if it names one."""
    m = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e)) or re.search(r"GLOBAL ([\w.]+)", str(e))
    return f" (it references the global {m.group(1)})" if m else f" ({_first_line(e)})"


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0] if s else type(e).__name__


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    if not isinstance(storage, torch.storage.TypedStorage):
        raise _BadData("tensor rebuilt from something that is not a storage")
    if not isinstance(storage_offset, int) or storage_offset < 0:
        raise _BadData(f"bad storage offset {_brief(storage_offset)}")
    if not isinstance(size, (tuple, list, torch.Size)) or not isinstance(stride, (tuple, list)):
        raise _BadData("bad tensor size/stride")
    if len(size) > 64 or len(size) != len(stride) or \
            not all(isinstance(v, int) and v >= 0 for v in (*size, *stride)):
        raise _BadData(f"bad tensor size {_brief(size)} / stride {_brief(stride)}")
    if backward_hooks:
        raise _BadData("tensor carries backward hooks", unsafe=True)
    if any(n > 1 and s == 0 for n, s in zip(size, stride)):
        raise _BadData(f"tensor of size {tuple(size)} has a zero stride {tuple(stride)} (not a stored tensor)")
    numel = math.prod(size)
    extent = 0 if numel == 0 else storage_offset + 1 + sum((n - 1) * s for n, s in zip(size, stride))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        n_storage = storage.size()
        if extent > n_storage or numel > n_storage:
            raise _BadData(f"tensor of size {tuple(size)} needs {max(extent, numel)} elements but its storage has "
                           f"{n_storage}")
        return torch._utils._rebuild_tensor(storage, storage_offset, tuple(size), tuple(stride))


def _rebuild_tensor_v1(storage, storage_offset, size, stride):
    return _rebuild_tensor_v2(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=True, backward_hooks=None, state=None):
    if not isinstance(data, torch.Tensor):
        raise _BadData("parameter rebuilt from something that is not a tensor")
    if backward_hooks:
        raise _BadData("parameter carries backward hooks", unsafe=True)
    return data  # inert data: a plain tensor


_TENSOR_TYPES = {("torch", "Tensor"), ("torch._tensor", "Tensor"), ("torch.nn.parameter", "Parameter"),
                 ("torch.nn", "Parameter")}


def _rebuild_from_type_v2(func, new_type, args, state):
    if func not in (_rebuild_tensor_v2, _rebuild_parameter, _rebuild_tensor_v1):
        raise _BadData("_rebuild_from_type_v2 with an unexpected function", unsafe=True)
    if not (isinstance(new_type, _TypeRef) and (new_type.module, new_type.name) in _TENSOR_TYPES):
        raise _BadData("_rebuild_from_type_v2 with an unexpected tensor type", unsafe=True)
    if not isinstance(args, tuple):
        raise _BadData("_rebuild_from_type_v2 args are not a tuple")
    return func(*args)  # python attributes of the tensor (state) are dropped


def _torch_size(seq=()):
    if not isinstance(seq, (list, tuple)) or len(seq) > 64:
        raise _BadData(f"torch.Size of a {type(seq).__name__}{'' if isinstance(seq, (list, tuple)) else ''} "
                       f"(a list or tuple of at most 64 integers is expected)")
    seq = tuple(seq)
    if not all(isinstance(v, int) for v in seq):
        raise _BadData(f"torch.Size of non-integers {_brief(seq)}")
    return torch.Size(seq)


def _torch_device(*args):
    if not (1 <= len(args) <= 2 and isinstance(args[0], str) and len(args[0]) < 64 and
            all(isinstance(a, int) for a in args[1:])):
        raise _BadData(f"bad torch.device arguments {_brief(args)}")
    return torch.device(*args)


def _defaultdict(default_factory=None, *rest):
    # Read as a plain dict: the factory (whatever it is) is never kept, so never called.
    return {}


def _codecs_encode(obj, encoding="utf-8", *rest):
    # Protocol < 3 pickles store bytes as _codecs.encode(latin-1 text, 'latin1').
    if not isinstance(obj, str) or encoding not in ("latin1", "latin-1"):
        raise _BadData("_codecs.encode outside its use for bytes in protocol 2 pickles")
    return obj.encode("latin1")


def _np_scalar(dtype, data=None):
    if not isinstance(dtype, np.dtype) or isinstance(dtype, type):
        raise _BadData("numpy scalar without a dtype")
    if dtype.hasobject:
        return data
    if not isinstance(data, (bytes, bytearray)) or len(data) != dtype.itemsize:
        raise _BadData(f"numpy scalar of dtype {dtype} with {type(data).__name__} data")
    return _np_multiarray.scalar(dtype, bytes(data))


_NP_DTYPE_CODE = re.compile(r"[<>|=]?[a-zA-Z]{1,2}[0-9]{0,9}")


def _np_dtype(obj, align=False, copy=False):
    # numpy pickles a dtype as dtype('f8', False, True) (+ BUILD state): only such simple codes.
    if not isinstance(obj, str) or not _NP_DTYPE_CODE.fullmatch(obj) or not isinstance(align, bool) or \
            not isinstance(copy, bool):
        raise _BadData(f"bad numpy dtype arguments {_brief(obj)}")
    return np.dtype(obj, align, copy)


def _np_nbytes(shape: Any, dtype: Any, what: str) -> int:
    if not isinstance(shape, tuple) or len(shape) > 64 or \
            not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape):
        raise _BadData(f"{what} with a bad shape {_brief(shape)}")
    itemsize = dtype.itemsize if isinstance(dtype, np.dtype) else 8
    return math.prod(shape) * max(itemsize, 1)


def _np_reconstruct(subtype, shape, dtype):
    if not (isinstance(subtype, _TypeRef) and (subtype.module, subtype.name) == ("numpy", "ndarray")):
        raise _BadData("numpy array of a type other than ndarray", unsafe=True)
    if isinstance(dtype, (bytes, str)):
        dtype = _np_dtype(dtype.decode("latin1") if isinstance(dtype, bytes) else dtype)
    if not isinstance(dtype, np.dtype) or isinstance(dtype, type):
        raise _BadData("numpy array without a dtype")
    _charge(_np_nbytes(shape, dtype, "a numpy array"), "a numpy array")
    return _np_multiarray._reconstruct(np.ndarray, shape, dtype)


def _np_frombuffer(buf, dtype, shape, order):
    if not isinstance(buf, (bytes, bytearray, memoryview)) or not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise _BadData("bad numpy buffer")
    if order not in ("C", "F"):
        raise _BadData(f"bad numpy order {_brief(order)}")
    _charge(2 * len(buf), "a numpy array")
    if _np_nbytes(tuple(shape) if isinstance(shape, list) else shape, dtype, "a numpy array") != len(buf):
        raise _BadData("a numpy buffer does not match its shape")
    return np.frombuffer(bytes(buf), dtype=dtype).reshape(shape, order=order).copy(order=order)


def _copyreg_reconstructor(cls, base, state):
    if not _is_constructible(cls):
        raise _BadData(f"copyreg._reconstructor of a disallowed class {_brief(cls)}", unsafe=True)
    if base is object and issubclass(cls, _Inert):
        obj = cls.__new__(cls)
    elif base is dict and (issubclass(cls, _InertDict) or cls in (dict, collections.OrderedDict)):
        obj = cls.__new__(cls)
        if state:
            for k, v in _pairs(state, "copyreg._reconstructor state"):
                obj[k] = v
    else:
        raise _BadData(f"copyreg._reconstructor of {_brief(cls)} with base {_brief(base)}", unsafe=True)
    return obj


def _copyreg_newobj(cls, *args):
    return _new(cls, args, {}, "copyreg.__newobj__")


def _copyreg_newobj_ex(cls, args, kwargs):
    return _new(cls, args, kwargs, "copyreg.__newobj_ex__")


# ---- the allow-list ----------------------------------------------------------------------

_MODULE_ALIASES = {"__builtin__": "builtins", "copy_reg": "copyreg", "numpy.core.multiarray": "numpy._core.multiarray",
                   "numpy.core.numeric": "numpy._core.numeric"}

# Real, inert builtins. They are never called directly: `_construct` checks and charges the
# arguments first (list(range(3e8)) or bytearray(1e10) are refused, not attempted).
_SAFE_BUILTINS = {name: getattr(_builtins, name) for name in (
    "set", "frozenset", "slice", "complex", "dict", "list", "tuple", "int", "float", "str", "bytes",
    "bytearray", "bool", "range", "object")}

_SAFE_FUNCTIONS: Dict[Tuple[str, str], Any] = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("torch.storage", "_load_from_bytes"): _load_storage_from_bytes,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor_v1,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._utils", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("torch", "Size"): _torch_size,
    ("torch", "device"): _torch_device,
    ("collections", "OrderedDict"): collections.OrderedDict,   # constructed through _construct
    ("collections", "defaultdict"): _defaultdict,
    ("_codecs", "encode"): _codecs_encode,
    ("copyreg", "_reconstructor"): _copyreg_reconstructor,
    ("copyreg", "__newobj__"): _copyreg_newobj,
    ("copyreg", "__newobj_ex__"): _copyreg_newobj_ex,
    ("numpy._core.multiarray", "scalar"): _np_scalar,
    ("numpy._core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy._core.numeric", "_frombuffer"): _np_frombuffer,
    ("numpy", "dtype"): _np_dtype,
}

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

_TYPE_REFS = {("typing", n) for n in ("Any", "Dict", "List", "Tuple", "Optional", "Union", "Sequence", "Mapping")}
_TYPE_REFS |= _TENSOR_TYPES
_TYPE_REFS.add(("numpy", "ndarray"))  # a value for _reconstruct, never callable (ndarray(shape) allocates)

_TORCH_DTYPES = {"float32", "float", "float64", "double", "float16", "half", "bfloat16", "int8", "int16", "short",
                 "int32", "int", "int64", "long", "uint8", "bool", "complex64", "cfloat", "complex128", "cdouble"}

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


def _resolve_global(module: str, name: str) -> Any:
    """The object an allowed global stands for; raises KeyError for anything not allowed."""
    module = _MODULE_ALIASES.get(module, module)
    key = (module, name)
    if module == "builtins" and name in _SAFE_BUILTINS:
        return _SAFE_BUILTINS[name]
    if key in _SAFE_FUNCTIONS:
        return _SAFE_FUNCTIONS[key]
    if key in _STANDIN_CLASSES:
        return _standin(module, name)
    if key in _TYPE_REFS:
        return _TypeRef(module, name)
    if module == "torch" and name in _TORCH_DTYPES:
        return getattr(torch, name)
    raise KeyError(key)


class _RestrictedUnpickler(pickle._Unpickler):
    """Python's reference unpickler with every way of reaching a callable checked.

    Globals come only from `find_class` (the allow-list above); REDUCE/NEWOBJ only call what it
    returned; BUILD only fills stand-ins and numpy arrays/dtypes; persistent ids are refused."""

    def __init__(self, file: "_StrictReader", path: str):
        super().__init__(file)
        self._reader = file
        self._path = path
        self.truncated = False
        self._allowed_ids = set()

    def find_class(self, module, name):
        try:
            obj = _resolve_global(str(module), str(name))
        except KeyError:
            raise UnsafeCheckpointError(
                f"{self._path}: refusing to load: the pickle references the global {module}.{name}, which is not "
                f"on the allow-list of inert types (unpickling it could run code); nothing was executed") from None
        if callable(obj):
            self._allowed_ids.add(id(obj))
        return obj

    def persistent_load(self, pid):
        raise UnsafeCheckpointError(f"{self._path}: refusing to load: the pickle uses persistent ids, which "
                                    f"network pickles do not")

    def _check_callable(self, func, op):
        if id(func) not in self._allowed_ids and not _is_constructible(func):
            raise UnsafeCheckpointError(f"{self._path}: refusing to load: {op} on {type(func).__name__} "
                                        f"{func!r}, which is not an allowed global")

    def _load_reduce(self):
        stack = self.stack
        args = stack.pop()
        func = stack[-1]
        if not isinstance(args, tuple):
            raise _BadData("REDUCE arguments are not a tuple")
        if _is_constructible(func):
            stack[-1] = _construct(func, args, {})  # builtins and stand-ins: checked and charged
            return
        self._check_callable(func, "REDUCE")
        stack[-1] = func(*args)

    def _checked_new(self, cls, args, kwargs, op):
        if not _is_constructible(cls):
            raise UnsafeCheckpointError(f"{self._path}: refusing to load: {op} of {_brief(cls)}, which is not an "
                                        f"allowed class")
        return _new(cls, args, kwargs, op)

    def _load_newobj(self):
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(self._checked_new(cls, args, {}, "NEWOBJ"))

    def _load_newobj_ex(self):
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(self._checked_new(cls, args, kwargs, "NEWOBJ_EX"))

    def _instantiate(self, klass, args):  # INST and OBJ (protocols 0 and 1)
        if not (isinstance(klass, type) and issubclass(klass, (_Inert, _InertDict))):
            raise UnsafeCheckpointError(f"{self._path}: refusing to load: INST/OBJ of {_brief(klass)}")
        self.append(_new(klass, tuple(args), {}, "INST/OBJ"))

    # ---- containers: keys are checked before they are hashed, targets must be plain containers ----
    def _set_items(self, target, items):
        if not isinstance(target, dict) or type(target) is collections.defaultdict:
            raise _BadData(f"SETITEMS on a {type(target).__name__}")
        for i in range(0, len(items) - 1, 2):
            _check_key(items[i])
            target[items[i]] = items[i + 1]

    def _load_setitem(self):
        stack = self.stack
        value = stack.pop()
        key = stack.pop()
        self._set_items(stack[-1], [key, value])

    def _load_setitems(self):
        items = self.pop_mark()
        self._set_items(self.stack[-1], items)

    def _load_dict(self):
        items = self.pop_mark()
        d: dict = {}
        self._set_items(d, items)
        self.append(d)

    def _load_additems(self):
        items = self.pop_mark()
        target = self.stack[-1]
        if type(target) is not set:
            raise _BadData(f"ADDITEMS on a {type(target).__name__}")
        for item in items:
            _check_key(item, "a set element")
        target.update(items)

    def _load_frozenset(self):
        items = self.pop_mark()
        for item in items:
            _check_key(item, "a set element")
        self.append(frozenset(items))

    def _load_append(self):
        value = self.stack.pop()
        if type(self.stack[-1]) is not list:
            raise _BadData(f"APPEND on a {type(self.stack[-1]).__name__}")
        self.stack[-1].append(value)

    def _load_appends(self):
        items = self.pop_mark()
        if type(self.stack[-1]) is not list:
            raise _BadData(f"APPENDS on a {type(self.stack[-1]).__name__}")
        self.stack[-1].extend(items)

    def _load_build(self):
        state = self.stack.pop()
        inst = self.stack[-1]
        if isinstance(inst, (_Inert, _InertDict)):
            inst._set_state(state)
        elif type(inst) is np.ndarray:
            # state = (version, shape, dtype, is_fortran, data): numpy allocates shape x dtype first.
            if not (isinstance(state, tuple) and len(state) in (4, 5) and isinstance(state[-3], np.dtype)):
                raise _BadData("a numpy array with a malformed state")
            shape, dtype, data = state[-4], state[-3], state[-1]
            nbytes = _np_nbytes(shape, dtype, "a numpy array")
            count = math.prod(shape)
            if dtype.hasobject:
                if not isinstance(data, list) or len(data) != count:
                    raise _BadData("an object numpy array whose items do not match its shape")
            elif not isinstance(data, (bytes, bytearray)) or len(data) != nbytes:
                raise _BadData("a numpy array whose data does not match its shape")
            _charge(nbytes, "a numpy array")
            inst.__setstate__(state)
        elif isinstance(inst, np.dtype) and not isinstance(inst, type):
            inst.__setstate__(state)
        elif type(inst) is collections.OrderedDict and isinstance(state, dict) and \
                all(isinstance(k, str) and not k.startswith("__") for k in state):
            inst.__dict__.update(state)  # e.g. a pickled state_dict's _metadata
        else:
            raise _BadData(f"cannot restore the state of a {type(inst).__name__}")

    def _load_frame(self):
        # A frame cut short by truncation is kept: reading fails at the opcode where data stops,
        # so the error can say which tensor was being read.
        frame_size = int.from_bytes(self.read(8), "little")
        uf = self._unframer
        if uf.current_frame and uf.current_frame.read() != b"":
            raise pickle.UnpicklingError("beginning of a new frame before end of current frame")
        data = self._reader.read_partial(frame_size)
        if len(data) < frame_size:
            self.truncated = True
        uf.current_frame = io.BytesIO(data)

    dispatch = dict(pickle._Unpickler.dispatch)
    dispatch[pickle.FRAME[0]] = _load_frame
    dispatch[pickle.REDUCE[0]] = _load_reduce
    dispatch[pickle.NEWOBJ[0]] = _load_newobj
    dispatch[pickle.NEWOBJ_EX[0]] = _load_newobj_ex
    dispatch[pickle.BUILD[0]] = _load_build
    dispatch[pickle.SETITEM[0]] = _load_setitem
    dispatch[pickle.SETITEMS[0]] = _load_setitems
    dispatch[pickle.DICT[0]] = _load_dict
    dispatch[pickle.ADDITEMS[0]] = _load_additems
    dispatch[pickle.FROZENSET[0]] = _load_frozenset
    dispatch[pickle.APPEND[0]] = _load_append
    dispatch[pickle.APPENDS[0]] = _load_appends

    # ---- where we are, for error messages -------------------------------------------------
    def pending_path(self) -> str:
        """Best-effort dotted path of the dict keys being filled when reading stopped, with the
        module-state keys left out, e.g. 'G_ema.synthesis.b8.conv0.weight'."""
        frames = list(getattr(self, "metastack", [])) + [getattr(self, "stack", [])]
        keys: List[str] = []
        for i, frame in enumerate(frames):
            below = frames[i - 1][-1] if i > 0 and frames[i - 1] else None
            start = 0 if isinstance(below, dict) else None
            if start is None:
                for j in range(len(frame) - 2, -1, -1):
                    if isinstance(frame[j], dict) and isinstance(frame[j + 1], str):
                        start = j + 1
                        break
            if start is None:
                continue
            last, j = None, start
            while j < len(frame) and isinstance(frame[j], str):
                last, j = frame[j], j + 2
            if last is not None:
                keys.append(last)
        skip = {"state", "_modules", "_parameters", "_buffers"}
        return ".".join(k for k in keys if k not in skip)


class _StrictReader:
    """File wrapper that turns short reads into EOFError (the reference unpickler accepts them).

    A length field may claim 2**63 bytes: reads are checked against what is left of the file
    before anything is read (a buffered read(n) allocates n bytes up front)."""

    def __init__(self, f, size: int):
        self._f = f
        self._size = size

    def _left(self) -> int:
        return self._size - self._f.tell()

    def read(self, n=-1):
        if n is not None and n >= 0 and n > self._left():
            raise EOFError(f"the file ends {n - self._left()} bytes early")
        data = self._f.read(n)
        if n is not None and n >= 0 and len(data) < n:
            raise EOFError(f"the file ends {n - len(data)} bytes early")
        return data

    def read_partial(self, n):
        return self._f.read(max(min(n, self._left()), 0))

    def readline(self):
        line = self._f.readline()
        if not line.endswith(b"\n"):
            raise EOFError("the file ends in the middle of a line")
        return line


def _unpickle(path: str) -> Any:
    size = os.path.getsize(path)
    token = _BUDGET.set(_Budget(2 * size + UNPICKLE_BUDGET_SLACK))
    try:
        with open(path, "rb") as f:
            return _unpickle_file(path, f, size)
    finally:
        _BUDGET.reset(token)


def _unpickle_file(path: str, f, size: int) -> Any:
    up = _RestrictedUnpickler(_StrictReader(f, size), path)
    try:
        data = up.load()
        if up.truncated:  # a frame longer than the file, though its opcodes happened to end in a STOP
            raise EOFError("a frame extends past the end of the file")
        return data
    except CheckpointError:
        raise
    except _BadData as e:
        where = up.pending_path()
        cls = UnsafeCheckpointError if e.unsafe else CheckpointError
        raise cls(f"{path}: {'refusing to load: ' if e.unsafe else ''}{e}"
                  f"{f' (while reading {where!r})' if where else ''}") from None
    except (EOFError, pickle.UnpicklingError, RecursionError, MemoryError, TypeError, ValueError,
            AttributeError, IndexError, KeyError, struct.error, UnicodeDecodeError, OverflowError) as e:
        where = up.pending_path()
        if isinstance(e, EOFError) or up.truncated:
            what = f"truncated pickle (the data ends early: {_first_line(e)})"
        else:
            what = f"corrupt pickle ({type(e).__name__}: {_first_line(e)})"
        raise CheckpointError(f"{path}: {what}{f' while reading {where!r}' if where else ''}") from None


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
                          f"the stored channel_base={_brief(base)}, channel_max={_brief(cmax)} do not give the tensors' channels "
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
        raise CheckpointError(f"{source}: the discriminator's architecture is {_brief(kw.get('architecture'))}; this engine "
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


# =============================================================================================
# Reading files
# =============================================================================================

_SAFETENSORS_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                         "BOOL": 1, "U16": 2, "U32": 4, "U64": 8, "F8_E4M3": 1, "F8_E5M2": 1}
_LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"


def _existing(path: PathLike) -> str:
    p = os.fspath(path)
    if not os.path.exists(p):
        raise FileNotFoundError(f"checkpoint {p} does not exist")
    if os.path.isdir(p):
        raise CheckpointError(f"{p} is a directory, not a checkpoint file")
    return p


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
                              f"{_first_line(e) if not isinstance(e, RecursionError) else 'nested too deeply'}") from None


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
                                  f"the {what} expects {'a floating-point tensor' if e.is_floating_point() else e.dtype}")


def _build(path: str, net: _Net, device: Union[str, torch.device]) -> torch.nn.Module:
    from .networks import Discriminator, Generator

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


def _write(path: PathLike, tensors: Dict[str, torch.Tensor], metadata: Dict[str, str]) -> Path:
    """Write atomically (temp file + rename). The output folder must exist: it is not created, so a
    typo in a path is reported (FileNotFoundError, one line in the CLI) instead of making folders."""
    from safetensors.torch import save_file

    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.exists():
        raise FileNotFoundError(f"cannot write {path}: the folder {parent} does not exist")
    if not parent.is_dir():
        raise NotADirectoryError(f"cannot write {path}: {parent} is not a folder")
    if path.is_dir():
        raise IsADirectoryError(f"cannot write {path}: it is a folder")
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        try:
            save_file(tensors, str(tmp), metadata=metadata)
        except Exception as e:  # safetensors' errors are not OSErrors (disk full, permissions)
            if isinstance(e, OSError):
                raise
            raise OSError(f"cannot write {path}: {_first_line(e)}") from None
        # safetensors writes through a private temp file (mode 0600): give the checkpoint the mode
        # any file created by this user gets (0666 minus the umask), like open() would.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)  # readers never see a half-written checkpoint
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


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


def convert(in_path: PathLike, out_path: PathLike) -> Path:
    """Official .pkl, torch state dict or foreign safetensors -> our safetensors; returns out_path.

    The kind written is 'training' when the input holds more than one network (e.g. G, D and G_ema,
    so that `load_generator` picks G_ema), else 'generator' or 'discriminator'. Every network is
    built and loaded strictly first, so a converted file always loads."""
    in_path = _existing(in_path)
    if os.path.abspath(in_path) == os.path.abspath(os.fspath(out_path)):
        raise ValueError("convert: the output must be a different file from the input")
    mods = {role: _build(in_path, net, "cpu") for role, net in _read_networks(in_path).items()}
    gens = [r for r in ("G", "G_ema") if r in mods]
    if len(mods) > 1:
        return save_training(out_path, G=mods.get("G"), D=mods.get("D"), G_ema=mods.get("G_ema"))
    if gens:
        return save_generator(mods[gens[0]], out_path)
    return save_discriminator(mods["D"], out_path)
