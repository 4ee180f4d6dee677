"""The watch cache shared by kopf's handler threads and the tick's thread."""

from __future__ import annotations

import threading
import time

from gpufleet.cache import Cache
from gpufleet.model import WorkerState
from gpufleet.scalein import deletion_costs, idle_pods


def pod(name: str, fleet: str = "embed", **meta) -> dict:
    return {
        "metadata": {"name": name, "namespace": "ml", "labels": {"gpufleet.dev/fleet": fleet}, **meta},
        "spec": {"nodeName": "gpu-1"},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]},
    }


def pods_of(cache: Cache, fleet: str = "embed"):
    return cache.fleet("ml", fleet, f"{fleet}-workers")[1]


def gone_of(cache: Cache, fleet: str = "embed"):
    return cache.fleet("ml", fleet, f"{fleet}-workers")[2]


def test_pods_and_deployments_follow_their_events():
    cache = Cache()
    cache.pod_event("ADDED", pod("a"))
    cache.pod_event("ADDED", pod("b", annotations={"controller.kubernetes.io/pod-deletion-cost": "-5"}))
    cache.pod_event("ADDED", {"metadata": {"name": "x", "namespace": "ml", "labels": {}}})  # not ours
    assert gone_of(cache) == frozenset()  # never seen deleted: not gone, whatever the cache holds
    cache.pod_event("DELETED", pod("a"))
    assert gone_of(cache) == {"a"}
    assert list(pods_of(cache)) == ["b"] and pods_of(cache)["b"].deletion_cost == "-5"
    cache.pod_written("ml", "embed", "b", deletion_cost="-9")
    assert pods_of(cache)["b"].deletion_cost == "-9"
    failing = {"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate", "message": "forbidden"}
    dep = {"metadata": {"name": "embed-workers", "namespace": "ml"}, "spec": {"replicas": 3},
           "status": {"replicas": 2, "readyReplicas": 1, "conditions": [failing]}}  # fmt: skip
    cache.deployment_event("ADDED", dep)
    d = cache.deployment("ml", "embed-workers")
    assert (d.replicas, d.have, d.ready, d.replica_failure) == (3, 2, 1, "forbidden")
    # What the tick reads of a fleet at every poll, under one lock: the same as asked one by one.
    assert cache.fleet("ml", "embed", "embed-workers") == (d, pods_of(cache), frozenset({"a"}))
    assert cache.fleet("ml", "other", "other-workers") == (None, {}, frozenset())
    cache.deployment_event("DELETED", dep)
    assert cache.deployment("ml", "embed-workers") is None
    cache.forget("ml", "embed")
    assert pods_of(cache) == {}


def test_the_tick_reads_while_handler_threads_write():
    """The race the shared dicts had: handler threads adding and removing pods while the tick iterated them
    ("dictionary changed size during iteration"). Readers now get copies taken under the cache's lock."""
    cache = Cache()
    stop = threading.Event()
    errors: list[BaseException] = []

    def churn(offset: int) -> None:
        i = 0
        while not stop.is_set():
            name = f"p{offset}-{i % 50}"
            cache.pod_event("ADDED" if i % 3 else "DELETED", pod(name))
            i += 1

    writers = [threading.Thread(target=churn, args=(n,)) for n in range(4)]
    for w in writers:
        w.start()
    reads = 0
    try:
        deadline = time.monotonic() + 2.0
        workers = {f"p0-{i}": WorkerState(i % 2 == 0, 0.0, 1e12, i % 2) for i in range(50)}
        while time.monotonic() < deadline:
            pods = pods_of(cache)
            # What the plan does with them, iterating more than once.
            idle_pods(pods, workers)
            deletion_costs(pods, workers, 100.0)
            sum(1 for p in pods.values() if p.scheduled)
            reads += 1
    except BaseException as exc:  # noqa: BLE001 - any failure of the reader is the finding
        errors.append(exc)
    finally:
        stop.set()
        for w in writers:
            w.join()
    assert not errors, errors
    assert reads > 100


def test_pods_held_by_a_scheduling_gate_are_pending_and_failed_pods_are_known():
    gated = pod("g")
    gated["spec"] = {"schedulingGates": [{"name": "kueue.x-k8s.io/admission"}]}
    evicted = pod("e", labels={"gpufleet.dev/fleet": "embed", "gpufleet.dev/busy": "true"})
    evicted["status"] = {"phase": "Failed", "reason": "Evicted"}
    cache = Cache()
    cache.pod_event("ADDED", gated)
    cache.pod_event("ADDED", evicted)
    pods = pods_of(cache)
    assert pods["g"].unschedulable and not pods["g"].scheduled
    assert pods["e"].failed and pods["e"].protected
