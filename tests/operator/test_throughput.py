"""The meter: throughput per worker (drainWithinSeconds), and the arrival rate, service time and start-up time
(targetWaitSeconds), from what the operator reads: the workers' counters, the depth, the pods' creation times."""

from __future__ import annotations

import pytest

from gpufleet.model import WorkerState
from gpufleet.throughput import LOAD_WINDOW_SECONDS, STARTUP_WINDOW_SECONDS, Meter, measure, resumed


def workers(**done):
    return {pod: WorkerState(busy=True, since=0, expires=1e12, done=n) for pod, n in done.items()}


def test_first_sight_has_no_rate():
    assert measure(Meter(), workers(a=5), 0).rate is None


def test_rate_per_worker():
    m = measure(Meter(), workers(a=0, b=0), 0)
    m = measure(m, workers(a=10, b=30), 10)
    assert m.rate == pytest.approx(2.0)  # 40 tasks / 10 s / 2 workers


def test_short_spans_are_not_samples():
    m = measure(Meter(), workers(a=0), 0)
    later = measure(m, workers(a=1), 1)
    assert (later.since, later.counts, later.rate) == (0, {"a": 0}, None)


def test_new_and_restarted_workers_are_left_out():
    m = measure(Meter(), workers(a=0, b=50), 0)
    m = measure(m, workers(a=20, b=3, c=999), 10)  # b restarted (counter fell), c is new
    assert m.rate == pytest.approx(2.0)


def test_idle_samples_keep_the_last_rate():
    m = measure(measure(Meter(), workers(a=0), 0), workers(a=10), 10)
    idle = {"a": WorkerState(busy=False, since=0, expires=1e12, done=10)}
    assert measure(m, idle, 20).rate == pytest.approx(1.0)


def test_smoothing_moves_towards_new_samples():
    m = measure(measure(Meter(), workers(a=0), 0), workers(a=10), 10)
    m = measure(m, workers(a=40), 20)
    assert 1.0 < m.rate < 3.0


def test_busy_workers_that_finish_nothing_yet_keep_the_sample_open():
    # Long tasks (or workers just started): no completion in the window is not a rate of zero.
    m = measure(measure(Meter(), workers(a=0, b=0), 0), workers(a=1, b=1), 100)
    assert m.rate == pytest.approx(0.01)
    still = measure(m, workers(a=1, b=1), 150)
    assert (still.since, still.rate) == (m.since, m.rate)  # open, not closed at 0
    m = measure(still, workers(a=2, b=2), 200)
    assert m.rate == pytest.approx(0.01)


def test_a_sample_waits_for_about_one_task_per_worker():
    m = measure(Meter(), workers(a=0, b=0, c=0), 0)
    assert measure(m, workers(a=1, b=0, c=0), 10).since == 0  # one of three finished: keep measuring
    assert measure(m, workers(a=1, b=1, c=1), 12).rate == pytest.approx(1 / 12)


# ---- the load: arrival rate and service time ---------------------------------------------------------------


def state(active=0, done=0, since=0.0):
    return WorkerState(busy=active > 0, since=since, expires=1e12, active=active, done=done)


def steady_run(arrival_every: float, service: float, workers_n: int, seconds: float, step: float = 1.0):
    """Readings of a fleet where a task arrives every `arrival_every` s and takes `service` s, on `workers_n`
    workers that take tasks in turn: what the operator's probe would see, one reading per `step`."""
    m, t = Meter(), 0.0
    next_arrival = 0.0
    running: dict[str, float] = {}  # worker -> end of its task
    done = {f"w{i}": 0 for i in range(workers_n)}
    queue = 0
    while t <= seconds:
        while next_arrival <= t:
            queue += 1
            next_arrival += arrival_every
        for w, end in list(running.items()):
            if end <= t:
                del running[w]
                done[w] += 1
        for w in done:
            if queue and w not in running:
                running[w] = t + service
                queue -= 1
        ws = {w: state(active=int(w in running), done=done[w]) for w in done}
        m = measure(m, ws, t, depth=queue + len(running))
        t += step
    return m


@pytest.mark.parametrize(("every", "service", "n"), [(4.0, 10.0, 4), (2.0, 5.0, 3), (120.0, 450.0, 5)])
def test_arrival_rate_and_service_time_converge(every, service, n):
    seconds = max(4 * LOAD_WINDOW_SECONDS, 40 * service)
    m = steady_run(every, service, n, seconds)
    assert m.arrival_rate == pytest.approx(1 / every, rel=0.1)
    assert m.service_s == pytest.approx(service, rel=0.1)


