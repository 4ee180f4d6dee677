"""GPUs by Dynamic Resource Allocation on the real control plane: kube-scheduler allocates devices from
ResourceSlices (here published through the API for the kwok GPU nodes, as a DRA driver's kubelet plugin would),
the ResourceClaim controller makes one claim per worker pod from the queue's ResourceClaimTemplate, and the
operator's capacity and budget logic read the outcome like they do for extended resources."""

from __future__ import annotations

import time
import uuid

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from fleet import Operator, Tasks, queue_manifest, wait_for

pytestmark = pytest.mark.cluster

H100 = "NVIDIA H100 80GB HBM3"


class DevicePool:
    """A DeviceClass of this test's own and the ResourceSlices of its nodes: a DRA driver's view of them."""

    def __init__(self, cluster, gpu_nodes) -> None:
        self.resource = client.ResourceV1Api(cluster.api)
        self.gpu_nodes = gpu_nodes
        self.driver = f"gpu-{uuid.uuid4().hex[:6]}.e2e.gpufleet.dev"
        self.device_class = self.driver
        self.resource.create_device_class(
            {
                "metadata": {"name": self.device_class},
                "spec": {"selectors": [{"cel": {"expression": f"device.driver == '{self.driver}'"}}]},
            }
        )

    def add_nodes(self, nodes: int, devices: int, product: str = H100, memory: str = "80Gi") -> None:
        core = client.CoreV1Api(self.resource.api_client)
        # No extended resource on them: only the driver's devices can be given.
        for name in self.gpu_nodes.add(nodes, gpus=0):
            node = core.read_node(name)
            self.resource.create_resource_slice(
                {
                    "metadata": {
                        "name": f"{name}-{self.driver}",
                        # As a kubelet plugin's slices are: gone with their node.
                        "ownerReferences": [
                            {"apiVersion": "v1", "kind": "Node", "name": name, "uid": node.metadata.uid}
                        ],  # fmt: skip
                    },
                    "spec": {
                        "driver": self.driver,
                        "nodeName": name,
                        "pool": {"name": name, "generation": 1, "resourceSliceCount": 1},
                        "devices": [
                            {
                                "name": f"gpu-{i}",
                                "attributes": {
                                    "productName": {"string": product},
                                    "index": {"int": i},
                                },
                                "capacity": {"memory": {"value": memory}},
                            }
                            for i in range(devices)
                        ],
                    },
                }
            )

    def product_is(self, product: str) -> str:
        return f"device.attributes['{self.driver}'].productName == '{product}'"

    def close(self) -> None:
        try:
            self.resource.delete_device_class(self.device_class)
        except ApiException as exc:
            if exc.status != 404:
                raise


@pytest.fixture
def devices(cluster, gpu_nodes):
    pool = DevicePool(cluster, gpu_nodes)
    yield pool
    pool.close()


def claims(cluster, namespace: str) -> list[dict]:
    found = client.ResourceV1Api(cluster.api).list_namespaced_resource_claim(namespace)
    return [cluster.api.sanitize_for_serialization(c) for c in found.items]


def allocated(cluster, namespace: str) -> dict[str, list[str]]:
    """claim -> the devices allocated to it (pool/device)."""
    out = {}
    for c in claims(cluster, namespace):
        results = ((c.get("status") or {}).get("allocation") or {}).get("devices", {}).get("results") or []
        if results:
            out[c["metadata"]["name"]] = [f"{r['pool']}/{r['device']}" for r in results]
    return out


def live_pods(kubectl, fleet: str) -> list[dict]:
    return [
        p for p in kubectl.pods(f"gpufleet.dev/fleet={fleet}") if not p["metadata"].get("deletionTimestamp")
    ]


