"""The one door to the Kubernetes API. Each call says how it treats 404 and 409; nothing else talks to the API.

- 404 on a read means "absent" (None); on a status patch or an Event it means the object is gone: ignored.
- 409 on an apply cannot happen (forced server-side apply); on an Event name it is ignored (already posted).
- 400/422 (the API refused the object) raise Rejected with the API's message, for a condition and an Event.
- anything else raises, and the caller retries on its next tick.
"""

from __future__ import annotations

import base64
import json
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException

from gpufleet import metrics
from gpufleet.crd import GROUP, PLURAL, VERSION
from gpufleet.model import rfc3339

log = logging.getLogger(__name__)
FIELD_MANAGER = "gpufleet"
# Every call's (connect, read) limit. A call without one waits as long as a silent connection lasts; with a Lease,
# a write still in flight when the leader's renew deadline passes must land within the 5 s before any standby can
# lead (leader.py), and the tick must not hang on one stuck request.
REQUEST_TIMEOUT = (5, 5)
# What a restarting or overloaded API server answers: the next poll retries, nothing to debug.
TRANSIENT_STATUS = frozenset({0, 429, 500, 502, 503, 504})


def transient(exc: BaseException) -> bool:
    """A passing fault of the API (connection refused or reset, a timeout, 429, 5xx): retried, not a bug."""
    if isinstance(exc, ApiException):
        return exc.status in TRANSIENT_STATUS
    import urllib3.exceptions

    return isinstance(exc, (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError))


class Rejected(Exception):
    """The API server refused what we sent (400/422): a problem in the spec, not a passing fault."""


class Forbidden(Exception):
    """RBAC refused a read (403): a problem of the one fleet that asked, never a reason to stop the others."""


class NotLeading(Exception):
    """A write attempted after this replica lost the Lease: refused before it is sent (leader.FencedKube)."""


def log_failure(key: tuple[str, str], exc: BaseException) -> None:
    """One fleet's fault, retried at its next poll. A passing one (the API restarting or overloaded, this replica
    no longer leading) is one line; anything else is logged with its traceback, as a bug to look at."""
    if isinstance(exc, ApiException) and namespace_gone(exc):
        # Its namespace is going or gone, and the queue with it: the deletion event ends this fleet; nothing to debug.
        log.info("%s/%s: its namespace is being deleted or gone; nothing more is written there", *key)
    elif transient(exc) or isinstance(exc, NotLeading):
        log.warning("%s/%s: %s: %s; retrying at its next poll", *key, type(exc).__name__, _short(exc))
    else:
        log.error("%s/%s: failed; retrying at its next poll", *key, exc_info=exc)


def _short(exc: BaseException) -> str:
    text = f"{exc.status} {exc.reason}" if isinstance(exc, ApiException) else str(exc)
    return text.splitlines()[0][:300] if text else ""


def _message(exc: ApiException) -> str:
    try:
        return json.loads(exc.body)["message"]
    except (TypeError, ValueError, KeyError):
        return f"{exc.status} {exc.reason}"


def namespace_gone(exc: ApiException) -> bool:
    """Refused because the object's namespace is being deleted (403, cause NamespaceTerminating) or is already
    gone (404 naming the namespace itself), not because RBAC refused or the object is missing."""
    if exc.status not in (403, 404):
        return False
    try:
        details = json.loads(exc.body).get("details") or {}
    except (TypeError, ValueError, AttributeError):
        return False
    if exc.status == 404:
        return details.get("kind") == "namespaces"
    return any(c.get("reason") == "NamespaceTerminating" for c in details.get("causes") or [])


def load_config() -> None:
    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()


