"""Which API faults the operator treats as passing (one log line, retried at the next poll) and which as bugs."""

from __future__ import annotations

import urllib3.exceptions
from kubernetes.client.exceptions import ApiException

from gpufleet.kube import transient


def test_a_restarting_or_overloaded_api_server_is_a_passing_fault():
    for status in (429, 500, 502, 503, 504, 0):
        assert transient(ApiException(status=status)), status
    assert transient(urllib3.exceptions.MaxRetryError(None, "/", "Connection refused"))
    assert transient(urllib3.exceptions.ReadTimeoutError(None, "/", "read timed out"))
    assert transient(ConnectionResetError())


def test_what_the_api_refuses_or_a_bug_is_not():
    for status in (400, 403, 404, 409, 422):
        assert not transient(ApiException(status=status)), status
    assert not transient(KeyError("spec"))
    assert not transient(TypeError("bad"))
