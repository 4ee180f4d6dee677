"""The Ray Serve model, pod start-ups drawn from a distribution, cold nodes, and the figures every table shows
(floor, busy share, scale events per hour): tiny traces worked out by hand."""

from __future__ import annotations

import random
import statistics

import pytest

from gpufleet_tools.simulate.engine import Setup, View, simulate
from gpufleet_tools.simulate.metrics import floor_gpu_hours, summarize
from gpufleet_tools.simulate.policies import (
    Gpufleet,
    Keda,
    KedaSettings,
    RayServe,
    RaySettings,
    Static,
    fleet_policies,
    gpufleet_spec,
)
from gpufleet_tools.simulate.traces import Task, Trace


def trace(*tasks: Task) -> Trace:
    return Trace("t", tuple(sorted(tasks, key=lambda t: t.arrival_s)))


def waits(run) -> list[float]:
    return [s - t.arrival_s for t, s in zip(run.trace.tasks, run.started, strict=True)]


# ---- Ray Serve --------------------------------------------------------------------------------------------


def test_ray_serve_defaults_are_its_documented_ones():
    s = RaySettings()
    assert (s.target_ongoing_requests, s.upscale_delay_s, s.downscale_delay_s) == (2.0, 30.0, 600.0)
    assert s.downscale_to_zero_delay_s is None and s.queue_push_interval_s == 10.0
    assert s.graceful_shutdown_timeout_s == 20.0
    names = [p.name for p in fleet_policies(gpufleet_spec({}), KedaSettings())]
    assert names == ["gpufleet", "gpufleet-drain", "keda", "ray-serve", "static"]


def test_ray_serve_wakes_from_zero_at_the_queue_monitor_s_next_push():
    # The queue length reaches the controller every 10 s: a task at t=1 is seen at t=10, its replica is ready
    # 5 s later.
    run = simulate(trace(Task(1, 5)), RayServe(RaySettings()), Setup(startup_s=5))
    assert waits(run) == [14]
    assert run.interrupted == 0


def test_ray_serve_scales_up_only_after_30_s_of_consecutive_decisions_and_by_llen_over_two():
    # 20 tasks at t=0: one replica at once (cold start), ready at t=1. From then on the pushed LLEN (20 at t=0,
    # 19 from the push at t=10 on) asks for ceil(LLEN / 2) = 10 replicas; the controller acts once it has
    # decided so for more than 30 s: at t=31, its 31st decision in a row.
    seen = []

    class Spy(RayServe):
        def _control(self, now: float, view: View) -> int:
            target = super()._control(now, view)
            seen.append((now, target))
            return target

    run = simulate(trace(*[Task(0, 100)] * 20), Spy(RaySettings()), Setup(startup_s=1))
    changes = [(t, r) for (t, r), (_, before) in zip(seen[1:], seen, strict=False) if r != before]
    assert changes[0] == (31.0, 10)
    assert run.completions == 20


def test_ray_serve_sees_one_list_and_no_running_task():
    # A priority-6 task sits in kombu's "q\x06\x166" list: LLEN of "q" is 0, so the fleet never wakes.
    hidden = simulate(trace(Task(0, 5, priority=6)), RayServe(RaySettings()), Setup(startup_s=1, stall_s=900))
    assert hidden.finished == [None] and hidden.scale_events == 0


def test_ray_serve_stops_a_busy_replica_after_600_s_without_a_queue_and_kills_its_task_20_s_later():
    # A 2,000 s task: taken at t=5 (woken at the push of t=0, ready at 5). The push of t=10 shows an empty
    # queue, so every decision from then on is to go down; 600 s of them later (t=610) the replica is stopped,
    # and its task killed at the end of the 20 s graceful shutdown (t=630), after 625 s of work. It goes back to
    # the queue, and the cycle starts over: the task never finishes.
    run = simulate(trace(Task(0, 2000)), RayServe(RaySettings()), Setup(startup_s=5, stall_s=2000))
    assert run.interrupted >= 1
    assert run.finished == [None]
    first_kill = simulate(trace(Task(0, 2000)), RayServe(RaySettings()), Setup(startup_s=5, stall_s=700))
    assert (first_kill.interrupted, first_kill.lost_work_s) == (1, 625)


def test_ray_serve_removes_replicas_blind_to_their_work():
    assert RayServe(RaySettings()).marks_deletion_cost is False


# ---- pod start-up, cold nodes -----------------------------------------------------------------------------