class Kube:
    def __init__(
        self, api_client: kubernetes.client.ApiClient | None = None, clock: Callable[[], float] = time.time
    ) -> None:
        self.clock = clock  # the operator's one clock: Event times agree with the status it writes
        self.client = api_client or kubernetes.client.ApiClient()
        self.apps = kubernetes.client.AppsV1Api(self.client)
        self.core = kubernetes.client.CoreV1Api(self.client)
        self.policy = kubernetes.client.PolicyV1Api(self.client)
        self.resource = kubernetes.client.ResourceV1Api(self.client)
        self.custom = kubernetes.client.CustomObjectsApi(self.client)

    def apply(self, body: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply of a Deployment or PodDisruptionBudget we own; the same body twice changes nothing."""
        meta = body["metadata"]
        metrics.api_writes.labels(body["kind"]).inc()
        patch = {
            "Deployment": self.apps.patch_namespaced_deployment,
            "PodDisruptionBudget": self.policy.patch_namespaced_pod_disruption_budget,
            "ResourceClaimTemplate": self.resource.patch_namespaced_resource_claim_template,
        }[body["kind"]]
        try:
            return self.client.sanitize_for_serialization(
                patch(
                    meta["name"],
                    meta["namespace"],
                    body,
                    field_manager=FIELD_MANAGER,
                    force=True,
                    _content_type="application/apply-patch+yaml",
                    _request_timeout=REQUEST_TIMEOUT,
                )
            )
        except ApiException as exc:
            if exc.status in (400, 422):
                raise Rejected(_message(exc)) from None
            raise

    def list_deployments(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        """The Deployments of a namespace that match a label selector."""
        metrics.api_reads.labels("Deployment/list").inc()
        found = self.apps.list_namespaced_deployment(
            namespace, label_selector=selector, _request_timeout=REQUEST_TIMEOUT
        )
        return [self.client.sanitize_for_serialization(d) for d in found.items]

    def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        metrics.api_writes.labels("GpuTaskQueue/status").inc()
        try:
            self.custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, PLURAL, name, {"status": status}, _request_timeout=REQUEST_TIMEOUT
            )
        except ApiException as exc:
            if exc.status != 404:
                raise

    def secret_value(self, namespace: str, name: str, key: str) -> str | None:
        """A Secret's key, decoded; None when the Secret or the key is missing."""
        metrics.api_reads.labels("Secret").inc()
        try:
            secret = self.core.read_namespaced_secret(name, namespace, _request_timeout=REQUEST_TIMEOUT)
        except ApiException as exc:
            if exc.status == 404:
                return None
            if exc.status == 403:
                raise Forbidden(_message(exc)) from None
            raise
        raw = (secret.data or {}).get(key)
        return None if raw is None else base64.b64decode(raw).decode()

    def patch_pod(self, namespace: str, name: str, metadata: dict[str, Any]) -> None:
        """Labels and annotations of a pod (a None value removes the key); a pod already gone is ignored."""
        metrics.api_writes.labels("Pod").inc()
        try:
            self.core.patch_namespaced_pod(
                name, namespace, {"metadata": metadata}, _request_timeout=REQUEST_TIMEOUT
            )
        except ApiException as exc:
            if exc.status != 404:
                raise

    def event(self, obj: dict[str, Any], type_: str, reason: str, message: str) -> None:
        """A core/v1 Event on a GpuTaskQueue. Messages must never carry secrets; callers pass safe text."""
        meta = obj["metadata"]
        stamp = rfc3339(self.clock())
        body = {
            "metadata": {"name": f"{meta['name']}.{uuid.uuid4().hex[:12]}", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": obj.get("apiVersion", f"{GROUP}/{VERSION}"),
                "kind": obj.get("kind", "GpuTaskQueue"),
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid"),
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": "gpufleet-operator"},
            "reportingComponent": "gpufleet.dev/operator",
            "reportingInstance": "gpufleet-operator",
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        metrics.api_writes.labels("Event").inc()
        try:
            self.core.create_namespaced_event(meta["namespace"], body, _request_timeout=REQUEST_TIMEOUT)
        except ApiException as exc:
            if exc.status in (404, 409) or namespace_gone(exc):
                return  # gone, already posted, or its namespace is being deleted: nobody will read it
            log.warning(
                "could not post event %s on %s/%s: %s", reason, meta["namespace"], meta["name"], _message(exc)
            )
