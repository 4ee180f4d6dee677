"""Worker pods that cannot start: their states read from the pod objects, the conditions, Events and status that
say so, the fleet held at what it has, and its recovery. Pure: pod objects as the API serves them, snapshots in,
plans out."""

from __future__ import annotations

from dataclasses import replace

import pytest
from prometheus_client import REGISTRY

from gpufleet import metrics
from gpufleet.crd import schema
from gpufleet.model import Deployment, Depth, FleetState, Pod, Reading, Snapshot, WorkerState, pod_trouble
from gpufleet.plan import plan_tick
from gpufleet.spec import parse_spec

SPEC = parse_spec(
    {
        "broker": {"url": "redis://redis:6379/0"},
        "queues": ["gpu"],
        "worker": {"image": "w:1"},
        "scaling": {"maxReplicas": 8, "scaleDownStabilizationSeconds": 0, "idleSecondsBeforeZero": 0},
    }
)
KEY = ("ml", "embed")
TRACEBACK = (
    'Traceback (most recent call last):\n  File "celery/bin/celery.py", line 58\n'
    "    app = find_app(value)\nModuleNotFoundError: No module named 'nope'\n\n"
    "Error: Unable to load celery application.\n"
)


def pod_object(name="p", *, state=None, last=None, ready=False, scheduled=True, conditions=(), gates=()):
    container = {"name": "worker", "image": "registry.example/w:missing", "ready": ready, "restartCount": 3}
    if state is not None:
        container["state"] = state
    if last is not None:
        container["lastState"] = {"terminated": last}
    spec = {"nodeName": "n1"} if scheduled else {}
    if gates:
        spec["schedulingGates"] = [{"name": g} for g in gates]
    status = {"conditions": list(conditions)}
    if scheduled:
        status["containerStatuses"] = [container]
    return {"metadata": {"name": name, "creationTimestamp": "1970-01-01T00:01:00Z"}, "spec": spec,
            "status": status}  # fmt: skip


def waiting(reason, message=""):
    return {"waiting": {"reason": reason, "message": message}}


RUNNING = {"running": {"startedAt": "1970-01-01T00:01:30Z"}}
CRASHED = {"exitCode": 1, "reason": "Error", "message": TRACEBACK}
OOM = {"exitCode": 137, "reason": "OOMKilled"}
UNSCHEDULABLE = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                 "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."}  # fmt: skip


@pytest.mark.parametrize(
    "obj, reason, says",
    [
        # Merely slow to start: no trouble, whatever the time it takes.
        (pod_object(state=waiting("ContainerCreating")), None, None),
        (pod_object(state=waiting("PodInitializing")), None, None),
        (pod_object(state=RUNNING), None, None),
        (pod_object(scheduled=False), None, None),
        (
            pod_object(state=waiting("ErrImagePull", "pull access denied")),
            "ImagePullFailed",
            "pull access denied",
        ),
        (
            pod_object(
                state=waiting("ImagePullBackOff", 'Back-off pulling image "registry.example/w:missing"')
            ),
            "ImagePullFailed",
            "'registry.example/w:missing' cannot be pulled (ImagePullBackOff)",
        ),  # fmt: skip
        (pod_object(state=waiting("InvalidImageName")), "ImagePullFailed", "InvalidImageName"),
        (
            pod_object(
                state=waiting("CreateContainerConfigError", "couldn't find key pw in Secret ml/creds")
            ),
            "ContainerConfigError",
            "couldn't find key pw in Secret ml/creds",
        ),  # fmt: skip
        # Its exit code and the last lines of its termination message (the log's end, FallbackToLogsOnError).
        (
            pod_object(state=waiting("CrashLoopBackOff"), last=CRASHED),
            "CrashLoopBackOff",
            "exited with code 1 (Error); its last output: app = find_app(value) | ModuleNotFoundError: No module "
            "named 'nope' | Error: Unable to load celery application.",
        ),  # fmt: skip
        (pod_object(state={"terminated": CRASHED}, last=CRASHED), "CrashLoopBackOff", "code 1"),
        (
            pod_object(state=waiting("CrashLoopBackOff"), last={"exitCode": 0, "reason": "Completed"}),
            "CrashLoopBackOff",
            "exited with code 0",
        ),  # fmt: skip
        # Started again after a crash, not ready yet: still the crash, until it is ready.
        (pod_object(state=RUNNING, last=CRASHED), "CrashLoopBackOff", "code 1"),
        (pod_object(state=RUNNING, last=CRASHED, ready=True), None, None),
        (pod_object(state=waiting("CrashLoopBackOff"), last=OOM), "OOMKilled", "more memory than its limit"),
        (pod_object(state=RUNNING, last=OOM), "OOMKilled", "OOMKilled"),
        (pod_object(state=RUNNING, last=OOM, ready=True), None, None),
        (
            pod_object(scheduled=False, conditions=[UNSCHEDULABLE]),
            "Unschedulable",
            "Insufficient nvidia.com/gpu",
        ),
        (pod_object(scheduled=False, gates=["kueue.x-k8s.io/admission"]), "Unschedulable", "kueue.x-k8s.io"),
    ],
)
def test_a_pods_state_says_whether_its_worker_cannot_start(obj, reason, says):
    trouble = pod_trouble(obj)
    assert (trouble.reason if trouble else None) == reason
    if says:
        assert says in trouble.detail
    pod = Pod.from_object(obj)
    assert pod.trouble == trouble
    assert pod.unschedulable == (reason == "Unschedulable")
    assert pod.cannot_start == (reason is not None and reason != "Unschedulable")


