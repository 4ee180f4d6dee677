"""The array codec: msgpack with an ndarray extension, registered with kombu as `gpufleet-msgpack`.

Arrays travel as (dtype, shape, raw C-order bytes) instead of pickle: no code runs on decode, and a 100 MB
array costs one memory copy each way rather than a Python object walk. Everything else is plain msgpack, so
the codec carries what JSON carries (tuples come back as lists) plus arrays, NumPy scalars and complex
numbers.

A payload is: a 4-byte mark (`MAGIC`), the length of the msgpack document (8 bytes, little-endian), the
document, then the bytes of every array in the order the document names them. Keeping array bytes out of the
document spares msgpack from copying them into its own buffer (and growing it) on the way in; the document
refers to each by offset. The mark starts with 0xC1, a byte that begins neither msgpack nor UTF-8 text, so
`loads` tells a payload of this codec from JSON: a result in Redis carries no content type, and a reader that
has this codec reads the JSON results a worker writes for plain producers as well (see results.py).

Two names are registered with kombu: `gpufleet-msgpack` always writes this format (the producer's side,
gpufleet_worker.client), `gpufleet-auto` writes JSON when the value has no arrays and this format otherwise
(the messages a worker sends itself: retries, chord callbacks, fan-out), so a task that came in as JSON
keeps being JSON, and so does its result.
"""

from __future__ import annotations

import math
import struct

import msgpack
import numpy as np
from kombu.serialization import register as kombu_register
from kombu.utils import json as kombu_json

from .errors import PayloadError

NAME = "gpufleet-msgpack"
AUTO_NAME = "gpufleet-auto"
CONTENT_TYPE = "application/x-gpufleet-msgpack"
MAGIC = b"\xc1GF1"
DEFAULT_MAX_PAYLOAD_BYTES = 512 * 1024**2

EXT_NDARRAY = 1  # [dtype, shape, offset]: the array's bytes lie at `offset` in the array area
EXT_SCALAR = 2  # [dtype, bytes]: a NumPy scalar (or complex number), inline

# bool, signed and unsigned integers, floats (float16 included), complex: fixed-size plain bytes.
# Object, string, void and datetime dtypes are refused: they either hold pointers or need more than bytes.
_NUMERIC_KINDS = frozenset("biufc")
_DOC_LEN = struct.Struct("<Q")

# Where decoded arrays live; a GPU worker swaps in pinned host memory (see device.py).
_allocate = np.empty


def set_host_allocator(allocate) -> None:
    """Have decoded arrays allocated by `allocate(shape, dtype)` instead of `numpy.empty`."""
    global _allocate
    _allocate = allocate


def _check_dtype(dtype: np.dtype) -> None:
    if dtype.kind not in _NUMERIC_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise PayloadError(
            f"gpufleet-msgpack carries numeric and bool arrays only, not dtype {dtype} "
            "(object, string and structured arrays are refused)"
        )


def _c_order(a: np.ndarray) -> np.ndarray:
    # Not ascontiguousarray: it turns 0-d arrays into 1-d ones.
    return a if a.flags.c_contiguous else a.copy(order="C")


class _Encoder:
    def __init__(self):
        self.buffers: list[np.ndarray] = []
        self.offset = 0

    def default(self, obj):
        if isinstance(obj, np.ndarray):
            _check_dtype(obj.dtype)
            a = _c_order(obj)
            ref = msgpack.packb([a.dtype.str, list(a.shape), self.offset])
            self.buffers.append(a.reshape(-1).view(np.uint8))
            self.offset += a.nbytes
            return msgpack.ExtType(EXT_NDARRAY, ref)
        if isinstance(obj, (np.generic, complex)):
            scalar = np.asarray(obj, dtype=np.complex128 if type(obj) is complex else None)
            _check_dtype(scalar.dtype)
            return msgpack.ExtType(EXT_SCALAR, msgpack.packb([scalar.dtype.str, scalar.tobytes()]))
        if type(obj).__module__.startswith("cupy") and callable(getattr(obj, "get", None)):
            return self.default(obj.get())  # a CuPy array or scalar: brought to the host
        if isinstance(obj, int):
            raise PayloadError(f"integer {obj} does not fit in 64 bits, msgpack's limit")
        raise PayloadError(
            f"gpufleet-msgpack cannot encode {type(obj).__module__}.{type(obj).__qualname__}: "
            "use arrays, numbers, strings, bytes, None, lists, tuples and dicts"
        )


class _Decoder:
    def __init__(self, area: memoryview):
        self.area = area
        self.offset = 0

    def _header(self, data: bytes, fields: int):
        try:
            header = msgpack.unpackb(data)
            if not isinstance(header, list) or len(header) != fields:
                raise ValueError(f"expected {fields} fields")
            dtype = np.dtype(header[0])
        except Exception as exc:
            raise PayloadError(f"malformed array header: {exc}") from None
        _check_dtype(dtype)
        return dtype, header

    def ext_hook(self, code: int, data: bytes):
        if code == EXT_SCALAR:
            dtype, (_, raw) = self._header(data, 2)
            if not isinstance(raw, bytes) or len(raw) != dtype.itemsize:
                raise PayloadError(f"a {dtype.str} scalar needs {dtype.itemsize} bytes")
            return np.frombuffer(raw, dtype=dtype)[0]
        if code != EXT_NDARRAY:
            raise PayloadError(f"unknown msgpack extension type {code}")
        dtype, (_, shape, offset) = self._header(data, 3)
        if not isinstance(shape, list) or not all(isinstance(n, int) and n >= 0 for n in shape):
            raise PayloadError(f"malformed array shape {shape!r}")
        # Arrays are laid out in document order, back to back: anything else is a corrupt payload.
        if offset != self.offset:
            raise PayloadError(f"array bytes at offset {offset}, expected {self.offset}")
        nbytes = dtype.itemsize * math.prod(shape)  # Python ints: a hostile shape cannot wrap around
        if offset + nbytes > len(self.area):
            raise PayloadError(
                f"array of dtype {dtype.str} and shape {tuple(shape)} needs {nbytes} bytes at offset {offset}, "
                f"the payload has {len(self.area) - offset} (truncated or corrupt)"
            )
        self.offset += nbytes
        # A copy, so that tasks and callers get ordinary writable arrays rather than views of the message.
        out = _allocate(tuple(shape), dtype)
        out.reshape(-1).view(np.uint8)[:] = np.frombuffer(self.area, np.uint8, nbytes, offset)
        return out


