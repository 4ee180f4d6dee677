"""Which format a result is written in, and that both formats read back through every reader."""

from __future__ import annotations

import json

import numpy as np
import pytest
from celery.app.backends import by_url
from kombu.exceptions import EncodeError

from gpufleet_worker import codec, results


def test_json_results_hold_arrays_as_lists_and_read_as_plain_json():
    text = results.dumps_json(
        {"status": "SUCCESS", "result": {"m": np.eye(2, dtype=np.float32), "n": np.int64(3)}}
    )
    assert json.loads(text) == {"status": "SUCCESS", "result": {"m": [[1.0, 0.0], [0.0, 1.0]], "n": 3}}
    assert codec.loads(text.encode()) == json.loads(text)


def test_a_result_json_cannot_hold_is_an_encode_error_that_says_why():
    with pytest.raises(EncodeError, match="complex ndarray cannot be written as JSON"):
        results.dumps_json({"result": np.ones(2, dtype=complex)})
    with pytest.raises(EncodeError, match="cannot be written as JSON for its plain Celery producer"):
        results.dumps_json({"result": {1, 2}})


@pytest.mark.parametrize(
    "url, cls",
    [
        ("redis://r:6379/0", results.NegotiatingRedisBackend),
        ("rediss://r:6380/0?ssl_cert_reqs=required", results.NegotiatingRedisBackend),
        ("sentinel://s1:26379;sentinel://s2:26379", results.NegotiatingSentinelBackend),
    ],
)
def test_redis_backends_become_negotiating_ones_with_their_url(url, cls):
    backend, backend_url = by_url(results.backend_url(url))
    assert backend is cls and backend_url == url


@pytest.mark.parametrize("url", [None, "", "db+sqlite:///results.db"])
def test_other_backends_are_left_alone(url):
    assert results.backend_url(url) == url
