"""The controller's schedule: which fleets a tick takes, without a pass over every fleet at every tick."""

from __future__ import annotations

import pytest

from gpufleet.controller import Controller
from gpufleet.plan import FleetState


@pytest.fixture
def controller():
    now = [100.0]
    c = Controller(kube=None, clock=lambda: now[0])
    c.now = now
    yield c
    c.close()


def test_a_tick_takes_the_due_fleets_each_once_in_the_order_they_fell_due(controller):
    c = controller
    for name, at in (("b", 99.5), ("a", 98.0), ("c", 101.0), ("idle", float("inf"))):
        c._put(("ns", name), FleetState(uid=name, next_probe=at))
    c._put(("ns", "b"), c.states[("ns", "b")].rescheduled(99.0))  # rescheduled: its first entry is stale
    assert c._pop_due(100.0) == [("ns", "a"), ("ns", "b")]
    assert c._pop_due(100.0) == []
    assert c._next_due() == 101.0
    c.now[0] = 101.0
    assert c._pop_due(101.0) == [("ns", "c")]
    assert (
        c._next_due() == 101.0 + 1.0
    )  # nothing due (idle waits for a new generation): look again in a second


def test_a_fleet_gone_or_moved_on_leaves_no_due_entry(controller):
    c = controller
    c._put(("ns", "gone"), FleetState(uid="g", next_probe=99.0))
    c._put(("ns", "later"), FleetState(uid="l", next_probe=99.0))
    c._put(("ns", "later"), c.states[("ns", "later")].rescheduled(150.0))
    del c.states[("ns", "gone")]
    assert c._next_due() == 150.0
    assert c._pop_due(100.0) == []


def test_standing_by_forgets_every_fleet_and_the_next_lead_starts_them_all_again(controller):
    c = controller
    c._put(("ns", "a"), FleetState(uid="a", next_probe=500.0))
    c._changed = False  # a quiet cluster: no queue event since the last tick
    c.stand_by()
    assert c.states == {} and c._schedule == [] and c._changed


def test_a_tick_that_fails_loses_no_fleet(controller):
    """A fleet popped from the schedule by a tick that then raised is tried again at its next poll."""
    c = controller
    c.reconcile({"metadata": {"namespace": "ns", "name": "q", "uid": "u1", "generation": 1}, "spec": {}})

    def broken(*args, **kwargs):
        raise RuntimeError("a bug in the tick")

    c.observer.snapshots = broken
    with pytest.raises(RuntimeError):
        c.tick()
    assert c._next_due() == 101.0
    c.now[0] = 101.0
    assert c._pop_due(101.0) == [("ns", "q")]


def test_a_tick_takes_at_most_its_limit_and_the_rest_stay_due(controller):
    c = controller
    for i in range(7):
        c._put(("ns", f"q{i}"), FleetState(uid=str(i), next_probe=90.0 + i))
    assert c._pop_due(100.0, limit=5) == [("ns", f"q{i}") for i in range(5)]
    assert c._next_due() == 95.0  # still due: the next tick starts at once
    assert c._pop_due(100.0, limit=5) == [("ns", "q5"), ("ns", "q6")]