def test_init_containers_count_and_the_termination_message_is_cut_to_its_end():
    obj = pod_object(state=RUNNING)
    long = {"exitCode": 2, "reason": "Error", "message": "x" * 5000 + "\nlast line\n"}
    obj["status"]["initContainerStatuses"] = [{"name": "setup", "state": waiting("CrashLoopBackOff"),
                                               "lastState": {"terminated": long}}]  # fmt: skip
    trouble = pod_trouble(obj)
    assert trouble.reason == "CrashLoopBackOff" and "container setup exited with code 2" in trouble.detail
    assert trouble.detail.endswith("x | last line") and len(trouble.detail) < 500
    leaked = {
        "exitCode": 1,
        "reason": "Error",
        "message": "Cannot connect to redis://:s3cret@redis:6379/0: refused",
    }
    obj["status"]["initContainerStatuses"][0]["lastState"]["terminated"] = leaked
    detail = pod_trouble(obj).detail
    assert "s3cret" not in detail and "redis://***@redis:6379/0" in detail


# ---- the plan -------------------------------------------------------------------------------------------------


def failing(name, reason="ImagePullFailed"):
    obj = {
        "ImagePullFailed": pod_object(name, state=waiting("ImagePullBackOff", "Back-off pulling image")),
        "CrashLoopBackOff": pod_object(name, state=waiting("CrashLoopBackOff"), last=CRASHED),
        "OOMKilled": pod_object(name, state=RUNNING, last=OOM),
        "ContainerConfigError": pod_object(
            name, state=waiting("CreateContainerConfigError", "secret missing")
        ),
        "Unschedulable": pod_object(name, scheduled=False, conditions=[UNSCHEDULABLE]),
        "slow": pod_object(name, state=waiting("ContainerCreating")),
        "running": pod_object(name, state=RUNNING, ready=True),
    }[reason]
    return Pod.from_object(obj)


def snap(now, pods, queued=0, reserved=0, workers=(), replicas=None) -> Snapshot:
    replicas = len(pods) if replicas is None else replicas
    live = {w: WorkerState(False, now - 5, now + 15) for w in workers}
    return Snapshot(namespace="ml", name="embed", uid="u1", generation=1, now=now, spec=SPEC,
                    reading=Reading({"gpu": Depth(queued, reserved)}, live),
                    deployment=Deployment(replicas, replicas, 0), pods={p.name: p for p in pods})  # fmt: skip


def step(s: Snapshot, state: FleetState | None = None):
    return plan_tick([s], {KEY: state or FleetState(uid="u1", applied_generation=1)}, {}, None)[KEY]


def conditions(p) -> dict[str, dict]:
    return {c["type"]: c for c in p.state.written["conditions"]}


