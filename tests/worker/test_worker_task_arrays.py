"""Array parameters of gpu_task take nested lists (a JSON producer's arrays), with errors that name the argument."""

from __future__ import annotations

import numpy as np
import pytest

from gpufleet_worker.gputask import _arrays_of, as_array


@pytest.mark.parametrize(
    "value, dtype, shape",
    [
        ([[1, 2], [3, 4]], np.int64, (2, 2)),
        ([[1.5], [2]], np.float64, (2, 1)),
        ([True, False], np.bool_, (2,)),
        (3, np.int64, ()),
        ([], np.float64, (0,)),
    ],
)
def test_lists_become_arrays(value, dtype, shape):
    got = as_array("a", value)
    assert isinstance(got, np.ndarray) and got.dtype == dtype and got.shape == shape


def test_arrays_pass_through_untouched():
    a = np.arange(3, dtype=np.float32)
    assert as_array("a", a) is a


@pytest.mark.parametrize(
    "value, message",
    [
        ([[1, 2], [3]], "argument kernel is not an array of numbers: .*inhomogeneous"),
        (
            [["x", "y"]],
            "argument kernel must be an array of numbers or booleans .* got list \\[\\['x', 'y'\\]\\]",
        ),
        ({"a": 1}, "argument kernel must be an array of numbers or booleans .* got dict"),
        ([None, 1], "argument kernel must be an array of numbers"),
        ("text", "argument kernel must be an array of numbers"),
    ],
)
def test_what_is_not_an_array_of_numbers_is_refused_by_name(value, message):
    with pytest.raises(ValueError, match=message):
        as_array("kernel", value)


def test_arguments_are_converted_by_position_and_by_name():
    def fn(xp, a, b, axis=None):
        pass

    convert = _arrays_of(fn, ("a", "b"))
    args, kwargs = convert(([1, 2],), {"b": [[3]], "axis": [0, 1]})
    assert isinstance(args[0], np.ndarray) and isinstance(kwargs["b"], np.ndarray)
    assert kwargs["axis"] == [0, 1]  # not an array parameter: left as it came


def test_an_unknown_array_parameter_is_a_mistake_at_decoration():
    def fn(xp, a):
        pass

    with pytest.raises(TypeError, match="has no parameter b"):
        _arrays_of(fn, ("a", "b"))
