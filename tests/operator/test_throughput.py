"""The throughput meter: tasks per second per worker from the workers' `done` counters."""

from __future__ import annotations

import pytest

from gpufleet.model import WorkerState
from gpufleet.throughput import Meter, measure


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
    assert measure(m, workers(a=1), 1) is m


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
    assert still is m  # open, not closed at 0
    m = measure(still, workers(a=2, b=2), 200)
    assert m.rate == pytest.approx(0.01)


def test_a_sample_waits_for_about_one_task_per_worker():
    m = measure(Meter(), workers(a=0, b=0, c=0), 0)
    assert measure(m, workers(a=1, b=0, c=0), 10).since == 0  # one of three finished: keep measuring
    assert measure(m, workers(a=1, b=1, c=1), 12).rate == pytest.approx(1 / 12)
