"""The tick's plan, with no cluster and no broker: snapshots in, everything that should then be true out.

Each test walks one fleet through a few ticks, feeding every plan's state into the next, as the operator does.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from gpufleet import plan as plan_module
from gpufleet.model import Deployment, Depth, FleetState, Outcome, Pod, Reading, Snapshot, WorkerState
from gpufleet.plan import plan_tick, settled
from gpufleet.spec import parse_spec

SPEC = parse_spec(
    {
        "broker": {"url": "redis://redis:6379/0"},
        "queues": ["gpu"],
        "worker": {"image": "w:1"},
        "scaling": {"maxReplicas": 6, "scaleDownStabilizationSeconds": 0, "idleSecondsBeforeZero": 0},
    }
)
KEY = ("ml", "embed")


def snap(now=100.0, queued=0, reserved=0, replicas=1, workers=None, pods=None, **kw) -> Snapshot:
    reading = Reading({"gpu": Depth(queued, reserved)}, workers or {})
    fields = dict(namespace="ml", name="embed", uid="u1", generation=1, now=now, spec=SPEC, reading=reading,
                  deployment=Deployment(replicas, replicas, replicas), pods=pods or {})  # fmt: skip
    return Snapshot(**(fields | kw))


def step(s: Snapshot, state: FleetState | None = None, budget=None, resting=None):
    plans = plan_tick([s], {KEY: state or FleetState(uid="u1")}, resting or {}, budget)
    return plans[KEY]


def conditions(p) -> dict[str, dict]:
    return {c["type"]: c for c in p.state.written["conditions"]}


def test_a_new_fleet_gets_its_deployment_at_min_replicas_then_at_once_one_status():
    p = step(snap(now=100, deployment=None))
    assert p.deployment["metadata"]["name"] == "embed-workers" and p.deployment["spec"]["replicas"] == 0
    assert p.scale_event is None and p.annotations == {}
    # No status yet: it is written once, with the Deployment, at the next tick, which is due at once.
    assert p.status is None and p.state.next_probe == 100
    then = step(snap(now=100.05, replicas=0), p.state)
    assert then.deployment is None and then.status["observedGeneration"] == 1 and then.status["queued"] == 0
    assert then.status["deployment"] == "embed-workers" and then.status["desiredReplicas"] == 0
    assert conditions(then)["BrokerReachable"]["status"] == "True"


def test_steady_state_writes_nothing():
    first = step(snap(queued=1))
    assert first.deployment is not None  # the spec's generation is applied once
    second = step(snap(now=101, queued=1), first.state)
    assert (second.deployment, second.status, second.events, second.scale_event) == (None, None, (), None)
    assert second.gauges.direction == "hold"


def test_scale_up_applies_replicas_and_posts_one_event_with_the_reason():
    p = step(snap(queued=4), FleetState(uid="u1", applied_generation=1))
    assert p.deployment["spec"]["replicas"] == 4
    assert p.scale_event.reason == "ScaledUp" and "scale up 1 -> 4" in p.scale_event.message
    assert p.status["desiredReplicas"] == 4 and p.status["lastScaleTime"] == "1970-01-01T00:01:40Z"
    assert p.gauges.direction == "up" and p.gauges.desired == 4


def test_scale_in_marks_idle_pods_cheapest_before_the_deployment_shrinks():
    workers = {
        "a": WorkerState(True, 90, 200, 1),
        "b": WorkerState(False, 50, 200),
        "c": WorkerState(False, 80, 200),
    }
    pods = {n: Pod(n, True, False, False, None) for n in workers}
    p = step(
        snap(replicas=3, reserved=1, workers=workers, pods=pods), FleetState(uid="u1", applied_generation=1)
    )
    assert p.deployment["spec"]["replicas"] == 1
    assert int(p.annotations["b"]) < int(p.annotations["c"]) < 0 < int(p.annotations["a"])
    # The annotations already carried are not written again.
    carried = {n: replace(pod, deletion_cost=p.annotations[n]) for n, pod in pods.items()}
    again = step(
        snap(replicas=3, reserved=1, workers=workers, pods=carried),
        FleetState(uid="u1", applied_generation=1),
    )
    assert again.annotations == {}


def test_broker_outage_holds_warns_once_backs_off_and_recovers():
    ok = step(snap(replicas=2, queued=2), FleetState(uid="u1", applied_generation=1))
    down = step(
        snap(now=101, replicas=2, reading=None, broker_error="redis://r:6379: ConnectionError"), ok.state
    )
    assert down.deployment is None and "holding 2" in down.status["reason"]
    assert [(e.type, e.reason) for e in down.events] == [("Warning", "BrokerUnreachable")]
    assert conditions(down)["BrokerReachable"]["status"] == "False"
    assert conditions(down)["Ready"]["reason"] == "BrokerUnreachable"
    assert down.state.next_probe == 103 and down.gauges.probe_failed
    still = step(
        snap(now=103, replicas=2, reading=None, broker_error="redis://r:6379: ConnectionError"), down.state
    )
    assert still.events == () and still.state.next_probe == 103 + 4 and still.state.reresolve
    back = step(snap(now=107, replicas=2, queued=2), still.state)
    assert [(e.type, e.reason) for e in back.events] == [("Normal", "BrokerReachable")]
    assert conditions(back)["Ready"]["status"] == "True" and back.state.failures == 0
    assert conditions(back)["BrokerReachable"]["lastTransitionTime"] == "1970-01-01T00:01:47Z"


def test_missing_secret_shows_its_reason_and_warns_once():
    problem = ("SecretNotFound", "Secret ml/redis (key 'pw') named by spec.broker is missing")
    s = snap(reading=None, secret_problem=problem, broker_error=problem[1])
    p = step(s, FleetState(uid="u1", applied_generation=1))
    c = conditions(p)
    assert c["BrokerReachable"]["reason"] == "SecretNotFound" and c["Ready"]["reason"] == "SecretNotFound"
    assert sorted(e.reason for e in p.events) == ["BrokerUnreachable", "SecretNotFound"]
    assert step(replace(s, now=103), p.state).events == ()


def test_invalid_spec_shows_its_field_warns_once_and_rests_until_a_new_generation():
    s = snap(spec=None, spec_error="spec.worker.pool: unknown pool", reading=None)
    p = step(s)
    assert p.deployment is None and p.state.next_probe == math.inf
    c = conditions(p)
    assert (c["Ready"]["status"], c["Ready"]["reason"], c["Ready"]["observedGeneration"]) == (
        "False",
        "InvalidSpec",
        1,
    )
    assert c["BrokerReachable"]["status"] == "Unknown" and "ScalingLimited" not in c
    assert [e.message for e in p.events] == ["spec.worker.pool: unknown pool"]
    assert step(s, p.state).events == ()
    fixed = step(replace(s, generation=2, spec=SPEC, spec_error=None, reading=Reading({}, {})), p.state)
    assert fixed.deployment is not None and conditions(fixed)["Ready"]["status"] == "True"


def test_a_refused_deployment_is_shown_and_not_retried_until_the_spec_changes():
    state = FleetState(uid="u1", rejected=(1, "spec.template: Invalid value"))
    p = step(snap(queued=3), state)
    assert p.deployment is None and p.scale_event is None
    assert conditions(p)["Ready"]["reason"] == "DeploymentRejected"
    assert [e.reason for e in p.events] == ["DeploymentRejected"]
    assert step(snap(queued=3, generation=2), state).deployment is not None


def test_pods_that_cannot_be_created_warn_once_per_episode_and_clear():
    failing = Deployment(2, 0, 0, 'pods "embed-workers-x1" is forbidden: violates PodSecurity "restricted"')
    p = step(snap(queued=2, replicas=2, deployment=failing), FleetState(uid="u1", applied_generation=1))
    c = conditions(p)["Ready"]
    assert (c["status"], c["reason"]) == ("False", "PodsNotCreated") and "PodSecurity" in c["message"]
    assert [e.reason for e in p.events] == ["PodsNotCreated"]
    other_pod = replace(failing, replica_failure=failing.replica_failure.replace("x1", "y2"))
    again = step(snap(now=101, queued=2, replicas=2, deployment=other_pod), p.state)
    assert again.events == ()  # a new pod name in the message is the same episode
    fixed = step(snap(now=102, queued=2, replicas=2), again.state)
    assert conditions(fixed)["Ready"]["status"] == "True" and fixed.state.warned == frozenset()


def test_a_new_generation_reapplies_the_deployment_at_its_current_replicas():
    p = step(snap(replicas=3, queued=3, generation=2), FleetState(uid="u1", applied_generation=1))
    assert p.deployment["spec"]["replicas"] == 3 and p.scale_event is None


def test_a_restarted_operator_continues_from_the_written_status():
    written = step(snap(queued=1), FleetState(uid="u1", applied_generation=1)).state.written
    p = step(snap(now=500, queued=1), FleetState.first("u1", written))
    assert p.status is None and p.events == ()  # the same status, the same transition times: nothing to write
    assert p.deployment is not None  # the Deployment is applied once after a start (an unchanged apply)


def test_a_queue_no_longer_listed_is_removed_from_the_status():
    first = step(snap(queued=1))
    two = replace(snap(now=110, queued=1), reading=Reading({"gpu": Depth(1, 0), "old": Depth(0, 0)}, {}))
    second = step(two, first.state)
    third = step(snap(now=120, queued=1), second.state)
    assert third.status["queues"] == {"old": None, "gpu": {"queued": 1, "reserved": 0}}


def test_budget_demand_and_decision_come_from_one_pass(monkeypatch):
    other = ("ml", "other")
    other_state = FleetState(uid="u2", decision=step(snap(queued=4)).state.decision)  # last asked for 4
    calls = []
    real = plan_module.decide
    monkeypatch.setattr(plan_module, "decide", lambda *a, **k: calls.append(1) or real(*a, **k))
    plans = plan_tick([snap(queued=6)], {KEY: FleetState(uid="u1", applied_generation=1), other: other_state},
                      {other: SPEC}, gpu_budget=5)  # fmt: skip
    p = plans[KEY]
    assert len(calls) == 1
    # 5 GPUs shared by two equal fleets that each want more: 3 and 2, the odd one to the name that sorts first.
    assert p.deployment["spec"]["replicas"] == 3
    assert p.status["gpuShare"]["budget"] == 5 and conditions(p)["ScalingLimited"]["reason"] == "GpuBudget"


@pytest.mark.parametrize(
    "reading, replicas, expected",
    [
        (None, 2, {"direction": "hold", "probe_failed": True, "busy": None}),
        (
            Reading({"gpu": Depth(0, 1)}, {"a": WorkerState(True, 0, 999, 1)}),
            1,
            {"direction": "hold", "busy": 1},
        ),
    ],
)
def test_gauges(reading, replicas, expected):
    g = step(snap(replicas=replicas, reading=reading, broker_error=None if reading else "down")).gauges
    assert {k: getattr(g, k) for k in expected} == expected


def test_the_messages_of_deleted_failed_and_expired_workers_go_back():
    workers = {n: WorkerState(True, 90, 200, 1) for n in ("deleted", "failed", "running")}
    pods = {
        "failed": Pod("failed", True, False, False, None, failed=True),
        "running": Pod("running", True, False, False, None),
    }
    pods["cut-off"] = Pod("cut-off", True, False, False, None)
    pods["crashed"] = Pod("crashed", True, False, False, None, failed=True)
    reading = Reading({"gpu": Depth(0, 3)}, workers, stale=("expired", "cut-off", "crashed"))
    p = step(snap(replicas=2, reading=reading, pods=pods, gone=frozenset({"deleted", "long-gone"})))
    # Seen deleted or failed: at once; expired: only if still expired when the script runs, and only when its
    # pod is gone or failed: a running pod's expired entry is a worker cut off from the broker, perhaps busy.
    assert p.restore == (("deleted", False), ("failed", False), ("expired", True), ("crashed", True))
    assert (
        step(snap(replicas=2, reading=None, broker_error="down", gone=frozenset({"deleted"}))).restore == ()
    )


def test_busy_workers_are_protected_at_once_and_released_after_a_quiet_spell():
    def at(now, busy, since, protected):
        pods = {"w": Pod("w", True, False, False, None, protected=protected)}
        reading = Reading({"gpu": Depth(0, int(busy))}, {"w": WorkerState(busy, since, now + 15, int(busy))})
        return step(
            snap(now=now, reading=reading, pods=pods), FleetState(uid="u1", applied_generation=1)
        ).protect

    assert at(100, busy=True, since=99, protected=False) == {"w": True}
    assert at(101, busy=True, since=99, protected=True) == {}  # a worker that stays busy costs no write
    assert at(105, busy=False, since=104, protected=True) == {}  # idle between two short tasks: kept
    assert at(120, busy=False, since=104, protected=True) == {"w": False}
    assert at(120, busy=False, since=104, protected=False) == {}
    gone = step(snap(pods={"w": Pod("w", True, False, False, None, protected=True)})).protect
    assert gone == {"w": False}  # no entry any more: nothing to protect


def test_another_writer_of_deletion_costs_is_shown_once():
    pods = {"w": Pod("w", True, False, False, None, cost_contested=True)}
    p = step(snap(pods=pods))
    c = conditions(p)["ScaleInProtected"]
    assert (c["status"], c["reason"]) == ("False", "DeletionCostContested") and "karpenter" in c["message"]
    assert [e.reason for e in p.events] == ["DeletionCostContested"]
    assert step(snap(now=101, pods=pods), p.state).events == ()
    assert conditions(step(snap(now=102), p.state))["ScaleInProtected"]["status"] == "True"


def test_the_busy_pdb_is_applied_with_the_deployment():
    p = step(snap(deployment=None))
    assert p.pdb["kind"] == "PodDisruptionBudget" and p.pdb["spec"]["maxUnavailable"] == 0
    assert p.pdb["spec"]["selector"]["matchLabels"]["gpufleet.dev/busy"] == "true"
    assert step(snap(queued=1), p.state).pdb is None
    scaled = step(snap(queued=4), p.state)
    assert (
        scaled.deployment["spec"]["replicas"] == 4 and scaled.pdb is None
    )  # a scale alone: the Deployment only
    assert step(snap(queued=4, generation=2), p.state).pdb is not None  # a new spec: both


def test_live_figures_are_refreshed_every_few_seconds_and_changes_that_matter_at_once():
    first = step(snap(queued=3, replicas=3), FleetState(uid="u1", applied_generation=1))
    assert first.status is not None
    # Two of the three tasks started: the same load, other figures (and another wording of the reason).
    started = step(snap(now=101, queued=1, reserved=2, replicas=3), first.state)
    assert started.status is None and started.state.written == first.state.written  # figures alone: not yet
    later = step(snap(now=106, queued=1, reserved=2, replicas=3), started.state)
    assert later.status["reserved"] == 2 and later.state.written_at == 106
    ready = step(snap(now=107, queued=1, reserved=2, deployment=Deployment(3, 3, 2)), later.state)
    assert ready.status is not None and ready.status["readyReplicas"] == 2  # the fleet changed: at once


def test_the_wait_target_gets_the_measured_start_up_service_time_and_arrivals_and_the_status_shows_them():
    # Pod "a" was created at 40 and its worker started at 95; it finishes a task in 10 s while the queue grows.
    pods = {
        "a": Pod("a", True, False, False, None, created=40.0),
        "b": Pod("b", True, False, False, None, created=98.0),
    }
    state = FleetState(uid="u1", applied_generation=1)
    busy = {"a": WorkerState(True, 95.0, 300.0, active=1, done=0)}
    first = step(snap(now=100, queued=2, reserved=1, replicas=2, workers=busy, pods=pods), state)
    assert first.state.meter.startup_s == 55.0 and first.status["startupSeconds"] == "55"
    done = {"a": WorkerState(True, 108.0, 300.0, active=1, done=1)}
    second = step(snap(now=110, queued=4, reserved=1, replicas=2, workers=done, pods=pods), first.state)
    meter = second.state.meter
    assert meter.service_s == 10.0  # one task running for 10 s, one finished
    assert meter.arrived == 3.0  # one finished, and queued + reserved grew by 2
    assert second.state.written["serviceSeconds"] == "10"
    assert (
        "55s start-up" in second.state.written["reason"] and "10s per task" in second.state.written["reason"]
    )


def test_the_observation_counts_ready_and_starting_pods_and_slots(monkeypatch):
    seen = []
    real = plan_module.decide

    def spy(spec, obs, history, recommended=None):
        seen.append(obs)
        return real(spec, obs, history, recommended)

    monkeypatch.setattr(plan_module, "decide", spy)
    pods = {
        "up": Pod("up", True, False, False, None, created=10.0),
        "new": Pod("new", True, False, False, None, created=90.0),
        "going": Pod("going", True, False, True, None, created=5.0),
        "no-gpu": Pod("no-gpu", False, True, False, None, created=20.0),
    }
    workers = {"up": WorkerState(False, 50.0, 300.0), "going": WorkerState(False, 50.0, 300.0)}
    step(snap(now=100, replicas=3, workers=workers, pods=pods), FleetState(uid="u1", applied_generation=1))
    (obs,) = seen
    # "going" is being deleted; "no-gpu" waits for a node, so it is not counted as about to start.
    assert (obs.ready, obs.starting, obs.slots) == (1, (10.0,), 1)


def test_a_restarted_operator_reads_the_start_up_back_from_the_status():
    state = FleetState.first("u1", {"startupSeconds": "62", "reason": "x"})
    p = step(snap(now=100, queued=1), replace(state, applied_generation=1))
    assert p.state.meter.startup_s == 62.0


def test_the_policy_remembers_from_tick_to_tick():
    # First seen idle at 100, busy at 110, idle from 111: the fleet keeps its pod until idleSecondsBeforeZero has
    # passed since the last busy tick (110), not since the first one seen, and no longer.
    spec = replace(SPEC, scaling=replace(SPEC.scaling, idle_seconds_before_zero=30))
    state = FleetState(uid="u1", applied_generation=1)
    for now, reserved in ((100, 0), (110, 1), (111, 0), (135, 0)):
        p = step(snap(now=now, reserved=reserved, replicas=1, spec=spec), state)
        state = p.state
        assert p.state.decision.replicas == 1, p.state.decision.reason
    assert state.history.last_busy == 110
    gone = step(snap(now=141, replicas=1, spec=spec), state)
    assert gone.state.decision.replicas == 0 and "for 30s" in gone.state.decision.reason


def test_an_idle_fleet_at_its_floor_rests_until_something_changes():
    first = step(snap(now=100, replicas=0), FleetState(uid="u1", applied_generation=1))
    assert first.gauges is not None and first.state.planned_at == 100
    resting = step(snap(now=101, replicas=0), first.state)
    assert plan_module.at_rest(snap(now=101, replicas=0), first.state)
    assert (resting.deployment, resting.status, resting.events, resting.gauges) == (None, None, (), None)
    assert first.writes and not resting.writes  # its status first; then nothing to send anywhere
    assert resting.state.next_probe == plan_module.next_poll(101, SPEC.scaling.poll_interval_seconds, "u1")
    assert resting.state.planned_at == 100 and resting.state.decision == first.state.decision

    # A task queued is planned at once, and scales up.
    woken = step(snap(now=102, queued=1, replicas=0), resting.state)
    assert woken.deployment["spec"]["replicas"] == 1 and woken.gauges.direction == "up"


@pytest.mark.parametrize(
    "changed",
    [
        {"now": 100 + plan_module.REPLAN_SECONDS},  # time alone: planned again every REPLAN_SECONDS
        {"deployment": Deployment(1, 1, 1)},  # someone scaled the Deployment
        {"generation": 2},  # a new spec
        {"pods": {"w-1": Pod("w-1", True, False, False, None)}},  # a pod that the fleet did not ask for
        {"reading": None, "broker_error": "connection refused"},  # the broker went away
        {"reading": Reading({"gpu": Depth(0, 0)}, {}, stale=("w-0",))},  # a dead worker's entry to put back
    ],
)
def test_a_fleet_at_rest_is_planned_again_when_anything_it_reads_changes(changed):
    first = step(snap(now=100, replicas=0), FleetState(uid="u1", applied_generation=1))
    later = snap(now=101, replicas=0) if "now" not in changed else snap(replicas=0)
    assert not plan_module.at_rest(replace(later, **changed), first.state)


def test_a_fleet_is_not_at_rest_above_its_floor_or_before_its_deployment_is_applied():
    held = step(snap(now=100, replicas=2), FleetState(uid="u1", applied_generation=1))
    assert held.state.decision.replicas < 2  # idle above its floor: it scales down, never rests there
    new = step(snap(now=100, replicas=0), FleetState(uid="u1"))  # the Deployment applied this tick
    assert new.deployment is not None
    assert plan_module.at_rest(snap(now=101, replicas=0), new.state)  # applied: rests from the next tick
    assert not plan_module.at_rest(snap(now=101, replicas=0), replace(new.state, applied_generation=None))


def test_fleets_are_probed_each_at_its_own_phase_of_the_poll():
    poll = 1.0
    first = plan_module.next_poll(100.37, poll, "u1")
    assert 100.37 < first <= 101.37
    assert plan_module.next_poll(first, poll, "u1") == pytest.approx(first + poll)  # every poll after that
    assert plan_module.next_poll(first + 0.2, poll, "u1") == pytest.approx(
        first + poll
    )  # a late tick: same slot
    # A thousand fleets applied together: spread over the poll, not all in one tick.
    slots = [int((plan_module.next_poll(100.0, poll, f"uid-{i}") % poll) * 20) for i in range(1000)]
    assert max(slots.count(s) for s in range(20)) < 100


def test_what_apply_did_is_what_the_next_plan_starts_from():
    """apply only writes and says what happened (an Outcome); `settled` makes the next state of it."""
    before = FleetState(uid="u1", generation=1, applied_generation=1, next_probe=100)
    p = step(snap(queued=4), before)
    assert p.writes and not p.at_rest and settled(before, p, Outcome()) == p.state
    # The Deployment refused: nothing the plan says holds; planned again at once, showing the refusal.
    refused = settled(before, p, Outcome(rejected="spec.template: Invalid value"))
    assert refused.rejected == (1, "spec.template: Invalid value") and refused.applied_generation is None
    assert refused.next_probe == 0.0 and refused.written == before.written
    # A write failed: the fleet goes on from where it was (the controller retries it at its next poll), keeping
    # only what it measured.
    assert settled(before, p, Outcome(failed=RuntimeError("503"))) == replace(before, meter=p.state.meter)
    # Tasks put back: the next plan tells it, once, and the fleet is not at rest until it has.
    put_back = settled(before, p, Outcome(restored=(("w-1", 2),)))
    assert put_back.next_probe == 0.0  # told at once
    told = step(snap(now=101, queued=4, replicas=4), put_back)
    assert [(e.reason, e.message) for e in told.events if e.reason == "TasksRestored"] == [
        (
            "TasksRestored",
            "put back 2 task(s) held by worker w-1, which is gone; they run again on another worker",
        )
    ]
    assert told.state.restored == () and not any(
        e.reason == "TasksRestored" for e in step(snap(now=102), told.state).events
    )


def test_a_plan_says_what_it_is():
    first = step(snap(replicas=0, queued=0))
    rest = step(snap(now=101, replicas=0), first.state)
    assert rest.at_rest and not rest.writes and rest.gauges is None
    orphans = step(snap(replicas=1, reading=Reading({"gpu": Depth(0, 0)}, {"dead": WorkerState(True, 90, 200, 1)}),
                        gone=frozenset({"dead"})))  # fmt: skip
    assert orphans.needs_broker and orphans.writes and not orphans.at_rest


def test_pod_writes_carry_the_busy_cost_unless_a_scale_in_names_another():
    busy = WorkerState(True, 99, 200, 1)
    held = step(snap(now=100, reserved=1, replicas=1, workers={"busy": busy}, pods={"busy": Pod("busy", True, False, False, None)}),
                FleetState(uid="u1", applied_generation=1))  # fmt: skip
    assert held.annotations == {} and held.pods["busy"].known == {"protected": True, "deletion_cost": "1000"}
    assert held.pods["busy"].metadata["labels"] == {"gpufleet.dev/busy": "true"}
    pods = {n: Pod(n, True, False, False, None) for n in ("busy", "idle")}
    workers = {"busy": busy, "idle": WorkerState(False, 50, 200, 0)}
    down = step(snap(now=100, reserved=1, replicas=2, workers=workers, pods=pods),
                FleetState(uid="u1", applied_generation=1))  # fmt: skip
    assert down.annotations and list(down.pods) == sorted(down.pods)
    for name, cost in down.annotations.items():  # a scale-in names each pod's cost, the busy one's too
        assert down.pods[name].known["deletion_cost"] == cost


def test_the_series_of_a_queue_dropped_from_the_spec_go():
    two = replace(SPEC, queues=("gpu", "old"))
    first = step(snap(spec=two, reading=Reading({"gpu": Depth(1, 0), "old": Depth(2, 0)}, {})))
    assert first.gauges.dropped == ()
    second = step(snap(now=101, queued=1), first.state)
    assert second.gauges.dropped == ("old",)


def _service_after(failing) -> float:
    """The service time measured from 3 workers that start at t = 1 s and run tasks of 4 s back to back, read
    every 0.5 s for 20 s, where the writes of the ticks at the times `failing(t)` are refused (the API server
    away)."""
    state = FleetState(uid="u1", generation=1, applied_generation=1)
    for i in range(41):
        t = i * 0.5
        up = t >= 1.0
        workers = {
            pod: WorkerState(True, 1.0, 1e12, active=1, done=int((t - 1) // 4))
            for pod in ("a", "b", "c")
            if up
        }
        plan = step(snap(now=1000 + t, replicas=3, queued=9, reserved=3 if up else 0, workers=workers), state)
        state = settled(state, plan, Outcome(failed=RuntimeError("503")) if failing(t) else Outcome())
    return state.meter.service_s


def test_tasks_seen_while_writes_fail_are_measured_as_they_ran():
    """A tick whose writes were refused keeps its reading: the workers that started and the tasks they ran while
    the API server was away are measured as they ran. Dropped, the next reading counted the tasks running at the
    last reading kept (none, before the workers started) as running throughout: 4-s tasks read as 1.3 s."""
    assert _service_after(lambda t: False) == pytest.approx(4.0, rel=0.1)
    assert _service_after(lambda t: 0.5 <= t < 12) == pytest.approx(4.0, rel=0.1)
