"""The whole loop on the real control plane: CRD, operator, worker Deployment, real Celery workers as process
pods on kwok GPU nodes, a real redis-server. Also the acceptance of the operator core (issue 2)."""

from __future__ import annotations

import json
import statistics
import time

import pytest
import redis

from fleet import Tasks, queue_manifest
from support import wait_for

pytestmark = pytest.mark.cluster


@pytest.fixture
def tasks(redis_url):
    t = Tasks(redis_url, "gpu")
    yield t
    t.close()


INVALID = [
    ("credentials in the URL", {"broker": {"url": "redis://:pw@r:6379/0"}}, "spec.broker.url"),
    ("no broker URL", {"broker": {}}, "exactly one of broker.url and broker.urlSecretRef"),
    ("min above max", {"scaling": {"minReplicas": 5, "maxReplicas": 2}}, "spec.scaling.minReplicas"),
    ("negative GPUs", {"worker": {"image": "w", "gpus": -1}}, "spec.worker.gpus"),
    ("unknown pool", {"worker": {"image": "w", "pool": "gevent"}}, "spec.worker.pool"),
    ("bad resource name", {"worker": {"image": "w", "gpuResource": "gpu"}}, "spec.worker.gpuResource"),
    ("no queue", {"queues": []}, "spec.queues"),
    ("bad queue name", {"queues": ["has space"]}, "spec.queues[0]"),
    ("poll too fast", {"scaling": {"pollIntervalSeconds": 0.01}}, "spec.scaling.pollIntervalSeconds"),
    (
        "visibility timeout below the time limit",
        {"worker": {"image": "w", "taskTimeLimitSeconds": 600, "visibilityTimeoutSeconds": 60}},
        "spec.worker.visibilityTimeoutSeconds",
    ),
    ("no image", {"worker": {"gpus": 1}}, "spec.worker.image"),
    ("name too long", {"__name": "x" * 51}, "metadata.name"),
    (
        "TLS CA without TLS",
        {"broker": {"url": "redis://r", "tls": {"caSecretRef": {"name": "ca", "key": "k"}}}},
        "caSecretRef",
    ),
]