def test_a_claim_based_fleet_scales_from_zero_to_the_devices_there_are_and_back_to_zero(
    cluster, kubectl, operator, redis_url, gpu_nodes, devices, namespace
):
    devices.add_nodes(2, devices=2)  # 4 GPUs in all
    tasks = Tasks(redis_url, "gpu")
    kubectl.apply(
        queue_manifest(
            "dra",
            redis_url,
            ["gpu"],
            # One pod per task (the wait-target rule off): it must want more pods than 4 devices hold.
            scaling={"maxReplicas": 12, "maxStepUp": 2, "targetWaitSeconds": 0},
            worker={"nodeSelector": gpu_nodes.selector, "claim": {"deviceClassName": devices.device_class}},
        )
    )
    wait_for("the worker Deployment", lambda: kubectl.get("deployment", "dra-workers"))
    (template,) = kubectl.get("resourceclaimtemplates")["items"]
    assert template["metadata"]["ownerReferences"][0]["kind"] == "GpuTaskQueue"
    request = template["spec"]["spec"]["devices"]["requests"][0]["exactly"]
    assert request["deviceClassName"] == devices.device_class and request["count"] == 1
    assert kubectl.replicas("dra-workers") == 0 and claims(cluster, namespace) == []

    tasks.send(16, seconds=8)
    # The scheduler's verdict on a claim comes a round trip later than on an extended resource (the ResourceClaim
    # controller makes each pod's claim first): a step or two may be taken before it, then the fleet holds.
    wait_for("ScalingLimited=GpuCapacity",
             lambda: kubectl.condition("dra", "ScalingLimited").get("reason") == "GpuCapacity", timeout=120)  # fmt: skip
    assert kubectl.status("dra")["pendingPods"] >= 1
    held = kubectl.replicas("dra-workers")
    assert held < 12, f"asked for {held} pods (maxReplicas) with 4 devices in the pool"
    given = wait_for(
        "4 claims allocated", lambda: len(a := allocated(cluster, namespace)) == 4 and a, timeout=60
    )
    devices_given = [d for ds in given.values() for d in ds]
    assert len(set(devices_given)) == 4, f"a device was given twice: {given}"
    pods = live_pods(kubectl, "dra")
    assert sum(1 for p in pods if p["spec"].get("nodeName")) == 4, "more pods placed than there are devices"
    for pod in pods:
        statuses = (pod.get("status") or {}).get("resourceClaimStatuses") or []
        assert [s["name"] for s in statuses] == ["gpus"], pod["metadata"]["name"]  # one claim per pod
    for _ in range(6):  # held while nothing more can be allocated
        assert kubectl.replicas("dra-workers") == held
        time.sleep(0.5)

    wait_for("every task done", tasks.all_done, timeout=240)
    assert tasks.duplicates() == {}
    wait_for("a scale-in to 0", lambda: kubectl.replicas("dra-workers") == 0, timeout=90)
    wait_for("the pods gone", lambda: live_pods(kubectl, "dra") == [], timeout=120)
    wait_for("every claim released", lambda: claims(cluster, namespace) == [], timeout=60)
    tasks.close()


def test_a_selector_that_matches_no_device_shows_the_pods_waiting_on_the_queue(
    kubectl, operator, redis_url, gpu_nodes, devices
):
    devices.add_nodes(1, devices=2)
    tasks = Tasks(redis_url, "gpu")
    kubectl.apply(
        queue_manifest(
            "b200",
            redis_url,
            ["gpu"],
            worker={
                "nodeSelector": gpu_nodes.selector,
                "claim": {
                    "deviceClassName": devices.device_class,
                    "selectors": [devices.product_is("NVIDIA B200")],
                },
            },
        )
    )
    wait_for("the worker Deployment", lambda: kubectl.get("deployment", "b200-workers"))
    tasks.send(1, seconds=1)
    failing = wait_for(
        "WorkersFailing=Unschedulable",
        lambda: (c := kubectl.condition("b200", "WorkersFailing")).get("reason") == "Unschedulable" and c,
        timeout=90,
    )
    assert failing["status"] == "True" and "claim" in failing["message"], failing["message"]
    assert kubectl.status("b200")["pendingPods"] >= 1
    # The scheduler's own word reaches the queue's Events too.
    wait_for(
        "a Warning Event", lambda: any(e["type"] == "Warning" for e in kubectl.events("b200")), timeout=30
    )
    tasks.close()


