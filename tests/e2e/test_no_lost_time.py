"""Every path that removes a worker, on the real control plane: no task cut off, none lost, none left waiting for
the visibility timeout (7200 s here, the default).

The worker pods are local processes (the process-pod runner): they get SIGTERM and their grace period like a
kubelet gives them, and a test can SIGKILL one.
"""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
import redis
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from fleet import Tasks, queue_manifest
from support import wait_for

pytestmark = pytest.mark.cluster
BUSY = "gpufleet.dev/busy"


@pytest.fixture
def tasks(redis_url):
    t = Tasks(redis_url, "gpu")
    yield t
    t.close()


def entries(redis_url: str, fleet: str) -> dict[str, dict]:
    raw = redis.Redis.from_url(redis_url).hgetall(f"gpufleet:workers:{fleet}")
    return {k.decode(): json.loads(v) for k, v in raw.items()}


def two_workers(kubectl, redis_url, gpu_nodes, name: str, **worker) -> None:
    gpu_nodes.add(1, gpus=2)
    kubectl.apply(queue_manifest(name, redis_url, ["gpu"], scaling={"minReplicas": 2, "maxReplicas": 2},
                                 worker={"nodeSelector": gpu_nodes.selector, **worker}))  # fmt: skip
    wait_for(
        "two workers up", lambda: len(entries(redis_url, f"{kubectl.namespace}/{name}")) == 2, timeout=120
    )


def pod_of(tasks: Tasks, marker: str) -> str:
    return wait_for(
        f"{marker} started", lambda: next((r["pod"] for r in tasks.runs() if r["marker"] == marker), None)
    )


def test_a_killed_workers_task_runs_again_as_soon_as_its_pod_is_gone(
    cluster, kubectl, operator, namespace, redis_url, tasks, gpu_nodes
):
    two_workers(kubectl, redis_url, gpu_nodes, "killed")
    tasks.send(1, seconds=20, prefix="long")
    pod = pod_of(tasks, "long0")
    wait_for("the delivery named in its worker's entry",
             lambda: entries(redis_url, f"{namespace}/killed").get(pod, {}).get("tags"))  # fmt: skip
    pid = cluster.runner.pids()[f"{namespace}/{pod}"]
    os.killpg(pid, signal.SIGKILL)  # the container dies with its task: OOM, a node lost, a spot reclaim
    killed = time.time()
    kubectl.run("delete", "pod", pod, "--grace-period=0", "--force", "--wait=false")
    again = wait_for("the task started again on the other worker",
                     lambda: [r for r in tasks.runs() if r["marker"] == "long0" and r["pod"] != pod], timeout=60)  # fmt: skip
    print(f"the killed worker's task started again {again[0]['start'] - killed:.2f} s after the SIGKILL")
    wait_for("the TasksRestored Event", lambda: any(e["reason"] == "TasksRestored" and pod in e["message"]
                                                     for e in kubectl.events("killed")), timeout=10)  # fmt: skip
    wait_for("the task done", tasks.all_done, timeout=60)
    assert [r["marker"] for r in tasks.runs()] == ["long0", "long0"] and tasks.done() == ["long0"]


def test_eviction_waits_for_busy_workers_and_takes_idle_ones(cluster, kubectl, operator, namespace, redis_url,
                                                             tasks, gpu_nodes):  # fmt: skip
    two_workers(kubectl, redis_url, gpu_nodes, "drained")
    tasks.send(1, seconds=25, prefix="long")
    busy = pod_of(tasks, "long0")
    core = client.CoreV1Api(cluster.api)

    def meta(pod):
        return core.read_namespaced_pod(pod, namespace).metadata

    wait_for("the busy pod protected", lambda: (meta(busy).labels or {}).get(BUSY) == "true", timeout=30)
    annotations = meta(busy).annotations
    assert annotations["cluster-autoscaler.kubernetes.io/safe-to-evict"] == "false"
    assert annotations["karpenter.sh/do-not-disrupt"] == "true"
    (idle,) = [
        p["metadata"]["name"]
        for p in kubectl.pods("gpufleet.dev/fleet=drained")
        if p["metadata"]["name"] != busy
    ]
    assert BUSY not in (meta(idle).labels or {}) and "karpenter.sh/do-not-disrupt" not in (
        meta(idle).annotations or {}
    )

    def evict(pod):
        body = client.V1Eviction(metadata=client.V1ObjectMeta(name=pod, namespace=namespace))
        core.create_namespaced_pod_eviction(pod, namespace, body)

    # As `kubectl drain` does: the Eviction API, which honours PodDisruptionBudgets.
    with pytest.raises(ApiException) as refused:
        wait_for("the busy PodDisruptionBudget in force", lambda: kubectl.get("pdb", "drained-busy-workers"))
        time.sleep(2)  # the disruption controller computes the budget's status
        evict(busy)
    assert refused.value.status == 429, refused.value.body
    evict(idle)
    wait_for(
        "the idle pod gone",
        lambda: idle not in [p["metadata"]["name"] for p in kubectl.pods("gpufleet.dev/fleet=drained")],
    )
    wait_for("the task done", tasks.all_done, timeout=90)
    assert tasks.duplicates() == {} and tasks.done() == ["long0"]
    # Idle for a while, the worker is released: the drain can take it now.
    wait_for("the finished worker released", lambda: BUSY not in (meta(busy).labels or {}), timeout=60)
    evict(busy)


def test_a_rollout_under_load_cuts_no_task(kubectl, operator, redis_url, tasks, gpu_nodes):
    two_workers(kubectl, redis_url, gpu_nodes, "rolled", terminationGracePeriodSeconds=120)
    tasks.send(2, seconds=15, prefix="long")
    tasks.send(4, seconds=1, prefix="short")
    wait_for("both workers busy", lambda: len(tasks.runs()) >= 2)
    before = kubectl.get("deployment", "rolled-workers")["metadata"]["generation"]
    kubectl.run("patch", "gtq", "rolled", "--type=json", "-p",
                '[{"op": "add", "path": "/spec/worker/podLabels", "value": {"release": "2"}}]')  # fmt: skip
    wait_for(
        "the rollout started",
        lambda: kubectl.get("deployment", "rolled-workers")["metadata"]["generation"] > before,
    )
    wait_for("every task done", tasks.all_done, timeout=180, every=0.5)
    assert tasks.duplicates() == {}, "a task was cut off and ran again"
    assert sorted(tasks.done()) == sorted(tasks.sent)
    wait_for("the new pods", lambda: all(p["metadata"]["labels"].get("release") == "2"
                                         for p in kubectl.pods("gpufleet.dev/fleet=rolled")), timeout=180)  # fmt: skip
