"""Operator high availability on the real control plane: two operators on one Lease, tasks flowing, the active
one SIGKILLed. The standby writes nothing while it waits, takes over within the Lease's duration plus its retry
period, and continues from the status its predecessor wrote: no replica flap, no double scaling, no Event storm.

The leader election runs with its defaults (15 s duration, 10 s renew deadline, 2 s retry), the figures the
chart installs, so the takeover time printed here is the one users get.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
import urllib.request

import pytest
from kubernetes import client, watch

from fleet import Operator, Tasks, queue_manifest
from support import free_port, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

LEASE = "gpufleet-ha"
DURATION, RETRY = 15.0, 2.0  # leader.Timing's defaults
MAX = 8  # the fleet's maxReplicas (on 4 GPUs: 4 pods run, the others wait Pending, which is fine here)


class Replica:
    """One operator process competing for the Lease, with a metrics port of its own to count its writes."""

    def __init__(self, env, namespace, tmp_path, name: str) -> None:
        self.name = name
        (tmp_path / name).mkdir()
        self.op = Operator(env, namespace, tmp_path / name, "--leader-election", "--lease-namespace", namespace,
                           "--lease-name", LEASE, "--identity", name)  # fmt: skip
        self.port = free_port()
        self.op.env["GPUFLEET_METRICS_PORT"] = str(self.port)

    def writes(self) -> dict[str, float] | None:
        """gpufleet_api_writes_total by kind (Deployment, PodDisruptionBudget, Pod, Event, GpuTaskQueue/status);
        None while the endpoint does not answer."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=2) as r:
                text = r.read().decode()
        except OSError:
            return None
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("gpufleet_api_writes_total{"):
                kind = line.split('kind="', 1)[1].split('"', 1)[0]
                out[kind] = float(line.rsplit(" ", 1)[1])
        return out


@pytest.fixture
def replicas(cluster_env, namespace, crd, tmp_path):
    pair = [Replica(cluster_env, namespace, tmp_path, name) for name in ("op-a", "op-b")]
    yield pair
    for r in pair:
        r.op.stop()
    for r in pair:
        print(f"--- operator {r.name} log ---\n{r.op.log()[-5000:]}")
        r.op.assert_no_traceback()


class History:
    """Every spec.replicas the Deployment took, with when (a watch, so no change between two polls is missed)."""

    def __init__(self, api, namespace: str, name: str) -> None:
        self.apps = client.AppsV1Api(api)
        self.namespace, self.name = namespace, name
        self.seen: list[tuple[float, int]] = []
        self._watch = watch.Watch()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with contextlib.suppress(Exception):  # stopped
            for event in self._watch.stream(self.apps.list_namespaced_deployment, self.namespace,
                                            field_selector=f"metadata.name={self.name}", timeout_seconds=600):  # fmt: skip
                replicas = event["object"].spec.replicas
                if not self.seen or self.seen[-1][1] != replicas:
                    self.seen.append((time.monotonic(), replicas))

    def values(self) -> list[int]:
        return [r for _, r in self.seen]

    def first_above(self, value: int, after: float) -> float | None:
        return next((t for t, r in self.seen if t >= after and r > value), None)

    def stop(self) -> None:
        self._watch.stop()


def lease_holder(api, namespace: str) -> str | None:
    try:
        return client.CoordinationV1Api(api).read_namespaced_lease(LEASE, namespace).spec.holder_identity
    except client.ApiException:
        return None


