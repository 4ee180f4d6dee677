"""The array codec: msgpack with an ndarray extension, registered with kombu as `gpufleet-msgpack`.

Arrays travel as (dtype, shape, raw C-order bytes) instead of pickle: no code runs on decode, and a 100 MB
array costs a memory copy rather than a Python object walk. Everything else is plain msgpack, so the codec
carries what JSON carries (tuples come back as lists) plus arrays, NumPy scalars and complex numbers.
"""

from __future__ import annotations

import math
import struct

import msgpack
import numpy as np
from kombu.serialization import register as kombu_register

from .errors import PayloadError

NAME = "gpufleet-msgpack"
CONTENT_TYPE = "application/x-gpufleet-msgpack"
DEFAULT_MAX_PAYLOAD_BYTES = 512 * 1024**2

EXT_NDARRAY = 1
EXT_SCALAR = 2

# bool, signed and unsigned integers, floats (float16 included), complex: fixed-size plain bytes.
# Object, string, void and datetime dtypes are refused: they either hold pointers or need more than bytes.
_NUMERIC_KINDS = frozenset("biufc")
_HEADER_LEN = struct.Struct("<I")

# Where decoded arrays live; a GPU worker swaps in pinned host memory (see device.py).
_allocate = np.empty


def set_host_allocator(allocate) -> None:
    """Have decoded arrays allocated by `allocate(shape, dtype)` instead of `numpy.empty`."""
    global _allocate
    _allocate = allocate


def _as_host(obj):
    """CuPy arrays (and anything else with a `.get()` to host, like CuPy) become NumPy arrays."""
    get = getattr(obj, "get", None)
    if type(obj).__module__.startswith("cupy") and callable(get):
        return get()
    return None


def _check_dtype(dtype: np.dtype) -> None:
    if dtype.kind not in _NUMERIC_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise PayloadError(
            f"gpufleet-msgpack carries numeric and bool arrays only, not dtype {dtype} "
            "(object, string and structured arrays are refused)"
        )


def _pack_array(a: np.ndarray) -> bytes:
    _check_dtype(a.dtype)
    if not a.flags.c_contiguous:
        a = a.copy(order="C")  # not ascontiguousarray: it turns 0-d arrays into 1-d ones
    header = msgpack.packb([a.dtype.str, list(a.shape)])
    # join() takes the array's buffer directly: one copy of the data, not two.
    return b"".join((_HEADER_LEN.pack(len(header)), header, a.reshape(-1).view(np.uint8)))


def _default(obj):
    if isinstance(obj, np.ndarray):
        return msgpack.ExtType(EXT_NDARRAY, _pack_array(obj))
    if isinstance(obj, np.generic):
        return msgpack.ExtType(EXT_SCALAR, _pack_array(np.asarray(obj)))
    if isinstance(obj, complex):
        return msgpack.ExtType(EXT_SCALAR, _pack_array(np.asarray(obj, dtype=np.complex128)))
    host = _as_host(obj)
    if host is not None:
        return _default(host)
    if isinstance(obj, int):
        raise PayloadError(f"integer {obj} does not fit in 64 bits, msgpack's limit")
    raise PayloadError(
        f"gpufleet-msgpack cannot encode {type(obj).__module__}.{type(obj).__qualname__}: "
        "use arrays, numbers, strings, bytes, None, lists, tuples and dicts"
    )


def _unpack_array(data: bytes) -> np.ndarray:
    if len(data) < _HEADER_LEN.size:
        raise PayloadError("truncated array header")
    (hlen,) = _HEADER_LEN.unpack_from(data)
    start = _HEADER_LEN.size + hlen
    if start > len(data):
        raise PayloadError("truncated array header")
    try:
        dtype_str, shape = msgpack.unpackb(data[_HEADER_LEN.size : start])
        dtype = np.dtype(dtype_str)
        shape = tuple(shape)
    except Exception as exc:
        raise PayloadError(f"malformed array header: {exc}") from None
    _check_dtype(dtype)
    if not all(isinstance(n, int) and n >= 0 for n in shape):
        raise PayloadError(f"malformed array shape {shape!r}")
    expected = dtype.itemsize * math.prod(shape)  # Python ints: a hostile shape cannot wrap around
    if len(data) - start != expected:
        raise PayloadError(
            f"array of dtype {dtype.str} and shape {shape} needs {expected} bytes, the payload has "
            f"{len(data) - start} (truncated or corrupt)"
        )
    # A copy, so that tasks and callers get ordinary writable arrays rather than views of a bytes object.
    out = _allocate(shape, dtype)
    out[...] = np.frombuffer(data, dtype=dtype, offset=start).reshape(shape)
    return out


def _ext_hook(code: int, data: bytes):
    if code == EXT_NDARRAY:
        return _unpack_array(data)
    if code == EXT_SCALAR:
        return _unpack_array(data)[()]
    raise PayloadError(f"unknown msgpack extension type {code}")


def dumps(obj, max_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES) -> bytes:
    try:
        data = msgpack.packb(obj, default=_default, use_bin_type=True)
    except PayloadError:
        raise
    except (TypeError, ValueError, OverflowError) as exc:
        raise PayloadError(f"gpufleet-msgpack cannot encode this value: {exc}") from exc
    if len(data) > max_bytes:
        raise PayloadError(
            f"payload of {len(data)} bytes exceeds the limit of {max_bytes} bytes "
            "(GPUFLEET_MAX_PAYLOAD_BYTES); pass large data by reference or split it (gpufleet_worker.fanout)"
        )
    return data


def loads(data, max_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES):
    if isinstance(data, str):
        # kombu hands text to decoders when a transport decoded the body; ours is binary.
        data = data.encode("latin-1")
    if len(data) > max_bytes:
        raise PayloadError(
            f"payload of {len(data)} bytes exceeds the limit of {max_bytes} bytes (GPUFLEET_MAX_PAYLOAD_BYTES)"
        )
    try:
        return msgpack.unpackb(data, ext_hook=_ext_hook, raw=False, strict_map_key=False)
    except PayloadError as exc:
        raise PayloadError(f"malformed gpufleet-msgpack payload of {len(data)} bytes: {exc}") from None
    except Exception as exc:
        raise PayloadError(
            f"malformed gpufleet-msgpack payload of {len(data)} bytes: {type(exc).__name__} {exc}".rstrip()
        ) from None


def register(max_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES) -> None:
    """Make kombu (and so Celery) able to use the codec in this process, with this size limit."""
    kombu_register(
        NAME,
        lambda obj: dumps(obj, max_bytes),
        lambda data: loads(data, max_bytes),
        content_type=CONTENT_TYPE,
        content_encoding="binary",
    )