def replicas(p, current) -> int:
    return p.deployment["spec"]["replicas"] if p.deployment else current


@pytest.mark.parametrize(
    "reason, hint",
    [
        ("ImagePullFailed", "spec.worker.image"),
        ("CrashLoopBackOff", "spec.worker.celeryApp"),
        ("OOMKilled", "limits.memory"),
        ("ContainerConfigError", "Secret or ConfigMap"),
    ],
)
def test_pods_that_cannot_start_show_on_the_queue_warn_once_and_hold_the_fleet(reason, hint):
    pods = [failing(f"embed-workers-{i}", reason) for i in range(3)]
    first = step(snap(100, pods, queued=3))
    c = conditions(first)
    assert (c["WorkersFailing"]["status"], c["WorkersFailing"]["reason"]) == ("True", reason)
    message = c["WorkersFailing"]["message"]
    assert (
        "3 of 3 worker pods cannot start" in message and "pod embed-workers-0" in message and hint in message
    )
    # No worker runs: the queue is not Ready, for the same cause, with the same message.
    assert (c["Ready"]["status"], c["Ready"]["reason"]) == ("False", reason) and message in c["Ready"][
        "message"
    ]
    # One Warning, naming a pod and its state (Ready adds none).
    assert [(e.type, e.reason) for e in first.events] == [("Warning", reason)]
    assert "embed-workers-0" in first.events[0].message
    assert first.status["workers"] == "0/3" and first.status["failingPods"] == 3
    # Declared in the CRD: the API server would drop what is not (and `kubectl get gtq` shows `workers`).
    assert first.status.keys() <= schema()["properties"]["status"]["properties"].keys()
    assert (first.gauges.ready, dict(first.gauges.failing)) == (0, {reason: 3})

    # More tasks arrive: held at 3, no Warning again, whichever pod is now named first.
    state = first.state
    for now, queued in ((101, 10), (102, 40), (130, 80)):
        more = step(snap(now, pods[1:] + [failing("embed-workers-9", reason)], queued=queued), state)
        assert replicas(more, 3) == 3 and more.events == ()
        assert conditions(more)["ScalingLimited"]["reason"] == "WorkersFailing"
        assert "held by 3 worker pods that cannot start" in more.state.decision.reason
        state = more.state


def test_a_pod_merely_slow_to_start_is_no_failure():
    pods = [failing(f"embed-workers-{i}", "slow") for i in range(3)]
    p = step(snap(100, pods, queued=6))
    assert replicas(p, 3) == 6  # scaled as usual
    c = conditions(p)
    assert (c["WorkersFailing"]["status"], c["Ready"]["status"]) == ("False", "True")
    assert all(e.type != "Warning" for e in p.events)


def test_a_fleet_with_some_slow_and_some_failing_pods_is_held():
    pods = [failing("a", "slow"), failing("b", "CrashLoopBackOff")]
    p = step(snap(100, pods, queued=6))
    assert replicas(p, 2) == 2 and conditions(p)["WorkersFailing"]["reason"] == "CrashLoopBackOff"


def test_one_worker_started_clears_the_condition_at_once_and_the_fleet_scales_as_usual():
    pods = [failing(f"embed-workers-{i}") for i in range(3)]
    held = step(snap(100, pods, queued=10))
    assert replicas(held, 3) == 3
    # The image is pushed; embed-workers-0 pulled it and its worker reports; the others still wait out their
    # back-off.
    fixed = [failing("embed-workers-0", "running"), *pods[1:]]
    back = step(snap(101, fixed, queued=10, workers=["embed-workers-0"]), held.state)
    c = conditions(back)
    assert c["Ready"]["status"] == "True"
    assert c["WorkersFailing"]["status"] == "True"  # two pods still cannot start, and it says so
    assert replicas(back, 3) > 3  # but a worker started: scaling goes on
    assert back.status["workers"].startswith("1/")
    # All started: the condition clears, with one Normal Event.
    started = [failing(f"embed-workers-{i}", "running") for i in range(3)]
    done = step(snap(102, started, queued=10, workers=[p.name for p in started]), back.state)
    assert conditions(done)["WorkersFailing"]["status"] == "False"
    assert [e.reason for e in done.events] == ["WorkersStarted"] and done.state.warned == frozenset()
    # A new episode warns again.
    again = step(snap(103, [failing("embed-workers-7")], queued=1), done.state)
    assert [e.reason for e in again.events] == ["ImagePullFailed"]


