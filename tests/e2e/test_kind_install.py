"""Both installs on kind, with the operator's real image running in a pod, in namespaces that enforce the
`restricted` Pod Security Standard: `helm install` (then `helm test`, and the first queue its notes show,
reaching the chart's Redis) and `kubectl apply -f manifests/` (the operator image under the name manifests/
gives it, loaded into the nodes since no registry is reachable)."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest
import yaml

from kindfleet import UNHEALTHY, Install, assert_enforces_restricted, restricted_namespace
from support import Kubectl, wait_for

pytestmark = pytest.mark.kind

MANIFESTS = Path(__file__).resolve().parents[2] / "manifests"


@pytest.fixture(autouse=True)
def _on_kind(cluster):
    cluster.require("has_project_images", "runs the operator and tools images")


def notes_queue(helm_output: str) -> dict:
    """The first GpuTaskQueue that NOTES.txt tells the user to apply."""
    start = helm_output.index("<<'YAML'\n") + len("<<'YAML'\n")
    body = helm_output[start : helm_output.index("  YAML\n", start)]
    return yaml.safe_load("\n".join(line[2:] for line in body.splitlines()))


def test_helm_install_runs_the_operator_image_restricted_and_helm_test_passes(cluster, crd):
    suffix = uuid.uuid4().hex[:5]
    namespace = restricted_namespace(cluster, f"kind-helm-{suffix}")
    install = Install(cluster, namespace, release=f"gf-{suffix}")
    try:
        # The CRD is there already (kubectl apply, as README's "If the CRD already exists" says).
        notes = install.install("--set", "crds.install=false")
        pod = install.operator_pod()
        assert pod["spec"]["containers"][0]["image"] == cluster.images["operator"]
        assert all(s["ready"] for s in pod["status"]["containerStatuses"])

        # No --logs: the hook's pod is deleted once it succeeds, and helm then fails to read its log.
        done = cluster.helm("test", install.release, "-n", namespace, "--timeout", "180s")
        assert "Phase:          Succeeded" in done.stdout, done.stdout

        # The notes' first queue, as written: the operator reaches the chart's Redis by its Service's name, with
        # the password from its Secret.
        first = notes_queue(notes)
        install.kubectl.apply(json.dumps(first))
        wait_for("BrokerReachable=True on the notes' queue",
                 lambda: install.kubectl.condition("first", "BrokerReachable").get("status") == "True",
                 timeout=90)  # fmt: skip
        assert install.kubectl.replicas("first-workers") == 0
        install.assert_healthy()
        install.kubectl.run("delete", "gtq", "first", "--wait=true")
    finally:
        install.uninstall()

    def left() -> list[str]:
        found = cluster.kubectl("get", "all,secrets,configmaps,roles,rolebindings", "-n", namespace, "-l",
                                f"app.kubernetes.io/instance={install.release}", "-o", "json").stdout  # fmt: skip
        return [f"{o['kind']}/{o['metadata']['name']}" for o in json.loads(found)["items"]]

    wait_for("nothing of the release left", lambda: left() == [], timeout=120)
    cluster.kubectl("delete", "namespace", namespace, "--wait=false")


def test_helm_high_availability_hands_over_when_the_leader_pod_is_deleted(cluster, crd):
    """highAvailability on real pods: two operator pods, one holds the Lease (as the NOTES' command shows); the
    leader's pod deleted (the kubelet's SIGTERM: it releases the Lease), the standby leads and serves a queue."""
    suffix = uuid.uuid4().hex[:5]
    namespace = restricted_namespace(cluster, f"kind-ha-{suffix}")
    install = Install(cluster, namespace, release=f"gf-{suffix}")
    try:
        notes = install.install("--set", "crds.install=false", "--set", "highAvailability.enabled=true")
        shown = shlex.split(next(line.strip() for line in notes.splitlines() if "get lease" in line))
        assert shown[0] == "kubectl"

        def holder() -> str:
            return cluster.kubectl(*shown[1:], check=False).stdout.strip()

        def leads(pod: str) -> float | None:
            """The pod's gpufleet_leader gauge, through the API server's proxy; None until it serves metrics."""
            got = cluster.kubectl("get", "--raw", f"/api/v1/namespaces/{namespace}/pods/{pod}:8080/proxy/metrics",
                                  check=False).stdout  # fmt: skip
            found = re.search(r"^gpufleet_leader (\S+)$", got, re.MULTILINE)
            return float(found.group(1)) if found else None

        def operators(running: bool = False) -> set[str]:
            pods = install.kubectl.pods(
                f"app.kubernetes.io/instance={install.release},app.kubernetes.io/component=operator"
            )
            live = [p for p in pods if "deletionTimestamp" not in p["metadata"]]
            if running:
                live = [p for p in live if all(s.get("state", {}).get("running")
                                               for s in p["status"].get("containerStatuses") or [{}])]  # fmt: skip
            return {p["metadata"]["name"] for p in live}

        names = operators()
        assert len(names) == 2, names
        leader = wait_for("a leader", lambda: holder() in names and holder(), timeout=60)
        (standby,) = names - {leader}
        # A pod whose container runs may still be importing: a standby stands by once its metrics are served
        # (they start after its leader election), with gpufleet_leader 0.
        wait_for("the standby to stand by", lambda: leads(standby) == 0, timeout=90)
        assert leads(leader) == 1
        # The leader's log as it stops (kubectl logs -f outlives the pod's deletion by the time it takes to end).
        with tempfile.TemporaryFile("w+") as stopping:
            follow = subprocess.Popen(["kubectl", "-n", namespace, "logs", "-f", "--tail=20", leader],
                                      env=cluster.env, stdout=stopping, stderr=subprocess.STDOUT)  # fmt: skip
            deleted = time.monotonic()
            install.kubectl.run("delete", "pod", leader, "--wait=false")
            try:
                wait_for("the standby to lead", lambda: holder() == standby, timeout=30, every=0.1)
            except AssertionError as failed:
                follow.terminate()
                stopping.seek(0)
                lease = install.kubectl.run("get", "lease", "-o", "yaml", check=False).stdout
                pods = install.kubectl.run("get", "pods", "-o", "wide", check=False).stdout
                logs = install.kubectl.run("logs", standby, "--tail=40", check=False).stdout
                raise AssertionError(f"{failed}\nthe Lease:\n{lease}\npods:\n{pods}\nthe old leader's log:\n"
                                     f"{stopping.read()[-4000:]}\nthe standby's log:\n{logs}") from None  # fmt: skip
            finally:
                follow.terminate()
                follow.wait(timeout=10)
        print(
            f"on kind: leader pod deleted -> the standby holds the Lease in {time.monotonic() - deleted:.2f}s"
        )

        first = notes_queue(notes)
        install.kubectl.apply(json.dumps(first))
        wait_for("BrokerReachable=True, from the new leader",
                 lambda: install.kubectl.condition("first", "BrokerReachable").get("status") == "True",
                 timeout=90)  # fmt: skip
        # The deleted leader's replacement too: its log can be read once its container runs.
        running = wait_for("two operator pods running", lambda: len(names := operators(running=True)) == 2 and names,
                           timeout=90)  # fmt: skip
        for name in running:
            log = install.kubectl.run("logs", name, "--all-containers").stdout
            bad = [line for line in log.splitlines() if UNHEALTHY.search(line)]
            assert bad == [], f"{name}'s log:\n" + "\n".join(bad[:30])
        install.kubectl.run("delete", "gtq", "first", "--wait=true")
    finally:
        install.uninstall()
    cluster.kubectl("delete", "namespace", namespace, "--wait=false")


@pytest.fixture
def manifests_installed(cluster):
    yield
    # Everything but the CRD, which the rest of the session uses.
    cluster.kubectl("delete", "namespace", "gpufleet-system", "--wait", "--timeout=120s", check=False)
    cluster.kubectl("delete", "clusterroles,clusterrolebindings", "-l", "app.kubernetes.io/instance=gpufleet",
                    check=False)  # fmt: skip


def test_kubectl_apply_manifests_runs_the_operator_image_restricted(
    cluster, crd, manifests_installed, namespace
):
    applied = cluster.kubectl("apply", "-f", str(MANIFESTS)).stdout
    assert "namespace/gpufleet-system" in applied and "deployment.apps/gpufleet" in applied
    assert_enforces_restricted(cluster, "gpufleet-system")
    cluster.kubectl("rollout", "status", "deployment/gpufleet", "-n", "gpufleet-system", "--timeout=180s")
    install = Install(cluster, "gpufleet-system", release="gpufleet")
    # The operator's metrics, through the API server's proxy to its Service: pod networking across nodes.
    metrics = wait_for("the operator's metrics", lambda: cluster.kubectl(
        "get", "--raw", "/api/v1/namespaces/gpufleet-system/services/gpufleet-metrics:8080/proxy/metrics",
        check=False).stdout)  # fmt: skip
    assert "gpufleet_probe_seconds_count" in metrics

    # A queue in another namespace (this operator serves them all) whose broker answers nothing.
    queue = {
        "apiVersion": "gpufleet.dev/v1alpha1",
        "kind": "GpuTaskQueue",
        "metadata": {"name": "from-manifests", "namespace": namespace},
        "spec": {
            "broker": {"url": "redis://127.0.0.1:1/0"},
            "queues": ["from-manifests"],
            "worker": {"image": cluster.images["worker"], "gpus": 1},
        },
    }
    cluster.kubectl("apply", "-f", "-", stdin=json.dumps(queue))
    kubectl = Kubectl("kubectl", dict(cluster.env), namespace)
    wait_for("the worker Deployment", lambda: kubectl.get("deployment", "from-manifests-workers"), timeout=60)
    wait_for("BrokerReachable=False/ConnectionFailed",
             lambda: kubectl.condition("from-manifests", "BrokerReachable").get("reason") == "ConnectionFailed",
             timeout=60)  # fmt: skip
    install.assert_healthy()
    kubectl.run("delete", "gtq", "from-manifests", "--wait=true")
