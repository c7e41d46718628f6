"""The allow-list of globals and the restricted unpickler that reads official network pickles."""
from __future__ import annotations

import collections
import io
import math
import os
import pickle
import struct
from typing import Any, Dict, List, Tuple

import numpy as np
import torch

from ..config import _brief
from ._common import CheckpointError, UnsafeCheckpointError, _first_line
from .allowed import (
    _TENSOR_TYPES,
    _codecs_encode,
    _copyreg_newobj,
    _copyreg_newobj_ex,
    _copyreg_reconstructor,
    _defaultdict,
    _load_storage_from_bytes,
    _np_dtype,
    _np_frombuffer,
    _np_nbytes,
    _np_reconstruct,
    _np_scalar,
    _rebuild_from_type_v2,
    _rebuild_parameter,
    _rebuild_tensor_v1,
    _rebuild_tensor_v2,
    _reconstruct_persistent_obj,
    _torch_device,
    _torch_size,
)
from .standins import (
    _BUDGET,
    _SAFE_BUILTINS,
    _STANDIN_CLASSES,
    UNPICKLE_BUDGET_SLACK,
    _BadData,
    _Budget,
    _charge,
    _check_key,
    _construct,
    _Inert,
    _InertDict,
    _is_constructible,
    _new,
    _standin,
    _TypeRef,
)

# ---- the allow-list ----------------------------------------------------------------------

_MODULE_ALIASES = {"__builtin__": "builtins", "copy_reg": "copyreg", "numpy.core.multiarray": "numpy._core.multiarray",
                   "numpy.core.numeric": "numpy._core.numeric"}


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


_TYPE_REFS = {("typing", n) for n in ("Any", "Dict", "List", "Tuple", "Optional", "Union", "Sequence", "Mapping")}
_TYPE_REFS |= _TENSOR_TYPES
_TYPE_REFS.add(("numpy", "ndarray"))  # a value for _reconstruct, never callable (ndarray(shape) allocates)

_TORCH_DTYPES = {"float32", "float", "float64", "double", "float16", "half", "bfloat16", "int8", "int16", "short",
                 "int32", "int", "int64", "long", "uint8", "bool", "complex64", "cfloat", "complex128", "cdouble"}


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
