"""The operator image, run as a container against the session's control plane, reconciles a GpuTaskQueue: its
worker Deployment appears and the queue gets a status. The control plane and the tests' redis-server listen on
loopback, so the container shares the host's network; the kubeconfig is a mounted file."""

from __future__ import annotations

import shutil
import urllib.request

import pytest

from docker_engine import NON_ROOT, Container, docker, require_image
from fleet import queue_manifest
from support import free_port, wait_for

pytestmark = pytest.mark.images

KUBECONFIG = "/etc/gpufleet/kubeconfig"


@pytest.fixture
def operator_container(cluster, namespace, crd, tmp_path):
    image = require_image("operator")
    kubeconfig = tmp_path / "kubeconfig"
    shutil.copy(cluster.kubeconfig, kubeconfig)
    kubeconfig.chmod(0o644)  # the image's user reads it; the test cluster is thrown away after the session
    port = free_port()
    container = Container(
        image,
        # The chart's way: the image's entrypoint (tini) and program, the chart's flags as args.
        "python", "-m", "gpufleet", "--namespace", namespace, "--liveness", f"http://127.0.0.1:{port}/healthz",
        options=(
            "--network", "host", "--read-only", "--tmpfs", "/tmp",
            "--volume", f"{kubeconfig}:{KUBECONFIG}:ro", "--env", f"KUBECONFIG={KUBECONFIG}",
            "--env", "GPUFLEET_METRICS_PORT=0",
        ),
    )  # fmt: skip
    with container:
        try:
            yield container, port
        finally:
            print(f"--- log of the operator container ({namespace}) ---\n{container.logs()[-6000:]}")


def test_the_operator_image_reconciles_a_queue(operator_container, kubectl, redis_url):
    container, port = operator_container
    kubectl.apply(queue_manifest("imaged", redis_url, ["gpu"], scaling={"minReplicas": 0}))
    deployment = wait_for("the worker Deployment", lambda: kubectl.get("deployment", "imaged-workers"), 120)
    assert deployment["metadata"]["ownerReferences"][0]["name"] == "imaged"

    def reachable():
        status = (kubectl.get("gtq", "imaged") or {}).get("status") or {}
        conditions = {c["type"]: c["status"] for c in status.get("conditions", [])}
        return status if status.get("deployment") and conditions.get("BrokerReachable") == "True" else None

    # BrokerReachable: the operator in its container reached the tests' Redis on loopback, too.
    status = wait_for("the queue's status", reachable, 120)
    assert status["deployment"] == "imaged-workers"

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as response:
        assert response.status == 200
    assert container.exec("cat", "/proc/1/comm").stdout.strip() == "tini"
    assert container.exec("id", "-u").stdout.strip() == NON_ROOT

    # SIGTERM reaches kopf through tini: it stops on its own (cleanup run), not killed when the grace period ends.
    docker("stop", "--time", "30", container.name, timeout=60)
    assert container.state()["ExitCode"] == 0, container.logs()
    assert "Signal SIGTERM is received" in container.logs()