def test_the_gpu_budget_counts_claimed_devices(
    cluster, cluster_env, namespace, crd, kubectl, redis_url, gpu_nodes, devices, tmp_path
):
    devices.add_nodes(2, devices=4)  # 8 GPUs, more than the budget
    op = Operator(cluster_env, namespace, tmp_path, "--gpu-budget", "4").start()
    tasks = Tasks(redis_url, "gpu")
    try:
        kubectl.apply(
            queue_manifest(
                "pairs",
                redis_url,
                ["gpu"],
                scaling={"maxReplicas": 8, "targetWaitSeconds": 0},
                worker={
                    "nodeSelector": gpu_nodes.selector,
                    "claim": {"deviceClassName": devices.device_class, "count": 2},
                },  # fmt: skip
            )
        )
        wait_for("the worker Deployment", lambda: kubectl.get("deployment", "pairs-workers"))
        tasks.send(8, seconds=20)
        wait_for(
            "2 pods of 2 devices: the budget of 4", lambda: kubectl.replicas("pairs-workers") == 2, timeout=60
        )
        wait_for("ScalingLimited=GpuBudget",
                 lambda: kubectl.condition("pairs", "ScalingLimited").get("reason") == "GpuBudget", timeout=30)  # fmt: skip
        share = kubectl.status("pairs")["gpuShare"]
        assert share["gpus"] == 4 and share["budget"] == 4, share
        given = wait_for(
            "2 claims allocated", lambda: len(a := allocated(cluster, namespace)) == 2 and a, timeout=60
        )
        assert all(len(ds) == 2 for ds in given.values()), given
        wait_for("the status counts 4 GPUs", lambda: kubectl.status("pairs").get("gpus") == 4, timeout=60)
    finally:
        tasks.close()
        op.stop()
        print(f"--- operator log ---\n{op.log()[-4000:]}")
    op.assert_no_traceback()


def test_a_new_claim_spec_gets_a_new_template_and_the_pods_claim_from_it(kubectl, operator, devices):
    def manifest(count: int) -> str:
        claim = {"deviceClassName": devices.device_class, "count": count}
        return queue_manifest("swap", "redis://127.0.0.1:1/0", ["gpu"], worker={"claim": claim})

    def templates() -> dict[str, int]:
        items = kubectl.get("resourceclaimtemplates")["items"]
        return {
            t["metadata"]["name"]: t["spec"]["spec"]["devices"]["requests"][0]["exactly"]["count"]
            for t in items
        }

    def claimed_from() -> str:
        (ref,) = kubectl.get("deployment", "swap-workers")["spec"]["template"]["spec"]["resourceClaims"]
        return ref["resourceClaimTemplateName"]

    kubectl.apply(manifest(1))
    (first,) = wait_for("a template", templates)
    wait_for(
        "the Deployment claiming from it",
        lambda: kubectl.get("deployment", "swap-workers") and claimed_from() == first,
    )
    kubectl.apply(manifest(2))
    second = wait_for("a second template", lambda: (new := set(templates()) - {first}) and new.pop())
    assert templates() == {first: 1, second: 2}  # the first stays for ReplicaSets of the earlier spec
    wait_for("the Deployment claiming from the new one", lambda: claimed_from() == second)
    for name in (first, second):
        owner = kubectl.get("resourceclaimtemplate", name)["metadata"]["ownerReferences"][0]
        assert owner["kind"] == "GpuTaskQueue" and owner["name"] == "swap"


def test_a_selector_the_api_server_cannot_compile_shows_on_the_queue(kubectl, operator, devices):
    kubectl.apply(
        queue_manifest(
            "typo",
            "redis://127.0.0.1:1/0",
            ["gpu"],
            worker={"claim": {"deviceClassName": devices.device_class, "selectors": ["device.attributes["]}},
        )  # fmt: skip
    )
    ready = wait_for(
        "Ready=False DeploymentRejected",
        lambda: (c := kubectl.condition("typo", "Ready")).get("reason") == "DeploymentRejected" and c,
        timeout=60,
    )
    assert "selectors" in ready["message"] or "cel" in ready["message"].lower(), ready["message"]


@pytest.mark.apiserver
@pytest.mark.parametrize(
    "worker, refused",
    [
        ({"gpus": 2, "claim": {}}, "set worker.gpus or worker.claim, not both"),
        (
            {"claim": {"templateName": "mine", "selectors": ["true"]}},
            "names a ResourceClaimTemplate of your own",
        ),
    ],
)
def test_the_crd_takes_one_form_or_the_other(kubectl, worker, refused):
    out = kubectl.apply(queue_manifest("both", "redis://127.0.0.1:1/0", ["gpu"], worker=worker), check=False)
    assert out.returncode != 0 and refused in out.stderr, out.stderr