def test_start_ups_are_drawn_around_their_mean_and_the_same_for_a_seed():
    setup = Setup(startup_s=60, startup_spread=0.3)
    rng = random.Random(1)
    draws = [setup.draw_startup(rng) for _ in range(4000)]
    assert statistics.mean(draws) == pytest.approx(60, rel=0.03)
    assert 0.27 < statistics.stdev(draws) / 60 < 0.33
    assert Setup(startup_s=60).draw_startup(rng) == 60  # no spread: every pod the same

    tasks = trace(*[Task(0, 30)] * 8)
    keda = KedaSettings(polling_interval_s=1, list_length=1)
    same = [simulate(tasks, Keda(keda), Setup(startup_spread=0.3, seed=3)).started for _ in range(2)]
    other = simulate(tasks, Keda(keda), Setup(startup_spread=0.3, seed=4)).started
    assert same[0] == same[1] and same[0] != other
    assert len({round(w, 6) for w in waits(simulate(tasks, Keda(keda), Setup(startup_spread=0.3)))}) > 1


def test_pods_wait_for_a_cold_node_unless_one_is_idle():
    # Task 1 needs a node: 10 s start-up + 100 s for the node. Its pod leaves at 330 (zero after 300 s idle, and
    # the scale-down window) and its node stays 600 s: task 2 (t=500) gets it warm; task 3 (t=2000) waits for a
    # new node again.
    spec = gpufleet_spec({"targetWaitSeconds": "0"})
    tasks = trace(Task(0, 20), Task(500, 20), Task(2000, 20))
    run = simulate(tasks, Gpufleet(spec), Setup(startup_s=10, cold_node_s=100, node_idle_s=600))
    assert waits(run) == [110, 10, 110]


# ---- the figures -------------------------------------------------------------------------------------------


def test_floor_busy_share_and_scale_events_per_hour():
    tasks = trace(Task(0, 600), Task(0, 600), Task(0, 1200))
    run = simulate(tasks, Static(2), Setup(gpus=2, slots=2))
    f = summarize(run)
    # 2,400 s of work on 2 GPUs, 2 tasks at a time: 2,400 x 2 / 2 / 3600
    assert floor_gpu_hours(run) == pytest.approx(2400 * 2 / 2 / 3600)
    assert f["floor_gpu_hours"] == round(2400 * 2 / 2 / 3600, 3)
    # Two pods of two slots for 1,200 s: 4,800 slot-seconds, 2,400 busy.
    assert f["busy_share"] == 0.5
    assert f["scale_events"] == 0 and f["scale_events_per_hour"] == 0
    # Ray Serve: up at t=0; the push of t=10 shows an empty queue, and 600 s of decisions later (t=610) it goes
    # to zero: two changes in 610 s.
    ray = simulate(trace(Task(0, 10)), RayServe(RaySettings()), Setup(startup_s=5))
    assert (ray.scale_events, ray.end_s) == (2, 610)
    assert summarize(ray)["scale_events_per_hour"] == round(2 * 3600 / 610, 2)


# ---- gpufleet's default rule in the simulator ---------------------------------------------------------------


def test_the_default_rule_sizes_by_what_the_meter_measured_and_asks_no_pod_too_late(decisions):
    # Four 10 s tasks wake the fleet (no measurement yet: one pod per task, ready at 60, done at 70). At 75 six
    # more arrive: the four idle workers take four and start the other two by 85, long before a new pod could
    # be ready (135). The default asks for none; one pod per task asks for two that come too late.
    tasks = trace(*[Task(0, 10)] * 4, *[Task(75, 10)] * 6)
    default = simulate(tasks, Gpufleet(gpufleet_spec({})), Setup(startup_s=60))
    per_task = simulate(tasks, Gpufleet(gpufleet_spec({"targetWaitSeconds": "0"})), Setup(startup_s=60))
    at_75 = next(obs for obs, _ in decisions if obs.now == 75)
    assert (at_75.service_s, at_75.startup_s, at_75.ready) == (pytest.approx(10, rel=0.05), 60, 4)
    assert max(r for t, _, r in default.timeline if t >= 75) == 4
    assert max(r for t, _, r in per_task.timeline if t >= 75) == 6
    assert waits(default)[4:] == waits(per_task)[4:]  # the late pods helped no task
    assert summarize(default)["gpu_hours"] < summarize(per_task)["gpu_hours"]


def test_the_plot_s_load_and_replicas_are_time_means_per_step():
    from gpufleet_tools.simulate.report import _means, load

    # A 90 s task from t=0 and a 30 s one from t=60: one pod busy over the first minute, half of one twice
    # over the second.
    assert load(trace(Task(0, 90), Task(60, 30)), 120, 60) == [1.0, 1.0, 0.0]
    # 2 replicas and 5 queued until t=30, then 4 and none, until t=120: means 3 and 4, 2.5 and 0.
    assert _means([(0, 5, 2), (30, 0, 4)], 2, 120, 60) == [3.0, 4.0, 0.0]
    assert _means([(0, 5, 2), (30, 0, 4)], 1, 120, 60) == [2.5, 0.0, 0.0]