def test_standby_takes_over_a_killed_leader_without_flap(
    cluster, kubectl, namespace, replicas, redis_url, gpu_nodes
):
    a, b = replicas
    a.op.start()
    wait_for("op-a to lead", lambda: lease_holder(cluster.api, namespace) == "op-a", timeout=60)
    b.op.start()
    wait_for("op-b's metrics", lambda: b.writes() is not None, timeout=60)

    gpu_nodes.add(1, gpus=4)
    kubectl.apply(queue_manifest("ha", redis_url, ["gpu"], worker={"nodeSelector": gpu_nodes.selector},
                                 scaling={"maxReplicas": MAX, "targetTasksPerReplica": 5,
                                          # no scale-down within the test: any drop of replicas is a flap
                                          "scaleDownStabilizationSeconds": 300, "idleSecondsBeforeZero": 300}))  # fmt: skip
    wait_for("the worker Deployment", lambda: kubectl.get("deployment", "ha-workers"))
    history = History(cluster.api, namespace, "ha-workers")

    # Tasks flowing: a burst that asks for 2 workers, and a steady trickle the whole test long.
    tasks, trickle = Tasks(redis_url, "gpu"), Tasks(redis_url, "gpu")
    stop = threading.Event()

    def produce() -> None:
        while not stop.wait(1.0):
            trickle.send(1, seconds=1.5, prefix="p")

    producer = threading.Thread(target=produce, daemon=True)
    try:
        tasks.send(8, seconds=3, prefix="a")
        producer.start()
        wait_for("2 replicas", lambda: (kubectl.replicas("ha-workers") or 0) >= 2, timeout=60)
        wait_for("a worker running", lambda: any(p["status"].get("phase") == "Running"
                                                 for p in kubectl.pods("gpufleet.dev/fleet=ha")), timeout=90)  # fmt: skip
        time.sleep(3)  # the leader at work: status, Events, pod annotations

        # The standby has written nothing; kopf keeps no state on the queue (no diff-base annotation).
        assert sum((a.writes() or {}).values()) > 0, "the leader wrote nothing: the test shows nothing"
        assert b.writes() == {}, f"the standby wrote: {b.writes()}"
        annotations = kubectl.get("gtq", "ha")["metadata"].get("annotations") or {}
        assert not [k for k in annotations if k.startswith("gpufleet.dev/last-handled")], annotations
        assert lease_holder(cluster.api, namespace) == "op-a"
        before = kubectl.replicas("ha-workers")
        assert before < MAX, f"the fleet is at its maximum ({before}) before the kill: no reaction to measure"

        # New work arrives as the leader dies: 40 tasks of 4 s, enough for the maximum of 8 workers.
        a.op.kill()
        killed = time.monotonic()
        tasks.send(40, seconds=4, prefix="b")

        led = wrote = None
        while time.monotonic() - killed < DURATION + RETRY + 30 and not (led and wrote):
            if led is None and lease_holder(cluster.api, namespace) == "op-b":
                led = time.monotonic() - killed
            if wrote is None and sum((b.writes() or {}).values()) > 0:
                wrote = time.monotonic() - killed
            time.sleep(0.05)
        print(f"killed at replicas={before}; op-b leads {led}, writes {wrote}")
        wait_for("the scale-up by op-b", lambda: history.first_above(before, killed), timeout=60)
        reacted = history.first_above(before, killed) - killed
        print(f"takeover after SIGKILL of the leader (lease {DURATION:.0f}s, retry {RETRY:.0f}s): "
              f"Lease held by op-b {led:.2f}s, op-b's first write {wrote:.2f}s, "
              f"spec.replicas {before} -> more {reacted:.2f}s")  # fmt: skip
        assert led is not None and wrote is not None
        # A kill lands anywhere in a renewal period: op-b leads DURATION - RETRY .. DURATION + RETRY later (plus the
        # API's latency on a loaded machine).
        assert DURATION - RETRY - 1 <= led <= DURATION + RETRY + 3, led
        assert reacted <= DURATION + RETRY + 5, reacted

        wait_for(f"{MAX} replicas", lambda: kubectl.replicas("ha-workers") == MAX, timeout=60)
        stop.set()
        producer.join()
        wait_for("every task done", lambda: tasks.all_done() and trickle.all_done(), timeout=240, every=0.5)
    finally:
        stop.set()
        history.stop()
        tasks.close()
        trickle.close()

    # No flap: spec.replicas only ever rose (scale-down is held off for the whole test). No double scaling: each
    # rise has one ScaledUp Event, from one writer. No Event storm: op-b posted no more Events than it scaled.
    values = history.values()
    print(f"spec.replicas history: {values}")
    assert values == sorted(values) and len(set(values)) == len(values), f"replicas flapped: {values}"
    events = kubectl.events("ha")
    scaled = [e for e in events if e["reason"] == "ScaledUp"]
    rises = len([v for v in values[1:]])
    print(f"Events: {len(events)} ({sorted(e['reason'] for e in events)}); op-b's writes: {b.writes()}")
    assert len(scaled) == rises, f"{len(scaled)} ScaledUp Events for {rises} rises of replicas"
    rises_by_b = len([t for t, _ in history.seen if t >= killed])
    assert (b.writes() or {}).get("Event", 0) <= rises_by_b + 1, b.writes()
    assert tasks.duplicates() == {} and trickle.duplicates() == {}, "a task ran twice"