def dumps(obj, max_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES) -> bytes:
    encoder = _Encoder()
    try:
        doc = msgpack.packb(obj, default=encoder.default, use_bin_type=True)
    except PayloadError:
        raise
    except (TypeError, ValueError, OverflowError) as exc:
        raise PayloadError(f"gpufleet-msgpack cannot encode this value: {exc}") from exc
    size = len(MAGIC) + _DOC_LEN.size + len(doc) + encoder.offset
    if size > max_bytes:
        raise PayloadError(
            f"payload of {size} bytes exceeds the limit of {max_bytes} bytes "
            "(GPUFLEET_MAX_PAYLOAD_BYTES); pass large data by reference or split it (gpufleet_worker.fanout)"
        )
    return b"".join((MAGIC, _DOC_LEN.pack(len(doc)), doc, *encoder.buffers))


def dumps_auto(obj, max_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES) -> bytes:
    """JSON (kombu's, as Celery writes it) when `obj` holds no arrays, this codec's format otherwise."""
    try:
        text = kombu_json.dumps(obj)
    except (TypeError, ValueError):
        return dumps(obj, max_bytes)
    return text.encode("utf-8")


def is_binary(data) -> bool:
    """Whether `data` is meant as a payload of this codec (JSON never starts with the mark's first byte)."""
    return data[:1] == MAGIC[:1]


def _decode(data) -> object:
    start = len(MAGIC) + _DOC_LEN.size
    if data[: len(MAGIC)] != MAGIC:
        raise PayloadError(f"it does not start with the mark {MAGIC!r}")
    if len(data) < start:
        raise PayloadError("shorter than its length prefix")
    (doc_len,) = _DOC_LEN.unpack_from(data, len(MAGIC))
    doc_end = start + doc_len
    if doc_end > len(data):
        raise PayloadError(f"the document needs {doc_len} bytes, {len(data) - start} follow (truncated)")
    view = memoryview(data)
    decoder = _Decoder(view[doc_end:])
    try:
        value = msgpack.unpackb(view[start:doc_end], ext_hook=decoder.ext_hook, raw=False,
                                strict_map_key=False)  # fmt: skip
    except PayloadError:
        raise
    except Exception as exc:
        raise PayloadError(f"{type(exc).__name__} {exc}".rstrip()) from None
    if decoder.offset != len(decoder.area):
        raise PayloadError(f"{len(decoder.area) - decoder.offset} bytes after the last array (corrupt)")
    return value


def loads(data, max_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES):
    """A payload of this codec, or JSON (what `dumps_auto` and a worker's JSON results write)."""
    if isinstance(data, str):
        # kombu hands text to decoders when a transport decoded the body; ours is binary.
        data = data.encode("latin-1")
    if len(data) > max_bytes:
        raise PayloadError(
            f"payload of {len(data)} bytes exceeds the limit of {max_bytes} bytes (GPUFLEET_MAX_PAYLOAD_BYTES)"
        )
    if not is_binary(data):
        try:
            return kombu_json.loads(bytes(data).decode("utf-8"))
        except ValueError as exc:
            raise PayloadError(f"neither gpufleet-msgpack nor JSON ({len(data)} bytes): {exc}") from None
    try:
        return _decode(data)
    except PayloadError as exc:
        raise PayloadError(f"malformed gpufleet-msgpack payload of {len(data)} bytes: {exc}") from None


def to_json(value):
    """`value` as JSON types, for a reader without this codec: arrays become nested lists, NumPy scalars
    numbers (a `default` hook of json.JSONEncoder; anything else is left to kombu's JSON encoder)."""
    if type(value).__module__.startswith("cupy") and callable(getattr(value, "get", None)):
        value = value.get()
    if isinstance(value, (np.ndarray, np.generic)):
        _check_dtype(value.dtype)
        if value.dtype.kind == "c":
            raise PayloadError(
                f"a complex {type(value).__name__} cannot be written as JSON, which has no complex numbers: "
                "read this result with gpufleet_worker.client (arrays in binary), or return real and "
                "imaginary parts"
            )
        return value.tolist()
    if isinstance(value, complex):
        raise PayloadError("a complex number cannot be written as JSON, which has no complex numbers")
    raise TypeError(f"not JSON: {type(value).__qualname__}")


def register(max_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES) -> None:
    """Make kombu (and so Celery) able to use the codec in this process, with this size limit.

    Both names share one content type and one decoder, which reads either format."""
    for name, encode in ((AUTO_NAME, dumps_auto), (NAME, dumps)):
        kombu_register(
            name,
            lambda obj, encode=encode: encode(obj, max_bytes),
            lambda data: loads(data, max_bytes),
            content_type=CONTENT_TYPE,
            content_encoding="binary",
        )
