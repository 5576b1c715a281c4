"""A restricted unpickler for untrusted pickles (insightface ``.bin`` files).

Only bytes, lists, tuples, bools, ints and numpy arrays of bool/int dtype can come out. The only globals a pickle may
name are the few that numpy arrays and Python-3 ``bytes`` need, each replaced by a wrapper that checks its
arguments (``ndarray`` is only accepted as the subtype argument, dtypes must be bool/int, ``_codecs.encode`` only
encodes latin-1). Any other global (``os.system``, ``builtins.eval``, ...) is refused before it is called, and the
loaded object is walked once more to refuse floats, strings, dicts and object or structured arrays.
"""

from __future__ import annotations

import io
import pickle
import pickletools
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from lafs_core.errors import DataError

ALLOWED_KINDS = "biu"
_ALLOWED_DESCRIPTION = "bytes, lists, tuples, bools, ints and numpy arrays of bools/ints"


class _RefusedError(Exception):
    """Raised inside the unpickler; turned into a DataError naming the file."""


def _safe_dtype(obj: Any, align: bool = False, copy: bool = True) -> np.dtype:
    try:
        dtype = np.dtype(obj.decode("ascii") if isinstance(obj, bytes) else obj, align=bool(align), copy=True)
    except (TypeError, ValueError, UnicodeDecodeError) as exc:
        raise _RefusedError(f"invalid numpy dtype {obj!r}") from exc
    _check_dtype(dtype)
    return dtype


def _check_dtype(dtype: np.dtype) -> None:
    if dtype.kind not in ALLOWED_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise _RefusedError(f"numpy dtype {dtype} is not allowed (only bool and integer arrays)")


class _Sealed:
    """Base of the objects ``find_class`` hands out: the pickle's BUILD opcode cannot set their state."""

    __slots__ = ()

    def __setstate__(self, state: Any) -> None:
        raise _RefusedError("the pickle tries to set the state of a numpy helper")


class _NdarrayType(_Sealed):
    """Stands for ``numpy.ndarray`` in the stream; only :func:`_safe_reconstruct` accepts it."""

    __slots__ = ()


class _Checked(_Sealed):
    """A callable wrapper around one checking function."""

    __slots__ = ("_fn",)

    def __init__(self, fn: Any) -> None:
        object.__setattr__(self, "_fn", fn)

    def __call__(self, *args: Any) -> Any:
        return self._fn(*args)


_NDARRAY = _NdarrayType()


def _safe_reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    if subtype is not _NDARRAY:
        raise _RefusedError("numpy _reconstruct of something that is not a plain ndarray")
    return np.ndarray.__new__(np.ndarray, (0,), np.uint8)


def _safe_frombuffer(buffer: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    if not isinstance(buffer, bytes | bytearray | memoryview) or not isinstance(dtype, np.dtype):
        raise _RefusedError("numpy _frombuffer with an unexpected buffer or dtype")
    _check_dtype(dtype)
    array = np.frombuffer(bytes(buffer), dtype=dtype)
    return array.reshape(shape, order="F" if order == "F" else "C").copy()


def _safe_codecs_encode(text: Any, encoding: Any = "latin1") -> bytes:
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise _RefusedError("_codecs.encode is only allowed for latin-1 text (Python 3 bytes in protocol < 3)")
    return text.encode("latin1")


_NUMPY_MODULES = ("numpy.core.multiarray", "numpy._core.multiarray")
_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _Checked(_safe_dtype),
    ("_codecs", "encode"): _Checked(_safe_codecs_encode),
    **{(module, "_reconstruct"): _Checked(_safe_reconstruct) for module in _NUMPY_MODULES},
    **{(module, "_frombuffer"): _Checked(_safe_frombuffer) for module in ("numpy.core.numeric", "numpy._core.numeric")},
}


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose ``find_class`` only returns the checked wrappers in ``_ALLOWED``."""

    def __init__(self, file: BinaryIO) -> None:
        super().__init__(file, encoding="bytes")

    def find_class(self, module: str, name: str) -> Any:
        """Return an allowed wrapper or refuse the global before anything is called."""
        allowed = _ALLOWED.get((module, name))
        if allowed is None:
            raise _RefusedError(f"the pickle references {module}.{name}; only {_ALLOWED_DESCRIPTION} are allowed")
        return allowed

    def persistent_load(self, pid: Any) -> Any:
        """Persistent ids are never allowed."""
        raise _RefusedError("the pickle uses persistent ids")


def _check_value(value: Any, where: str = "root") -> None:
    if isinstance(value, bool | int | bytes | bytearray):
        return
    if isinstance(value, np.ndarray):
        _check_dtype(value.dtype)
        return
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _check_value(item, f"{where}[{i}]")
        return
    raise _RefusedError(f"{where} is a {type(value).__name__}; only {_ALLOWED_DESCRIPTION} are allowed")


def _check_lengths(data: bytes) -> None:
    """Walk the opcodes once: a length field (bytes, string, frame) claiming more than the data holds is refused
    here, since the unpickler would allocate the claimed size before finding the data short (memory bounded by the
    file, not by a header)."""
    for _ in pickletools.genops(io.BytesIO(data)):
        pass


def safe_loads(data: bytes, path: str | Path = "<bytes>") -> Any:
    """Unpickle ``data`` with the restrictions above; DataError naming ``path`` if it is refused or broken."""
    try:
        _check_lengths(data)
        value = RestrictedUnpickler(io.BytesIO(data)).load()
        _check_value(value)
    except _RefusedError as exc:
        raise DataError(path, f"refused untrusted pickle: {exc}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as exc:
        raise DataError(path, f"not a valid pickle: {exc}") from None
    return value


def safe_load(path: str | Path) -> Any:
    """Read and restrictedly unpickle a file."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise DataError(path, f"cannot read: {exc.strerror}") from exc
    return safe_loads(data, path)