def test_arrivals_are_finished_tasks_plus_the_growth_of_the_queues():
    m = measure(Meter(), {"a": state(1, 0)}, 0, depth=3)
    m = measure(m, {"a": state(1, 2)}, 10, depth=6)  # 2 finished, depth up by 3: 5 arrived
    assert m.arrived == pytest.approx(5)
    assert m.finished == pytest.approx(2)
    assert m.busy == pytest.approx(10)  # one task running for 10 s


def test_no_arrival_rate_before_half_a_window():
    m = Meter()
    for t in range(0, int(LOAD_WINDOW_SECONDS / 2) - 5, 5):
        m = measure(m, {}, float(t), depth=t)
    assert m.arrival_rate is None
    for t in range(int(LOAD_WINDOW_SECONDS / 2) - 5, int(LOAD_WINDOW_SECONDS), 5):
        m = measure(m, {}, float(t), depth=t)
    assert m.arrival_rate == pytest.approx(1.0, rel=0.05)  # nothing finishes, the depth grows by 1 a second


def test_an_unreadable_depth_starts_the_load_over_without_a_false_sample():
    m = measure(Meter(), {"a": state(0, 0)}, 0, depth=10)
    m = measure(m, {"a": state(0, 0)}, 5, depth=None)  # broker away
    m = measure(m, {"a": state(0, 0)}, 10, depth=0)
    assert m.arrived == 0 and m.watched == 0


def test_new_and_restarted_workers_count_their_tasks_from_zero():
    m = measure(Meter(), {"a": state(1, 5)}, 0, depth=1)
    # a restarted (counter fell to 1), b new with 2 done: 3 tasks finished
    m = measure(m, {"a": state(1, 1), "b": state(0, 2)}, 10, depth=1)
    assert m.finished == pytest.approx(3)


def test_service_time_is_kept_while_nothing_finishes():
    m = steady_run(4.0, 10.0, 4, 600)
    idle = {f"w{i}": state(0, 0) for i in range(4)}
    for t in range(700, 700 + 20 * int(LOAD_WINDOW_SECONDS), 60):
        m = measure(m, idle, float(t), depth=0)
    assert m.service_s == pytest.approx(10.0, rel=0.1)  # an idle fleet forgets nothing it measured
    assert m.arrival_rate < 0.01  # but nothing arrives any more


# ---- start-up ----------------------------------------------------------------------------------------------


def test_start_up_runs_from_creation_to_the_worker_taking_tasks():
    m = measure(Meter(), {}, 100, depth=0, created={"p": 40.0})
    assert m.startup_s is None  # not started yet
    m = measure(m, {"p": state(0, 0, since=95.0)}, 101, depth=0, created={"p": 40.0})
    assert m.startup_s == pytest.approx(55.0)
    # counted once
    m = measure(m, {"p": state(1, 0, since=99.0)}, 102, depth=1, created={"p": 40.0})
    assert m.startup_s == pytest.approx(55.0)


def test_a_worker_first_seen_with_tasks_done_says_nothing_of_its_start_up():
    m = measure(Meter(), {"p": state(0, 3, since=95.0)}, 100, depth=0, created={"p": 40.0})
    assert m.startup_s is None and "p" in m.started


def test_start_up_is_the_mean_of_a_wave_not_its_slowest_pods():
    # Ten pods created together report in the order they finish starting, the slowest last.
    created = {f"p{i}": 0.0 for i in range(10)}
    m, ws = Meter(), {}
    for i in range(10):
        ws = {**ws, f"p{i}": state(0, 0, since=30.0 + 6 * i)}
        m = measure(m, ws, 30.0 + 6 * i, depth=0, created=created)
    assert m.startup_s == pytest.approx(57.0, rel=0.02)  # 30 .. 84 s: mean 57 s


def test_old_start_ups_weigh_less_than_new_ones():
    m = measure(Meter(), {"a": state(0, 0, since=100.0)}, 100, depth=0, created={"a": 0.0})
    later = 100 + 5 * STARTUP_WINDOW_SECONDS
    m = measure(m, {"b": state(0, 0, since=later)}, later, depth=0, created={"b": later - 20})
    assert m.startup_s == pytest.approx(20.0, rel=0.05)


def test_the_status_start_up_is_read_back_until_one_is_measured():
    assert resumed(Meter(), "62").startup_s == 62.0
    assert resumed(Meter(), None).startup_s is None
    assert resumed(Meter(), "oops").startup_s is None
    assert resumed(Meter(), "-3").startup_s is None
    assert resumed(Meter(startup_s=40.0), "62").startup_s == 40.0