@pytest.mark.apiserver
@pytest.mark.parametrize(("case", "change", "field"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_queues_are_refused_at_apply(kubectl, crd, case, change, field):
    spec = {"broker": {"url": "redis://r:6379/0"}, "queues": ["q"], "worker": {"image": "w"}}
    name = change.pop("__name", "invalid") if "__name" in change else "invalid"
    spec.update(change)
    body = {
        "apiVersion": "gpufleet.dev/v1alpha1",
        "kind": "GpuTaskQueue",
        "metadata": {"name": name},
        "spec": spec,
    }
    out = kubectl.apply(json.dumps(body), check=False)
    assert out.returncode != 0, f"{case}: accepted"
    assert field in out.stderr, out.stderr
    assert kubectl.get("gtq", name) is None


def test_worker_deployment_is_owned_gpu_requesting_and_idempotent(kubectl, operator, redis_url):
    kubectl.run("create", "secret", "generic", "broker", "--from-literal=password=s3cr3t-pw")
    manifest = queue_manifest(
        "embed",
        redis_url,
        ["gpu", "gpu-high"],
        broker={"passwordSecretRef": {"name": "broker", "key": "password"}},
    )
    kubectl.apply(manifest)
    dep = wait_for("the worker Deployment", lambda: kubectl.get("deployment", "embed-workers"))
    gtq = kubectl.get("gtq", "embed")
    (owner,) = dep["metadata"]["ownerReferences"]
    assert owner["uid"] == gtq["metadata"]["uid"] and owner["controller"] is True
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    assert (
        container["resources"]["requests"]["nvidia.com/gpu"]
        == container["resources"]["limits"]["nvidia.com/gpu"]
        == "1"
    )
    env = {e["name"]: e for e in container["env"]}
    assert env["GPUFLEET_BROKER_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "broker",
        "key": "password",
    }
    assert "--queues" in container["args"] and "gpu,gpu-high" in container["args"]
    assert container["livenessProbe"]["exec"]["command"][-1] == "gpufleet_worker.health"
    # The password reached nothing it must not: the CR, its status, its events, the operator's log.
    wait_for("a status", lambda: kubectl.status("embed").get("observedGeneration") == 1)
    # (the Secret's password is wrong for this Redis, which has none: Redis accepts AUTH only when configured)
    for text in (
        json.dumps(kubectl.get("gtq", "embed")),
        json.dumps(kubectl.events("embed")),
        operator.log(),
    ):
        assert "s3cr3t-pw" not in text

    # Applying again changes nothing; nor does a steady state: no API write at all. (The Deployment's own
    # controller writes its status: what must not move is what gpufleet owns, its spec and its managed fields.)
    def ours() -> tuple:
        out = kubectl.run("get", "deployment", "embed-workers", "-o", "json", "--show-managed-fields").stdout
        dep = json.loads(out)
        fields = [f for f in dep["metadata"]["managedFields"] if f["manager"] == "gpufleet"]
        assert fields, "no fields owned by gpufleet"
        return dep["metadata"]["generation"], json.dumps(fields, sort_keys=True)

    before = ours()
    kubectl.apply(manifest)
    time.sleep(3)
    gtq_version = kubectl.get("gtq", "embed")["metadata"]["resourceVersion"]
    time.sleep(4)  # eight ticks at 0.5 s
    assert ours() == before
    assert kubectl.get("gtq", "embed")["metadata"]["resourceVersion"] == gtq_version


def test_burst_scales_up_drains_and_returns_to_zero(kubectl, operator, redis_url, tasks, gpu_nodes):
    # A pool of 3 GPUs for this fleet alone, which may have 5 pods of one GPU: 3 run, 2 stay Pending.
    gpu_nodes.add(1, gpus=3)
    kubectl.apply(
        queue_manifest(
            "burst",
            redis_url,
            ["gpu"],
            scaling={"maxReplicas": 5},
            worker={"nodeSelector": gpu_nodes.selector},
        )
    )
    wait_for("the worker Deployment", lambda: kubectl.get("deployment", "burst-workers"))
    assert kubectl.replicas("burst-workers") == 0

    started = time.monotonic()
    # 36 s of work: with 3 workers it lasts long enough after the third starts for the 2 Pending pods to be seen
    # (at 0.5 s a task, a loaded machine had the first workers drain the queue before the third one ran).
    tasks.send(24, seconds=1.5)
    wait_for("a scale-up", lambda: (kubectl.replicas("burst-workers") or 0) >= 1, timeout=30, every=0.05)
    reaction = time.monotonic() - started
    print(f"reaction time, first task to spec.replicas >= 1: {reaction:.2f}s")

    def pending_and_running():
        pods = kubectl.pods("gpufleet.dev/fleet=burst")
        phases = [p["status"].get("phase") for p in pods if not p["metadata"].get("deletionTimestamp")]
        return phases.count("Pending") >= 2 and phases.count("Running") == 3 and phases

    def seen():
        status = kubectl.status("burst")
        phases = [p["status"].get("phase") for p in kubectl.pods("gpufleet.dev/fleet=burst")]
        return {"phases": phases, **{k: status.get(k) for k in ("queued", "reserved", "desiredReplicas")}}

    wait_for("3 pods running and 2 pending for want of a GPU", pending_and_running, timeout=60, show=seen)
    wait_for("every task done", tasks.all_done, timeout=240, every=0.5)
    assert tasks.duplicates() == {}, "a task ran twice"
    assert sorted(tasks.done()) == sorted(tasks.sent), "a task was lost"
    assert len({r["pod"] for r in tasks.runs()}) >= 2, "the work was spread over several workers"

    wait_for("scale-down to zero", lambda: kubectl.replicas("burst-workers") == 0, timeout=90)
    status = kubectl.status("burst")
    assert status["queued"] == 0 and status["reserved"] == 0 and status["desiredReplicas"] == 0
    reasons = [e["reason"] for e in kubectl.events("burst")]
    assert "ScaledUp" in reasons and "ScaledDown" in reasons
    assert tasks.duplicates() == {}


def test_reaction_time(kubectl, operator, redis_url, tasks):
    """First task to spec.replicas >= 1, several times: the figures for the closing note (not a timed assertion)."""
    kubectl.apply(
        queue_manifest(
            "react",
            redis_url,
            ["gpu"],
            scaling={"idleSecondsBeforeZero": 0, "scaleDownStabilizationSeconds": 0},
            worker={"terminationGracePeriodSeconds": 20},
        )
    )
    wait_for("the worker Deployment", lambda: kubectl.get("deployment", "react-workers"))
    client = redis.Redis.from_url(redis_url)
    times = []
    for _ in range(5):
        wait_for("zero replicas", lambda: kubectl.replicas("react-workers") == 0, timeout=60)
        # and no worker left finishing its grace period: one would take the task before any scale-up is needed
        wait_for("no worker pod", lambda: not kubectl.pods("gpufleet.dev/fleet=react"), timeout=150)
        client.delete("gpu")
        started = time.monotonic()
        tasks.send(1, seconds=0.1)
        wait_for("a scale-up", lambda: (kubectl.replicas("react-workers") or 0) >= 1, timeout=30, every=0.02)
        times.append(time.monotonic() - started)
        wait_for("the task done", tasks.all_done, timeout=120)
    print(
        f"reaction times: {[round(t, 2) for t in times]} p50={statistics.median(times):.2f}s max={max(times):.2f}s"
    )


def test_unreachable_broker_holds_replicas_and_recovers(kubectl, operator, redis_server, redis_url, tasks):
    kubectl.apply(
        queue_manifest(
            "hold", redis_url, ["gpu"], scaling={"minReplicas": 2, "scaleDownStabilizationSeconds": 0}
        )
    )
    wait_for("2 replicas", lambda: kubectl.replicas("hold-workers") == 2)
    wait_for(
        "BrokerReachable=True", lambda: kubectl.condition("hold", "BrokerReachable").get("status") == "True"
    )
    redis_server.stop()
    try:
        wait_for(
            "BrokerReachable=False",
            lambda: kubectl.condition("hold", "BrokerReachable").get("status") == "False",
        )
        time.sleep(5)
        assert kubectl.replicas("hold-workers") == 2
        assert "holding 2" in kubectl.status("hold")["reason"]
        warnings = [e for e in kubectl.events("hold") if e["reason"] == "BrokerUnreachable"]
        assert len(warnings) == 1 and warnings[0]["type"] == "Warning"
    finally:
        redis_server.start()
    wait_for(
        "BrokerReachable=True again",
        lambda: kubectl.condition("hold", "BrokerReachable").get("status") == "True",
        timeout=60,
    )
    assert any(e["reason"] == "BrokerReachable" for e in kubectl.events("hold"))


def test_operator_restart_does_not_flap(kubectl, operator, redis_url, tasks):
    kubectl.apply(queue_manifest("steady", redis_url, ["gpu"], scaling={"scaleDownStabilizationSeconds": 30}))
    wait_for("the worker Deployment", lambda: kubectl.get("deployment", "steady-workers"))
    tasks.send(3, seconds=20)
    wait_for("3 replicas", lambda: kubectl.replicas("steady-workers") == 3, timeout=30)
    operator.kill()
    operator.start()
    seen = set()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        seen.add(kubectl.replicas("steady-workers"))
        time.sleep(0.2)
    assert seen == {3}, f"replicas moved after a restart: {seen}"


def test_deleting_the_queue_removes_the_deployment(kubectl, operator, redis_url):
    kubectl.apply(queue_manifest("gone", redis_url, ["gpu"], scaling={"minReplicas": 1}))
    wait_for("the worker Deployment", lambda: kubectl.get("deployment", "gone-workers"))
    kubectl.run("delete", "gtq", "gone", "--wait=true")
    wait_for(
        "the Deployment garbage-collected",
        lambda: kubectl.get("deployment", "gone-workers") is None,
        timeout=60,
    )
    wait_for("its pods gone", lambda: not kubectl.pods("gpufleet.dev/fleet=gone"), timeout=90)
    # The operator forgot the queue: its ticks do not write the Deployment again (found on kind).
    for _ in range(16):  # eight seconds of 0.5 s polls
        time.sleep(0.5)
        assert kubectl.get("deployment", "gone-workers") is None, "a deleted queue's Deployment came back"


def test_missing_secret_holds_with_a_condition_and_recovers(kubectl, operator, redis_url):
    kubectl.apply(
        queue_manifest(
            "secretless", redis_url, ["gpu"], broker={"passwordSecretRef": {"name": "absent", "key": "pw"}}
        )
    )
    wait_for("BrokerReachable=False/SecretNotFound",
             lambda: kubectl.condition("secretless", "BrokerReachable").get("reason") == "SecretNotFound")  # fmt: skip
    assert kubectl.condition("secretless", "Ready")["status"] == "False"
    warnings = [e for e in kubectl.events("secretless") if e["reason"] == "SecretNotFound"]
    assert len(warnings) == 1
    kubectl.run("create", "secret", "generic", "absent", "--from-literal=pw=")
    wait_for("recovery once the Secret exists",
             lambda: kubectl.condition("secretless", "BrokerReachable").get("status") == "True", timeout=90)  # fmt: skip
