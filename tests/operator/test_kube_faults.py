"""Which API faults the operator treats as passing (one log line, retried at the next poll) and which as bugs."""

from __future__ import annotations

import json
import logging

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


def refused_as_terminating(kind: str) -> ApiException:
    """The 403 an API server answers a create in a namespace that is being deleted."""
    exc = ApiException(status=403, reason="Forbidden")
    exc.body = json.dumps({
        "kind": "Status", "code": 403, "reason": "Forbidden",
        "message": f'{kind} "q.1" is forbidden: unable to create new content in namespace t because it is being terminated',
        "details": {"name": "q.1", "kind": kind, "causes": [{"reason": "NamespaceTerminating", "field": "metadata.namespace"}]},
    })  # fmt: skip
    return exc


def namespace_not_found() -> ApiException:
    """The 404 an API server answers a write in a namespace already deleted (the Status names the namespace)."""
    exc = ApiException(status=404, reason="Not Found")
    exc.body = json.dumps({
        "kind": "Status", "code": 404, "reason": "NotFound", "message": 'namespaces "t" not found',
        "details": {"name": "t", "kind": "namespaces"},
    })  # fmt: skip
    return exc


def test_an_event_in_a_namespace_being_deleted_or_gone_is_dropped_quietly():
    from gpufleet.kube import namespace_gone

    assert namespace_gone(refused_as_terminating("events"))
    assert namespace_gone(namespace_not_found())
    rbac = ApiException(status=403)
    rbac.body = json.dumps({"kind": "Status", "code": 403, "reason": "Forbidden", "message": "cannot create"})
    assert not namespace_gone(rbac)
    missing = ApiException(status=404)  # the object itself missing is not its namespace gone
    missing.body = json.dumps(
        {"kind": "Status", "code": 404, "details": {"name": "q", "kind": "deployments"}}
    )
    assert not namespace_gone(missing)
    assert not namespace_gone(ApiException(status=404))
    assert not namespace_gone(ApiException(status=500))


def test_a_write_refused_because_its_namespace_is_going_is_one_quiet_line(caplog):
    """A cluster-wide operator sees other teams' namespaces deleted under it: no traceback, no 'Forbidden' to chase."""
    from gpufleet.kube import log_failure as _log_failure

    caplog.set_level(logging.DEBUG, logger="gpufleet")
    _log_failure(("t", "q"), refused_as_terminating("poddisruptionbudgets"))
    assert [r.levelno for r in caplog.records] == [logging.INFO]
    assert "being deleted" in caplog.text
    assert not any(w in caplog.text for w in ("403", "orbidden", "Traceback"))
    caplog.clear()
    _log_failure(("t", "q"), namespace_not_found())  # a tick that wrote after the namespace was gone
    assert [r.levelno for r in caplog.records] == [logging.INFO]
    assert "Traceback" not in caplog.text
    caplog.clear()
    rbac = ApiException(status=403, reason="Forbidden")
    rbac.body = json.dumps({"kind": "Status", "code": 403, "reason": "Forbidden", "message": "cannot patch"})
    _log_failure(("t", "q"), rbac)
    assert [r.levelno for r in caplog.records] == [logging.ERROR]
    assert caplog.records[0].exc_info is not None
