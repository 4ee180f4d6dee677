"""Claim-based fleets on kind with a real DRA driver: the DRA example driver (sigs.k8s.io/dra-example-driver),
built from its Go module, its image made here and its chart rendered offline (hack/dra-example-driver.sh). Its
kubelet plugin publishes mock GPUs as ResourceSlices on every node and prepares the claims the kubelet hands it;
kube-scheduler allocates them; the worker pods run the e2e worker image. The operator is the chart's, in a
namespace that enforces the `restricted` Pod Security Standard."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import pytest
import redis
import yaml
from kubernetes import client

import providers
from fleet import Tasks, queue_manifest, wait_for
from kindfleet import installed, pods, running, worker

pytestmark = pytest.mark.kind
REPO = Path(__file__).resolve().parents[2]
DRIVER = "gpu.example.com"  # the driver's name, and the DeviceClass its chart makes
DEVICES_PER_NODE = 2


def on_kind(cluster) -> None:
    if cluster.provider != "kind":
        pytest.skip("needs a kubelet for the DRA driver's plugin: runs on kind")


def slices(cluster) -> list[dict]:
    found = client.ResourceV1Api(cluster.api).list_resource_slice().items
    return [cluster.api.sanitize_for_serialization(s) for s in found if s.spec.driver == DRIVER]


@pytest.fixture(scope="module")
def driver(cluster):
    """The example driver installed in a namespace of its own; yields the number of mock GPUs it published."""
    on_kind(cluster)
    namespace = f"dra-example-driver-{uuid.uuid4().hex[:5]}"
    built = subprocess.run(
        [str(REPO / "hack" / "dra-example-driver.sh"), namespace, str(DEVICES_PER_NODE)],
        env=cluster.env, capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr[-3000:]
    image, manifests = built.stdout.split()[-2:]
    subprocess.run([str(providers._kind_program()), "load", "docker-image", "--name", providers.KIND_NAME, image],
                   check=True, capture_output=True, timeout=600)  # fmt: skip
    cluster.kubectl("create", "namespace", namespace)
    cluster.kubectl("apply", "-f", manifests)
    nodes = len(client.CoreV1Api(cluster.api).list_node().items)
    devices = nodes * DEVICES_PER_NODE
    wait_for(
        f"{devices} mock GPUs published",
        lambda: sum(len(s["spec"].get("devices") or []) for s in slices(cluster)) == devices,
        timeout=180,
    )
    yield devices
    cluster.kubectl("delete", "-f", manifests, "--wait=false", check=False)
    cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


@pytest.fixture(scope="module")
def gpufleet(cluster, crd, driver):
    with installed(cluster, "kind-dra") as install:
        yield install


@pytest.fixture
def tasks(gpufleet):
    url = gpufleet.host_redis_url()
    redis.Redis.from_url(url).flushdb()
    t = Tasks(url, f"gpu-{uuid.uuid4().hex[:6]}")
    yield t
    t.close()


def apply_queue(fleet, cluster, name: str, queue: str, claim: dict, scaling: dict) -> None:
    manifest = yaml.safe_load(
        queue_manifest(name, "redis://unused", [queue], scaling={"targetWaitSeconds": 0, **scaling})
    )
    manifest["spec"]["broker"] = fleet.broker()
    manifest["spec"]["worker"] |= worker(cluster, claim=claim)
    fleet.kubectl.apply(yaml.safe_dump(manifest))
    wait_for(f"the {name} Deployment", lambda: fleet.kubectl.get("deployment", f"{name}-workers"))


def allocated(cluster, namespace: str) -> dict[str, list[str]]:
    """claim -> the devices allocated to it."""
    out = {}
    for c in client.ResourceV1Api(cluster.api).list_namespaced_resource_claim(namespace).items:
        results = (c.status.allocation.devices.results or []) if c.status and c.status.allocation else []
        if results:
            out[c.metadata.name] = [f"{r.pool}/{r.device}" for r in results]
    return out


def test_a_claim_based_fleet_scales_up_from_zero_stops_at_the_devices_and_releases_them(
    cluster, driver, gpufleet, tasks
):
    kubectl, namespace = gpufleet.kubectl, gpufleet.namespace
    # It wants more pods than there are devices, two at a time: once the scheduler says a pod's claim cannot be
    # allocated, the fleet stops there.
    apply_queue(gpufleet, cluster, "claims", tasks.queue, {"deviceClassName": DRIVER},
                {"maxReplicas": 3 * driver, "maxStepUp": 2})  # fmt: skip
    assert kubectl.replicas("claims-workers") == 0
    tasks.send(4 * driver, seconds=3.0)
    wait_for("a scale-up", lambda: (kubectl.replicas("claims-workers") or 0) >= 2, timeout=30)
    most, capped, peak = 0, False, {}

    def drained():
        nonlocal most, capped, peak
        most = max(most, len(running(pods(cluster, namespace, "claims"))))
        capped = capped or kubectl.condition("claims", "ScalingLimited").get("reason") == "GpuCapacity"
        now = allocated(cluster, namespace)
        peak = now if len(now) > len(peak) else peak
        return tasks.all_done()

    wait_for("every task done", drained, timeout=420, every=0.5)
    assert tasks.duplicates() == {}, "a task ran twice"
    assert sorted(tasks.done()) == sorted(tasks.sent), "a task was lost"
    assert most <= driver, f"{most} worker pods ran at once on {driver} devices"
    assert len(peak) == driver, f"at most {len(peak)} claims were allocated of {driver} devices: {peak}"
    given = [d for ds in peak.values() for d in ds]
    assert len(set(given)) == len(given), f"a device was given twice: {peak}"
    assert capped, "the fleet never showed ScalingLimited=GpuCapacity"
    held_back = [
        e for e in (kubectl.get("events") or {}).get("items", [])
        if e["reason"] == "FailedScheduling" and "claim" in e["message"]
    ]  # fmt: skip
    assert held_back, "no worker pod was held back for want of a device"
    workers = {r["pod"] for r in tasks.runs()}
    assert len(workers) >= 2, f"the work was not spread over several workers: {workers}"

    wait_for("scale-down to zero", lambda: kubectl.replicas("claims-workers") == 0, timeout=120)
    wait_for("no worker pod", lambda: not pods(cluster, namespace, "claims"), timeout=180)
    wait_for("every claim released", lambda: not client.ResourceV1Api(cluster.api)
             .list_namespaced_resource_claim(namespace).items, timeout=120)  # fmt: skip
    gpufleet.assert_healthy()
    print(
        f"claims: {len(tasks.sent)} tasks on {len(workers)} workers, at most {most} at once on {driver} devices"
    )


def test_a_selector_that_matches_no_device_shows_on_the_queue(cluster, driver, gpufleet, tasks):
    kubectl = gpufleet.kubectl
    claim = {
        "deviceClassName": DRIVER,
        "selectors": [f"device.attributes['{DRIVER}'].model == 'NO-SUCH-GPU'"],
    }
    apply_queue(gpufleet, cluster, "nomatch", tasks.queue, claim, {"maxReplicas": 2})
    tasks.send(1, seconds=1.0)
    failing = wait_for(
        "WorkersFailing=Unschedulable",
        lambda: (c := kubectl.condition("nomatch", "WorkersFailing")).get("reason") == "Unschedulable" and c,
        timeout=120,
    )
    assert failing["status"] == "True" and "claim" in failing["message"], failing["message"]
    assert not running(pods(cluster, gpufleet.namespace, "nomatch"))
    kubectl.run("delete", "gtq", "nomatch")
    gpufleet.wait_workers_gone(timeout=120)
    gpufleet.assert_healthy()
