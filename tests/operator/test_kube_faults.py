"""Which API faults the operator treats as passing (one log line, retried at the next poll) and which as bugs."""

from __future__ import annotations

import json

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


def test_an_event_in_a_namespace_being_deleted_is_dropped_quietly():
    from gpufleet.kube import _namespace_terminating

    body = json.dumps({
        "kind": "Status", "code": 403, "reason": "Forbidden",
        "message": 'events "q.1" is forbidden: unable to create new content in namespace t because it is being terminated',
        "details": {"name": "q.1", "kind": "events", "causes": [{"reason": "NamespaceTerminating", "field": "metadata.namespace"}]},
    })  # fmt: skip
    terminating = ApiException(status=403)
    terminating.body = body
    assert _namespace_terminating(terminating)
    rbac = ApiException(status=403)
    rbac.body = json.dumps({"kind": "Status", "code": 403, "reason": "Forbidden", "message": "cannot create"})
    assert not _namespace_terminating(rbac)
    assert not _namespace_terminating(ApiException(status=500))
