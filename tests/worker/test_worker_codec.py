"""The array codec: exact round trips of arrays, scalars and nesting; clear errors for everything else."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from kombu.serialization import dumps as kombu_dumps
from kombu.serialization import loads as kombu_loads

from gpufleet_worker import codec
from gpufleet_worker.errors import PayloadError

NUMERIC_DTYPES = st.one_of(
    hnp.boolean_dtypes(),
    hnp.integer_dtypes(endianness="="),
    hnp.unsigned_integer_dtypes(endianness="="),
    hnp.floating_dtypes(endianness="=", sizes=(16, 32, 64)),
    hnp.complex_number_dtypes(endianness="="),
    # Byte-swapped arrays, as a big-endian producer would send them.
    hnp.integer_dtypes(endianness=">"),
    hnp.floating_dtypes(endianness=">", sizes=(16, 32, 64)),
    hnp.complex_number_dtypes(endianness=">"),
)
ARRAYS = hnp.arrays(NUMERIC_DTYPES, hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5))
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(), st.text(max_size=8),
                    st.binary(max_size=8))  # fmt: skip
VALUES = st.recursive(
    st.one_of(SCALARS, ARRAYS),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.text(max_size=5), inner, max_size=4),
    ),
    max_leaves=12,
)


def assert_same(got, expected):
    if isinstance(expected, np.ndarray):
        assert isinstance(got, np.ndarray)
        assert got.dtype == expected.dtype and got.shape == expected.shape
        assert got.tobytes() == np.ascontiguousarray(expected).tobytes()  # bit-exact, NaNs included
        assert got.flags.writeable and got.flags.c_contiguous
    elif isinstance(expected, (list, tuple)):
        assert isinstance(got, list) and len(got) == len(expected)
        for g, e in zip(got, expected, strict=True):
            assert_same(g, e)
    elif isinstance(expected, dict):
        assert got.keys() == expected.keys()
        for key in expected:
            assert_same(got[key], expected[key])
    elif isinstance(expected, float) and expected != expected:
        assert got != got
    else:
        assert got == expected and type(got) is type(expected)


@settings(max_examples=300, deadline=None)
@given(VALUES)
def test_round_trip(value):
    assert_same(codec.loads(codec.dumps(value)), value)


@settings(max_examples=100, deadline=None)
@given(ARRAYS.filter(lambda a: a.ndim > 0).map(lambda a: a.T if a.ndim > 1 else a[::-1]))
def test_non_contiguous_arrays_arrive_in_c_order(array):
    assert_same(codec.loads(codec.dumps(array)), array)


@pytest.mark.parametrize(
    "scalar", [np.float16(1.5), np.int8(-3), np.uint64(2**64 - 1), np.complex64(1 - 2j), np.bool_(True)]
)
def test_numpy_scalars_keep_their_dtype(scalar):
    got = codec.loads(codec.dumps({"x": scalar}))["x"]
    assert type(got) is type(scalar) and got == scalar


def test_complex_numbers_and_tuples():
    got = codec.loads(codec.dumps((1 + 2j, (3, [4]))))
    assert got == [1 + 2j, [3, [4]]]
    assert isinstance(got[0], complex)


def test_through_kombu_with_the_registered_content_type():
    codec.register()
    content_type, encoding, body = kombu_dumps({"a": np.arange(3)}, serializer=codec.NAME)
    assert (content_type, encoding) == (codec.CONTENT_TYPE, "binary")
    got = kombu_loads(body, content_type, encoding, accept=[codec.CONTENT_TYPE])
    np.testing.assert_array_equal(got["a"], np.arange(3))


@pytest.mark.parametrize(
    "value, message",
    [
        (np.array([object()]), "not dtype object"),
        (np.array(["text"]), "not dtype <U4"),
        (np.zeros(2, dtype=[("x", "f4")]), "not dtype"),
        (np.array(["2024-01-01"], dtype="datetime64[D]"), "not dtype datetime64"),
        (object(), "cannot encode builtins.object"),
        ({1, 2}, "cannot encode builtins.set"),
        (2**70, "does not fit in 64 bits"),
        (-(2**64), "does not fit in 64 bits"),
    ],
)
def test_values_it_cannot_carry_are_refused_clearly(value, message):
    with pytest.raises(PayloadError, match=message):
        codec.dumps({"payload": [value]})


def test_size_limit_on_both_sides():
    data = codec.dumps(np.zeros(1000))
    with pytest.raises(PayloadError, match=r"exceeds the limit of 4000 bytes \(GPUFLEET_MAX_PAYLOAD_BYTES\)"):
        codec.dumps(np.zeros(1000), max_bytes=4000)
    with pytest.raises(PayloadError, match="exceeds the limit of 4000 bytes"):
        codec.loads(data, max_bytes=4000)


SAMPLE = codec.dumps({"a": np.arange(20, dtype=np.float32).reshape(4, 5), "b": [1, "two", np.int16(3)]})


@pytest.mark.parametrize("cut", range(1, len(SAMPLE)))
def test_every_truncation_is_a_payload_error(cut):
    with pytest.raises(PayloadError, match="malformed gpufleet-msgpack payload"):
        codec.loads(SAMPLE[:cut])


def _payload(doc: bytes, area: bytes = b"") -> bytes:
    return codec.MAGIC + len(doc).to_bytes(8, "little") + doc + area


def _ext(code: int, fields) -> bytes:
    return msgpack.packb(msgpack.ExtType(code, msgpack.packb(fields)))


def _array(dtype, shape, offset, area: bytes) -> bytes:
    return _payload(_ext(codec.EXT_NDARRAY, [dtype, shape, offset]), area)


@pytest.mark.parametrize(
    "payload, message",
    [
        (codec.MAGIC + b"\x01\x00", "shorter than its length prefix"),
        (b"\xc1GF2" + bytes(8), "does not start with the mark"),
        (b"\x01\x00", "neither gpufleet-msgpack nor JSON"),
        (_payload(b"\xc1"), "FormatError"),
        (_payload(msgpack.packb(1) + b"\x00"), "ExtraData"),
        (_payload(b"\x91\x01")[:-1], "the document needs 2 bytes, 1 follow"),
        (_payload(msgpack.packb(msgpack.ExtType(99, b"x"))), "unknown msgpack extension type 99"),
        (_payload(msgpack.packb(msgpack.ExtType(codec.EXT_NDARRAY, b"\xc1"))), "malformed array header"),
        (_array("<f8", [3], 0, b"\x00" * 16), "needs 24 bytes at offset 0, the payload has 16"),
        (_array("<f8", [2**40, 2**40], 0, b""), "needs"),
        (_array("<f8", [1], 8, b"\x00" * 16), "array bytes at offset 8, expected 0"),
        (_array("<f8", [1], 0, b"\x00" * 9), "1 bytes after the last array"),
        (_array("|O", [1], 0, b"\x00" * 8), "not dtype object"),
        (_array("not-a-dtype", [1], 0, b""), "malformed array header"),
        (_array("<f8", [-1], 0, b""), "malformed array shape"),
        (_array("<f8", ["1"], 0, b""), "malformed array shape"),
        (
            _array("<f8", [1], 0, b"\x00" * 8)[:12] + _ext(codec.EXT_NDARRAY, ["<f8", [1]]),
            "malformed array header",
        ),
        (_payload(_ext(codec.EXT_SCALAR, ["<f8", b"\x00"])), "a <f8 scalar needs 8 bytes"),
        (_payload(b"\x00" * 3), "ExtraData"),
    ],
)
def test_malformed_payloads_are_payload_errors(payload, message):
    with pytest.raises(PayloadError, match=message):
        codec.loads(payload)


def test_a_self_containing_value_is_refused_not_a_crash():
    loop = []
    loop.append(loop)
    with pytest.raises(PayloadError, match="cannot encode this value"):
        codec.dumps(loop)


def test_deep_nesting_is_refused_not_a_crash():
    with pytest.raises(PayloadError):
        codec.loads(_payload(b"\x91" * 100_000 + b"\xc0"))


def test_auto_writes_json_without_arrays_and_the_codec_with_them():
    plain = codec.dumps_auto([[1, "two", {"three": 3.0}], {}, {}])
    assert not codec.is_binary(plain) and plain.startswith(b"[")
    assert codec.loads(plain) == [[1, "two", {"three": 3.0}], {}, {}]
    with_array = codec.dumps_auto([[np.arange(3)], {}, {}])
    assert codec.is_binary(with_array)
    assert_same(codec.loads(with_array), [[np.arange(3)], {}, {}])


def test_both_names_share_one_content_type_and_one_decoder():
    codec.register()
    for name in (codec.NAME, codec.AUTO_NAME):
        content_type, encoding, data = kombu_dumps({"a": np.eye(2)}, serializer=name)
        assert content_type == codec.CONTENT_TYPE and encoding == "binary"
        assert_same(kombu_loads(data, content_type, encoding), {"a": np.eye(2)})


@pytest.mark.parametrize(
    "value, expected",
    [
        (np.arange(4, dtype=np.int16).reshape(2, 2), [[0, 1], [2, 3]]),
        (np.float32(0.5), 0.5),
        (np.bool_(True), True),
        (np.zeros((0, 3)), []),
    ],
)
def test_to_json_makes_lists_and_numbers(value, expected):
    got = codec.to_json(value)
    assert got == expected and type(got) is type(expected)


@pytest.mark.parametrize(
    "value, message",
    [
        (np.ones(2, dtype=np.complex64), "complex ndarray cannot be written as JSON"),
        (np.complex128(1j), "complex complex128 cannot be written as JSON"),
        (1j, "complex number cannot be written as JSON"),
        (np.array([object()]), "not dtype object"),
    ],
)
def test_to_json_refuses_what_json_cannot_hold(value, message):
    with pytest.raises(PayloadError, match=message):
        codec.to_json(value)
