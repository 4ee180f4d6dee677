"""A broker behind Redis Sentinel on the real control plane: real redis-server master and replica and three
sentinels on loopback, the operator, and real Celery workers as process pods. The master is killed in the middle
of a burst: the fleet's replicas are held while no master answers, the probe finds the new master, the workers
reconnect to it, and every task's result arrives."""

from __future__ import annotations

import json
import threading
import time

import pytest
from celery import Celery
from kubernetes import client

from fleet import queue_manifest
from gpufleet_worker.app import configure
from redis_sentinel import MASTER_NAME, SentinelGroup
from support import wait_for

pytestmark = pytest.mark.cluster

TASKS, TASK_SECONDS, LATE_TASKS = 48, 1.0, 12


@pytest.fixture
def group():
    with SentinelGroup(replicas=1, sentinels=3) as g:
        yield g
        print(g.logs())  # shown under a failed test


def _manifest(name: str, group: SentinelGroup) -> str:
    sentinel = {"masterName": MASTER_NAME, "sentinels": group.hosts,
                "passwordSecretRef": {"name": "sentinel", "key": "password"}}  # fmt: skip
    # A task whose ack the failover cut stays in the new master's unacked hash: it comes back after the visibility
    # timeout, which a short one keeps inside the test's time.
    worker = {"celeryApp": "sentinel_app:app", "terminationGracePeriodSeconds": 30, "taskTimeLimitSeconds": 10,
              "visibilityTimeoutSeconds": 20}  # fmt: skip
    return queue_manifest(name, None, ["gpu"], broker={"sentinel": sentinel, "passwordSecretRef": {"name": "redis", "key": "password"}},
                          worker=worker, scaling={"targetWaitSeconds": 0})  # fmt: skip


