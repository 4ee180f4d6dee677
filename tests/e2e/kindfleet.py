"""gpufleet as a user installs it on a real cluster, for the kind e2e tests (tests/e2e/test_kind_*.py).

The chart with the operator's real image, in a namespace that enforces the `restricted` Pod Security Standard,
and its bundled Redis run from the tools image (Debian's redis-server). Worker pods reach that Redis by its
Service's DNS name; this machine reaches it through a NodePort on a node's address (kind's nodes are containers
on this machine). Everything here talks only to the kind cluster and the containers it runs.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import redis
import yaml
from kubernetes import client

from support import Kubectl, wait_for

CHART = Path(__file__).resolve().parents[2] / "charts" / "gpufleet"
RESTRICTED = {
    f"pod-security.kubernetes.io/{mode}": "restricted" for mode in ("enforce", "audit", "warn")
}  # fmt: skip
# What must never be in the operator's log: a traceback, or a refusal by the API server.
UNHEALTHY = re.compile(r"Traceback|\(403\)|Forbidden|forbidden")


def restricted_namespace(cluster, name: str) -> str:
    """A new namespace that enforces the restricted Pod Security Standard."""
    cluster.kubectl("create", "namespace", name)
    cluster.kubectl("label", "namespace", name, "--overwrite", *(f"{k}={v}" for k, v in RESTRICTED.items()))
    assert_enforces_restricted(cluster, name)
    return name


def assert_enforces_restricted(cluster, namespace: str) -> None:
    """The API server refuses a privileged pod there (a server-side dry run: nothing runs)."""
    privileged = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "privileged", "namespace": namespace},
        "spec": {"containers": [{"name": "c", "image": "x", "securityContext": {"privileged": True}}]},
    }
    refused = cluster.kubectl(
        "create", "--dry-run=server", "-f", "-", stdin=json.dumps(privileged), check=False
    )
    assert refused.returncode != 0 and 'violates PodSecurity "restricted' in refused.stderr, refused.stderr


@contextlib.contextmanager
def installed(cluster, prefix: str) -> Iterator[Install]:
    """The chart (the CRD left to the session) in a new restricted namespace, with its Redis; uninstalled, and its
    namespace deleted, afterwards."""
    suffix = uuid.uuid4().hex[:5]
    namespace = restricted_namespace(cluster, f"{prefix}-{suffix}")
    # A release name of its own: the kopf ClusterRole it names is cluster-wide.
    install = Install(cluster, namespace, release=f"gf-{suffix}")
    try:
        install.install("--set", "crds.install=false")
        yield install
    finally:
        install.uninstall()
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


class Install:
    """One helm release of charts/gpufleet in `namespace`, serving that namespace only, with its Redis."""

    def __init__(self, cluster, namespace: str, release: str):
        self.cluster, self.namespace, self.release = cluster, namespace, release
        self.fullname = f"{release}-gpufleet"
        self.redis_name = f"{self.fullname}-redis"
        self.kubectl = Kubectl("kubectl", dict(cluster.env), namespace)
        operator, _, tag = cluster.images["operator"].rpartition(":")
        tools, _, tools_tag = cluster.images["tools"].rpartition(":")
        self.values = {
            "image": {"repository": operator, "tag": tag, "pullPolicy": "Never"},
            "rbac": {"namespaces": [namespace]},
            "redis": {
                "enabled": True,
                "image": {"repository": tools, "tag": tools_tag, "pullPolicy": "Never"},
            },
            "tests": {"image": cluster.images["tools"]},
        }

    def install(self, *args: str) -> str:
        """helm install, waiting for every pod to be Ready; returns helm's output (the NOTES)."""
        return self.cluster.helm(
            "install", self.release, str(CHART), "-n", self.namespace, "--wait", "--timeout", "180s",
            "-f", "-", *args, stdin=yaml.safe_dump(self.values),
        ).stdout  # fmt: skip

    def uninstall(self) -> None:
        self.cluster.helm("uninstall", self.release, "-n", self.namespace, "--wait", check=False)

    def operator_pod(self) -> dict:
        selector = f"app.kubernetes.io/instance={self.release},app.kubernetes.io/component=operator"
        pods = [p for p in self.kubectl.pods(selector) if "deletionTimestamp" not in p["metadata"]]
        assert len(pods) == 1, [p["metadata"]["name"] for p in pods]
        return pods[0]

    def operator_log(self) -> str:
        return self.kubectl.run("logs", self.operator_pod()["metadata"]["name"], "--all-containers").stdout

    def assert_healthy(self) -> None:
        """No traceback, no refusal in the operator's log, and its container never restarted."""
        bad = [line for line in self.operator_log().splitlines() if UNHEALTHY.search(line)]
        assert bad == [], "the operator's log:\n" + "\n".join(bad[:30])
        restarts = [s["restartCount"] for s in self.operator_pod()["status"]["containerStatuses"]]
        assert restarts == [0], f"the operator restarted: {restarts}"

    def wait_workers_gone(self, timeout: float) -> None:
        """Until no worker pod is left in the namespace; else fail naming each one and its state."""
        deadline = time.monotonic() + timeout
        while left := self.kubectl.pods("app.kubernetes.io/name=gpufleet-worker"):
            if time.monotonic() > deadline:
                states = [(p["metadata"]["name"], p["status"].get("phase"), p["metadata"].get("deletionTimestamp"),
                           p["status"].get("containerStatuses")) for p in left]  # fmt: skip
                raise AssertionError(f"worker pods still there after {timeout:.0f}s: {states}")
            time.sleep(0.5)

    def broker(self) -> dict[str, Any]:
        """spec.broker of a GpuTaskQueue using the chart's Redis, as a worker pod reaches it: Service DNS."""
        return {
            "url": f"redis://{self.redis_name}.{self.namespace}.svc:6379/0",
            "passwordSecretRef": {"name": self.redis_name, "key": "password"},
        }

    def host_redis_url(self) -> str:
        """A URL this machine reaches the chart's Redis at: a NodePort Service on the first node's address."""
        name = f"{self.redis_name}-e2e"
        if self.kubectl.get("service", name) is None:
            service = {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": name},
                "spec": {
                    "type": "NodePort",
                    "selector": {
                        "app.kubernetes.io/name": "gpufleet",
                        "app.kubernetes.io/instance": self.release,
                        "app.kubernetes.io/component": "redis",
                    },
                    "ports": [{"port": 6379, "targetPort": "redis"}],
                },
            }
            self.kubectl.apply(json.dumps(service))
        port = self.kubectl.get("service", name)["spec"]["ports"][0]["nodePort"]
        secret = self.kubectl.get("secret", self.redis_name)
        password = base64.b64decode(secret["data"]["password"]).decode()
        url = f"redis://:{password}@{self.cluster.node_ips[0]}:{port}/0"
        wait_for("the chart's Redis through its NodePort", lambda: _pings(url), timeout=60)
        return url


