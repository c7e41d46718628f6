"""The functions an official pickle may call (each validates its arguments; none can reach code)."""
from __future__ import annotations

import collections
import io
import math
import pickle
import pickletools
import re
import warnings
from typing import Any

import numpy as np
import torch

try:  # numpy >= 2
    from numpy._core import multiarray as _np_multiarray
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core import multiarray as _np_multiarray

from ..config import _brief
from ._common import _first_line, _torch_refusal
from .standins import PersistentRecord, _BadData, _charge, _Inert, _InertDict, _is_constructible, _new, _pairs, _TypeRef

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
