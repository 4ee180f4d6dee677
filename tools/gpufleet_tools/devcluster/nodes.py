"""Simulated GPU nodes: Node objects that kwok keeps Ready and that advertise GPU capacity.

Nothing runs on them by itself; the scheduler sees their `nvidia.com/gpu` (or MIG) capacity like on a real GPU
node, kwok marks the pods bound to them Running, and the process-pod runner runs the ones it selects.
"""

from __future__ import annotations

import time
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

KWOK_ANNOTATION = "kwok.x-k8s.io/node"
KWOK_SELECTOR = f"{KWOK_ANNOTATION}=fake"
GPU_RESOURCE = "nvidia.com/gpu"
DEFAULT_PRODUCT = "NVIDIA-H100-80GB-HBM3"


def gpu_node(
    name: str,
    *,
    gpus: int = 4,
    resource: str = GPU_RESOURCE,
    product: str = DEFAULT_PRODUCT,
    cpu: str = "32",
    memory: str = "256Gi",
    pods: int = 110,
    labels: dict[str, str] | None = None,
    taint: bool = False,
) -> dict[str, Any]:
    """The Node object of one fake GPU node.

    `resource` may be a MIG resource (`nvidia.com/mig-1g.10gb`): the node then offers `gpus` such slices, as the
    NVIDIA device plugin does with the mixed MIG strategy. `taint` adds the `<resource>:NoSchedule` taint GPU node
    pools usually carry, so only pods that tolerate it land there.
    """
    capacity = {"cpu": cpu, "memory": memory, "pods": str(pods), resource: str(gpus)}
    node_labels = {
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "type": "kwok",
        "nvidia.com/gpu.present": "true",
        "nvidia.com/gpu.product": product,
        "nvidia.com/gpu.count": str(gpus),
    }
    if resource.startswith("nvidia.com/mig-"):
        node_labels["nvidia.com/mig.strategy"] = "mixed"
    node_labels |= labels or {}
    spec: dict[str, Any] = {}
    if taint:
        spec["taints"] = [{"key": resource, "value": "present", "effect": "NoSchedule"}]
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": node_labels, "annotations": {KWOK_ANNOTATION: "fake"}},
        "spec": spec,
        # A kubelet registers its node with the capacity filled in; kwok keeps what it finds here.
        "status": {"capacity": capacity, "allocatable": dict(capacity)},
    }


def is_ready(node: dict[str, Any]) -> bool:
    conditions = (node.get("status") or {}).get("conditions") or []
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
    # The not-ready taint lingers a moment after Ready turns True, and the scheduler honours the taint.
    tainted = any(
        t.get("key") == "node.kubernetes.io/not-ready" for t in (node.get("spec") or {}).get("taints") or []
    )
    return ready and not tainted


def add_gpu_node(
    api: client.ApiClient, name: str, *, wait: bool = True, timeout: float = 120.0, **kwargs
) -> str:
    """Create one fake GPU node (see `gpu_node` for the options) and, with `wait`, return once it is Ready."""
    core = client.CoreV1Api(api)
    core.create_node(gpu_node(name, **kwargs))
    if wait:
        wait_ready(api, name, timeout)
    return name


def wait_ready(api: client.ApiClient, name: str, timeout: float = 120.0) -> None:
    core = client.CoreV1Api(api)
    deadline = time.monotonic() + timeout
    while True:
        node = api.sanitize_for_serialization(core.read_node(name))
        if is_ready(node):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"node {name} not Ready and schedulable after {timeout:.0f}s: {node.get('status')}"
            )
        time.sleep(0.2)


def remove_node(api: client.ApiClient, name: str, *, drain: bool = True, timeout: float = 120.0) -> None:
    """Delete a node. With `drain`, first cordon it and delete its pods (each with its own grace period) and wait
    for them to be gone, as a cluster autoscaler does before removing a node; without, the pods are left to the pod
    garbage collector, as when a node vanishes."""
    core = client.CoreV1Api(api)
    if drain:
        # Cordoned first, or the pods' controllers would put their replacements right back on it.
        core.patch_node(name, {"spec": {"unschedulable": True}})
        selector = f"spec.nodeName={name}"
        for pod in core.list_pod_for_all_namespaces(field_selector=selector).items:
            try:
                core.delete_namespaced_pod(pod.metadata.name, pod.metadata.namespace)
            except ApiException as exc:
                if exc.status != 404:
                    raise
        deadline = time.monotonic() + timeout
        while core.list_pod_for_all_namespaces(field_selector=selector).items:
            if time.monotonic() > deadline:
                raise TimeoutError(f"pods on node {name} still there after {timeout:.0f}s")
            time.sleep(0.2)
    try:
        core.delete_node(name)
    except ApiException as exc:
        if exc.status != 404:
            raise