def _pings(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_timeout=2).ping())
    except redis.RedisError:
        return False


def worker(cluster, **overrides: Any) -> dict[str, Any]:
    """spec.worker of a kind fleet: the e2e worker image (gpufleet's worker and tests/e2e/e2e_app.py), one fake
    GPU per pod and no CUDA to look for."""
    return {
        "image": cluster.images["worker"],
        "imagePullPolicy": "Never",
        "env": [{"name": "OMP_NUM_THREADS", "value": "1"}],
        **overrides,
    }


def pods(cluster, namespace: str, fleet: str) -> list[Any]:
    """The fleet's pods (kubernetes client objects), read straight from the API: cheap enough to poll often."""
    return (
        client.CoreV1Api(cluster.api)
        .list_namespaced_pod(namespace, label_selector=f"gpufleet.dev/fleet={fleet}")
        .items
    )


def running(items: list[Any]) -> list[Any]:
    return [p for p in items if p.status.phase == "Running" and p.metadata.deletion_timestamp is None]


def poll(what: str, check: Callable[[], Any], timeout: float = 120, every: float = 0.05) -> tuple[Any, float]:
    """wait_for, also returning time.time() at the first truthy check (for reaction times)."""
    value = wait_for(what, check, timeout=timeout, every=every)
    return value, time.time()