class Watch(threading.Thread):
    """Samples the Deployment's spec.replicas and the queue's BrokerReachable condition every 0.1 s."""

    def __init__(self, api, namespace: str, name: str) -> None:
        super().__init__(daemon=True)
        self.apps, self.custom = client.AppsV1Api(api), client.CustomObjectsApi(api)
        self.namespace, self.name = namespace, name
        # (monotonic, spec.replicas, BrokerReachable, status.reason)
        self.samples: list[tuple[float, int | None, str | None, str]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                dep = self.apps.read_namespaced_deployment(f"{self.name}-workers", self.namespace)
                gtq = self.custom.get_namespaced_custom_object(
                    "gpufleet.dev", "v1alpha1", self.namespace, "gputaskqueues", self.name
                )
                conditions = (gtq.get("status") or {}).get("conditions") or []
                reachable = next((c["status"] for c in conditions if c["type"] == "BrokerReachable"), None)
                reason = (gtq.get("status") or {}).get("reason") or ""
                self.samples.append((time.monotonic(), dep.spec.replicas, reachable, reason))
            except Exception as exc:  # noqa: BLE001 - a missed sample is only a gap
                print(f"watch: {exc}")
            self.stop.wait(0.1)

    def first(self, after: float, reachable: str) -> float | None:
        return next((t for t, _, r, _ in self.samples if t >= after and r == reachable), None)


S = {"masterName": "mymaster", "sentinels": ["s0:26379"]}
INVALID = [
    ("sentinel and url", {"sentinel": S, "url": "redis://r"}, "set it instead of broker.url"),
    ("sentinel and TLS", {"sentinel": S, "tls": {"enabled": True}}, "not supported yet"),
    ("no port", {"sentinel": {**S, "sentinels": ["s0"]}}, "spec.broker.sentinel.sentinels[0]"),
    ("a URL for a sentinel", {"sentinel": {**S, "sentinels": ["sentinel://s0:1"]}}, "sentinels[0]"),
    ("a sentinel twice", {"sentinel": {**S, "sentinels": ["s0:1", "s0:1"]}}, "Duplicate value"),
    ("no master name", {"sentinel": {"sentinels": ["s0:1"]}}, "masterName: Required value"),
    ("no sentinel", {"sentinel": {**S, "sentinels": []}}, "spec.broker.sentinel.sentinels"),
]


@pytest.mark.apiserver
@pytest.mark.parametrize(("case", "broker", "words"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_sentinel_brokers_are_refused_at_apply(kubectl, case, broker, words):
    body = {"apiVersion": "gpufleet.dev/v1alpha1", "kind": "GpuTaskQueue", "metadata": {"name": "invalid"},
            "spec": {"broker": broker, "queues": ["q"], "worker": {"image": "w"}}}  # fmt: skip
    out = kubectl.apply(json.dumps(body), check=False)
    assert out.returncode != 0, f"{case}: accepted"
    assert words in out.stderr, out.stderr


def _producer(group: SentinelGroup) -> Celery:
    app = Celery("sentinel-producer")
    configure(app, group.worker_env() | {"GPUFLEET_QUEUES": "gpu"})
    # A producer must ride out the failover too: keep retrying a publish for up to 30 s.
    app.conf.task_publish_retry_policy = {"max_retries": 60, "interval_start": 0, "interval_step": 0.5,
                                          "interval_max": 0.5}  # fmt: skip
    return app


def test_master_killed_mid_burst_holds_replicas_and_loses_no_task(
    kubectl, operator, cluster, namespace, group
):
    kubectl.run("create", "secret", "generic", "redis", f"--from-literal=password={group.password}")
    kubectl.run(
        "create", "secret", "generic", "sentinel", f"--from-literal=password={group.sentinel_password}"
    )
    kubectl.apply(_manifest("ha", group))
    wait_for("the worker Deployment", lambda: kubectl.get("deployment", "ha-workers"))
    wait_for(
        "BrokerReachable=True", lambda: kubectl.condition("ha", "BrokerReachable").get("status") == "True"
    )
    master = group.sentinel().master_for(MASTER_NAME, socket_timeout=2)

    producer = _producer(group)
    results = {}
    for i in range(TASKS):
        results[f"t{i}"] = producer.send_task("e2e.work", args=[f"t{i}", TASK_SECONDS], queue="gpu")
    watch = Watch(cluster.api, namespace, "ha")
    watch.start()
    try:
        # Mid-burst: the fleet at full size, workers busy, tasks done and tasks still queued.
        wait_for("2 replicas or more", lambda: (kubectl.replicas("ha-workers") or 0) >= 2, timeout=60)
        wait_for("8 tasks done", lambda: master.llen("e2e:done") >= 8, timeout=120, every=0.2)
        queued = master.llen("gpu")
        assert queued > 0, "the burst was over before the failover"
        replicas_before = kubectl.replicas("ha-workers")

        old = group.kill_master()
        killed, killed_wall = time.monotonic(), time.time()
        # More tasks while no master answers: the producer's retries carry them to the new one.
        late = threading.Thread(target=lambda: results.update(
            {f"late{i}": producer.send_task("e2e.work", args=[f"late{i}", TASK_SECONDS], queue="gpu")
             for i in range(LATE_TASKS)}))  # fmt: skip
        late.start()
        new = group.wait("a new master", lambda: (p := group.master_port()) not in (None, old) and p, 30)
        elected = time.monotonic() - killed
        wait_for("BrokerReachable=False", lambda: watch.first(killed, "False"), timeout=30)
        recovered_at = wait_for("BrokerReachable=True again", lambda: (
            (f := watch.first(killed, "False")) and watch.first(f, "True")), timeout=60)  # fmt: skip
        recovered = recovered_at - killed
        late.join(60)
        assert not late.is_alive(), "the producer could not publish through the failover"

        master = group.sentinel().master_for(MASTER_NAME, socket_timeout=2)

        def done_after_kill():
            return [e for x in master.lrange("e2e:done", 0, -1) if (e := json.loads(x))["end"] > killed_wall]

        wait_for("a task done on the new master", done_after_kill, timeout=60, every=0.2)
        first_done = time.monotonic() - killed

        def pending() -> list[str]:
            return [m for m, r in results.items() if r.backend.get_task_meta(r.id)["status"] != "SUCCESS"]

        wait_for("every task's result", lambda: not pending(), timeout=180, every=2, show=pending)
        all_done = time.monotonic() - killed
    finally:
        watch.stop.set()
        watch.join(5)

    # No task lost: every one has its result and its trace; a task whose ack the failover cut may have run twice.
    done = [json.loads(x)["marker"] for x in master.lrange("e2e:done", 0, -1)]
    assert set(done) == set(results), f"lost: {sorted(set(results) - set(done))}"
    assert all(r.get(timeout=10) == m for m, r in results.items())
    twice = len(done) - len(set(done))

    # Replicas held while the broker was unreachable: never below what the fleet had when the master died.
    window = [s for s in watch.samples if killed <= s[0] <= recovered_at]
    assert window and min(n for _, n, _, _ in window) >= replicas_before, window
    assert any("holding" in reason for *_, reason in window), [reason for *_, reason in window]
    assert any(e["reason"] == "BrokerUnreachable" and e["type"] == "Warning" for e in kubectl.events("ha"))
    # The workers reconnected: their state entries are on the new master, fresh.
    entries = master.hgetall(f"gpufleet:workers:{namespace}/ha")
    assert entries, "no worker wrote its state to the new master"
    # No password in the CR, its status, its Events or the operator's log.
    for text in (json.dumps(kubectl.get("gtq", "ha")), json.dumps(kubectl.events("ha")), operator.log()):
        assert group.password not in text and group.sentinel_password not in text

    print(
        f"sentinel failover figures: master killed with {queued} tasks queued and {replicas_before} replicas; "
        f"new master ({new}) elected after {elected:.2f}s; operator's BrokerReachable True again after "
        f"{recovered:.2f}s; first task done on the new master after {first_done:.2f}s; all "
        f"{len(results)} results after {all_done:.2f}s; {twice} task(s) ran twice (acks the failover cut)"
    )
    producer.close()
    master.close()