def test_a_restarted_operator_does_not_warn_again_of_an_episode_its_status_shows():
    pods = [failing("embed-workers-0", "CrashLoopBackOff")]
    first = step(snap(100, pods, queued=1))
    assert [e.reason for e in first.events] == ["CrashLoopBackOff"]
    restarted = step(snap(200, pods, queued=1), FleetState.first("u1", first.state.written))
    assert restarted.events == () and conditions(restarted)["WorkersFailing"]["reason"] == "CrashLoopBackOff"
    # Another cause is another episode.
    other = step(snap(201, [failing("embed-workers-0", "OOMKilled")], queued=1), restarted.state)
    assert [e.reason for e in other.events] == ["OOMKilled"]


def test_a_fleet_that_cannot_start_still_scales_down():
    pods = [failing(f"embed-workers-{i}", "CrashLoopBackOff") for i in range(4)]
    held = step(snap(100, pods, queued=4))
    idle = step(snap(101, pods, queued=0), held.state)
    assert replicas(idle, 4) == 0 and idle.scale_event.reason == "ScaledDown"


def test_a_crash_among_ready_workers_holds_scale_ups_until_it_is_ready_again():
    pods = [failing("a", "running"), failing("b", "running"), failing("c", "OOMKilled")]
    first = step(snap(100, pods, queued=6, reserved=2, workers=["a", "b"]))
    c = conditions(first)
    assert (c["WorkersFailing"]["reason"], c["Ready"]["status"]) == ("OOMKilled", "True")
    assert replicas(first, 3) == 3 and [e.reason for e in first.events] == ["OOMKilled"]
    assert first.status["workers"] == "2/3"
    back = [failing("a", "running"), failing("b", "running"), failing("c", "running")]
    then = step(snap(101, back, queued=6, reserved=2, workers=["a", "b", "c"]), first.state)
    assert replicas(then, 3) > 3 and conditions(then)["WorkersFailing"]["status"] == "False"


def test_pods_waiting_for_a_node_are_shown_but_left_to_the_gpu_capacity_limit():
    pods = [failing("a", "running"), failing("b", "Unschedulable")]
    p = step(snap(100, pods, queued=8, workers=["a"]))
    c = conditions(p)
    assert (c["WorkersFailing"]["status"], c["WorkersFailing"]["reason"]) == ("True", "Unschedulable")
    assert "1 of 2 worker pods wait for a node" in c["WorkersFailing"]["message"]
    assert "Insufficient nvidia.com/gpu" in c["WorkersFailing"]["message"]
    assert c["Ready"]["status"] == "True" and c["ScalingLimited"]["reason"] == "GpuCapacity"
    assert [e.reason for e in p.events] == ["Unschedulable"]


def test_the_broker_unread_keeps_ready_unknown():
    pods = [failing("a")]
    s = replace(snap(100, pods), reading=None, broker_error="down")
    p = step(s)
    assert p.gauges.ready is None and conditions(p)["Ready"]["reason"] == "BrokerUnreachable"
    assert p.status["workers"] == "0/1"  # the Deployment's ready pods, while the broker cannot say


def test_failing_pods_are_one_series_per_reason_and_go_when_none_is_left():
    def value(reason):
        return REGISTRY.get_sample_value(
            "gpufleet_failing_pods", {"namespace": "m", "gputaskqueue": "q", "reason": reason}
        )

    metrics.set_failing("m", "q", {"ImagePullFailed": 2})
    assert (value("ImagePullFailed"), value("CrashLoopBackOff")) == (2.0, None)
    metrics.set_failing("m", "q", {"CrashLoopBackOff": 1})
    assert (value("ImagePullFailed"), value("CrashLoopBackOff")) == (None, 1.0)
    metrics.forget("m", "q")
    assert value("CrashLoopBackOff") is None