def test_a_frozen_leader_writes_nothing_once_it_wakes(cluster, kubectl, namespace, replicas, redis_url):
    """Fencing: the leader frozen (SIGSTOP, as in a long GC pause or a VM freeze) past its Lease's duration, the
    standby leads; the old leader, woken (SIGCONT) into a world that changed, has passed its renew deadline and
    writes nothing, though its fleet's state would call for writes."""
    a, b = replicas
    a.op.start()
    wait_for("op-a to lead", lambda: lease_holder(cluster.api, namespace) == "op-a", timeout=60)
    b.op.start()
    wait_for("op-b's metrics", lambda: b.writes() is not None, timeout=60)
    # No GPU node: the pods stay Pending; what matters is what each operator writes.
    kubectl.apply(
        queue_manifest("frozen", redis_url, ["gpu"], scaling={"maxReplicas": 3, "targetTasksPerReplica": 1})
    )
    wait_for("the worker Deployment", lambda: kubectl.get("deployment", "frozen-workers"))
    wait_for("a status", lambda: kubectl.status("frozen").get("conditions"))
    tasks = Tasks(redis_url, "gpu")
    try:
        a.op.proc.send_signal(signal.SIGSTOP)
        frozen = time.monotonic()
        wait_for(
            "op-b to lead",
            lambda: lease_holder(cluster.api, namespace) == "op-b",
            timeout=DURATION + RETRY + 10,
        )
        print(f"op-b leads {time.monotonic() - frozen:.2f}s after op-a froze")
        tasks.send(2, seconds=1)  # new work: op-b scales to 2 while op-a sleeps
        wait_for("op-b's scale-up", lambda: kubectl.replicas("frozen-workers") == 2, timeout=30)
    finally:
        a.op.proc.send_signal(signal.SIGCONT)
    woke_writes = wait_for("op-a's metrics after SIGCONT", a.writes, timeout=10)
    time.sleep(6)  # a dozen of op-a's ticks at 0.5 s, and three looks at the Lease
    assert a.writes() == woke_writes, f"op-a wrote after it woke: {woke_writes} -> {a.writes()}"
    assert "op-a no longer leads" in a.op.log()
    assert lease_holder(cluster.api, namespace) == "op-b"
    # op-b goes on writing (the status of one more queued task); op-a still does not.
    written = sum(b.writes().values())
    tasks.send(1, seconds=1)
    wait_for("op-b to write the new depth", lambda: sum(b.writes().values()) > written, timeout=30)
    assert a.writes() == woke_writes
    # op-b goes (its Lease released): op-a, a leader turned standby, leads again. What its ticks carried is
    # gone with its lead; it must pick every fleet up again from the status, as a restarted operator does.
    b.op.stop()
    wait_for(
        "op-a to lead again", lambda: lease_holder(cluster.api, namespace) == "op-a", timeout=DURATION + 10
    )
    tasks.send(1, seconds=1)
    wait_for("op-a to write again", lambda: sum(a.writes().values()) > sum(woke_writes.values()), timeout=30)
    tasks.close()
