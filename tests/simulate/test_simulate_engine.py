"""The engine and the three policies on tiny traces whose outcome is worked out by hand in each test."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpufleet import policy as real_policy
from gpufleet_tools.simulate import policies
from gpufleet_tools.simulate.engine import Setup, simulate
from gpufleet_tools.simulate.metrics import summarize
from gpufleet_tools.simulate.policies import (
    Gpufleet,
    Keda,
    KedaSettings,
    Static,
    fleet_policies,
    gpufleet_spec,
)
from gpufleet_tools.simulate.traces import Task, Trace

SPEC = gpufleet_spec(
    {}
)  # the CRD's defaults: poll 1 s, target 1, scale-down window 60 s, zero after 300 s idle


def trace(*tasks: Task) -> Trace:
    return Trace("t", tuple(tasks))


def waits(run) -> list[float]:
    return [s - t.arrival_s for t, s in zip(run.trace.tasks, run.started, strict=True)]


@pytest.mark.parametrize(
    "make", [lambda: Gpufleet(SPEC), lambda: Keda(KedaSettings())], ids=["gpufleet", "keda"]
)
def test_a_task_reaching_a_fleet_at_zero_waits_for_one_pod_start(make):
    # Both poll at t=0, after the arrival: one pod, ready 10 s later, runs the task.
    run = simulate(trace(Task(0, 5)), make(), Setup(startup_s=10))
    assert waits(run) == [10]
    assert run.finished == [15]
    assert run.interrupted == 0


def test_a_static_fleet_has_no_start_up_wait():
    # Two warm pods, three tasks at once: two start at once, the third when a pod frees.
    run = simulate(trace(Task(0, 10), Task(0, 10), Task(0, 10)), Static(2), Setup(startup_s=60))
    assert waits(run) == [0, 0, 10]
    assert run.scale_events == 0
    assert run.pod_seconds == 2 * 20  # up from time 0, down at the last completion


def test_keda_polling_interval_shows_as_extra_wait():
    # Arrival at t=1: gpufleet polls every second and scales at t=1; KEDA's next poll is at t=30.
    setup = Setup(startup_s=10)
    assert waits(simulate(trace(Task(1, 5)), Gpufleet(SPEC), setup)) == [10]
    assert waits(simulate(trace(Task(1, 5)), Keda(KedaSettings()), setup)) == [29 + 10]


def test_keda_cooldown_kills_a_lone_long_task_and_does_it_again_while_gpufleet_lets_it_finish():
    # KEDA: active at the poll of t=0 only (the task leaves the list at 10, when the pod is ready); after
    # 300 s inactive it scales to zero at the poll of t=330 and kills the task; the task is back in the list,
    # KEDA wakes at 360, the pod takes it at 370, and the poll of t=690 kills it again. Gives up at the stall
    # limit with the task unfinished.
    long_task, setup = trace(Task(0, 600)), Setup(startup_s=10, stall_s=1000)
    keda = simulate(long_task, Keda(KedaSettings()), setup)
    assert keda.interrupted == 2
    assert keda.lost_work_s == (330 - 10) + (690 - 370)
    assert keda.finished == [None]
    assert summarize(keda)["drain_s"] is None and summarize(keda)["unfinished"] == 1
    mine = simulate(long_task, Gpufleet(SPEC), setup)
    assert mine.interrupted == 0
    assert mine.finished == [610]


SCALE_IN = trace(Task(0, 100), Task(0, 20), Task(0, 20), Task(50, 1000))


def test_keda_scale_in_kills_the_newest_pod_whatever_it_runs_and_gpufleet_removes_only_idle_pods():
    # listLength 1, no cooldown, start-up 0. KEDA wakes pod 0 (task 0) at t=0; the HPA asks for 2 at once:
    # pod 1 runs task 1, then task 2 (20 -> 40); task 3 arrives at 50 and goes to idle pod 1. The HPA's
    # recommendation of 2 leaves its 300 s window at t=315: 2 -> 1, and the ReplicaSet deletes the newest
    # pod, pod 1, in the middle of task 3. Task 3 goes back to the front of the queue and idle pod 0 runs it.
    keda = simulate(SCALE_IN, Keda(KedaSettings(cooldown_s=1e6, list_length=1)), Setup(startup_s=0))
    assert keda.interrupted == 1
    assert keda.lost_work_s == 315 - 50
    assert keda.started == [0, 0, 20, 315]
    assert keda.finished[3] == 1315
    mine = simulate(SCALE_IN, Gpufleet(SPEC), Setup(startup_s=0))
    assert mine.interrupted == 0
    assert mine.finished == [100, 20, 20, 1050]
    assert mine.scale_events == 4  # 0 -> 3, then one pod at a time, idle ones only, down to 0


def test_a_killed_task_comes_back_after_the_redelivery_delay():
    keda = simulate(
        SCALE_IN, Keda(KedaSettings(cooldown_s=1e6, list_length=1)), Setup(startup_s=0, redelivery_s=100)
    )
    assert keda.interrupted == 1
    assert keda.started[3] == 315 + 100


def test_a_grace_period_lets_a_deleted_pod_finish_its_task_and_bills_it_meanwhile():
    setup = Setup(startup_s=0, grace_s=2000)
    keda = simulate(SCALE_IN, Keda(KedaSettings(cooldown_s=1e6, list_length=1)), setup)
    assert keda.interrupted == 0
    assert keda.finished[3] == 1050
    # pod 0 lives the whole run; pod 1 from 0 to the end of task 3 although deleted at 315
    assert keda.pod_seconds == keda.end_s + 1050


def test_keda_reads_only_the_queue_own_list_and_never_sees_a_lower_priority_task():
    # Priority 6 goes to kombu's list "q\x06\x166", which KEDA's LLEN of "q" does not count.
    hidden = trace(Task(0, 5, priority=6))
    keda = simulate(hidden, Keda(KedaSettings()), Setup(startup_s=10, stall_s=600))
    assert keda.finished == [None] and keda.scale_events == 0
    assert simulate(hidden, Gpufleet(SPEC), Setup(startup_s=10)).finished == [15]


def test_a_higher_priority_is_served_first_and_fifo_within_one():
    # One pod, busy with the first task until 10, while four more arrive.
    waiting = [Task(1, 10, priority=6), Task(1, 10, priority=0), Task(1, 10, priority=9), Task(1, 10)]
    run = simulate(trace(Task(0, 10), *waiting), Static(1), Setup())
    assert run.started == [0, 30, 10, 40, 20]


def test_gpufleet_runs_the_operator_policy_itself_with_the_idle_workers(monkeypatch):
    assert policies.decide is real_policy.decide
    seen = []

    def spy(spec, obs, history):
        seen.append(obs)
        return real_policy.decide(spec, obs, history)

    monkeypatch.setattr(policies, "decide", spy)
    simulate(SCALE_IN, Gpufleet(SPEC), Setup(startup_s=0))
    at_50 = next(o for o in seen if o.now == 50)
    assert (at_50.depth.queued, at_50.depth.reserved, at_50.current, at_50.idle_workers) == (0, 2, 3, 1)


def test_figures_of_a_run():
    run = simulate(trace(Task(0, 10), Task(0, 10), Task(0, 10)), Static(2), Setup(gpus=2))
    f = summarize(run)
    assert f["gpu_hours"] == round(2 * 20 * 2 / 3600, 3)
    assert (f["wait_p50_s"], f["wait_p99_s"]) == (0, pytest.approx(9.8))
    assert (f["drain_s"], f["interrupted"], f["scale_events"], f["unfinished"]) == (20, 0, 0, 0)


# Tasks KEDA can finish: on its own list, and shorter than the 270 s it lets a lone task run before its
# cooldown kills it (the two tests above show what happens otherwise).
tasks_strategy = st.lists(
    st.builds(Task, st.floats(0, 1500), st.floats(0.5, 250)), min_size=1, max_size=25
).map(lambda ts: Trace("h", tuple(sorted(ts, key=lambda t: t.arrival_s))))


@settings(max_examples=40, deadline=None)
@given(
    tasks_strategy,
    st.sampled_from([0.0, 30.0, 120.0]),
    st.integers(1, 3),
    st.sampled_from([0.0, 15.0]),
    st.sampled_from([0.0, 30.0]),
    st.integers(1, 4),
)
def test_every_task_completes_exactly_once_under_every_policy(
    tasks, startup, slots, redelivery, grace, max_replicas
):
    setup = Setup(startup_s=startup, slots=slots, redelivery_s=redelivery, grace_s=grace)
    spec = gpufleet_spec({"maxReplicas": str(max_replicas)})
    for policy in fleet_policies(spec, KedaSettings(max_replica_count=max_replicas)):
        run = simulate(tasks, policy, setup)
        assert run.completions == len(tasks.tasks), policy.name
        for task, start, end in zip(tasks.tasks, run.started, run.finished, strict=True):
            assert start >= task.arrival_s
            assert end == pytest.approx(start + task.service_s)
        assert max(r for _, _, r in run.timeline) <= max_replicas


def test_a_stalled_run_gives_up_no_sooner_than_the_stall_limit_after_the_last_arrival():
    # No pod ever runs anything. Giving up 1000 s after the first task would end the run before the second
    # arrives, and the unfinished second task would count a wait of 1000 - 5000 s: negative, a better p95 for a
    # policy that stalls. Every task gets the stall limit after its arrival instead.
    run = simulate(trace(Task(0, 5), Task(5000, 5)), Static(0), Setup(startup_s=10, stall_s=1000))
    assert run.finished == [None, None]
    assert run.end_s == 6000
    assert summarize(run)["unfinished"] == 2
