"""The controller's wiring: fleets that come and go, a standby that forgets, a tick that fails."""

from __future__ import annotations

import pytest

from gpufleet.controller import Controller
from gpufleet.model import FleetState


@pytest.fixture
def controller():
    now = [100.0]
    c = Controller(kube=None, clock=lambda: now[0])
    c.now = now
    yield c
    c.close()


def body(name: str, generation: int = 1) -> dict:
    return {
        "metadata": {"namespace": "ns", "name": name, "uid": f"u-{name}", "generation": generation},
        "spec": {},
    }


def test_standing_by_forgets_every_fleet_and_the_next_lead_starts_them_all_again(controller):
    c = controller
    c.schedule.put(("ns", "a"), FleetState(uid="a", next_probe=500.0))
    c._changed = False  # a quiet cluster: no queue event since the last tick
    c.stand_by()
    assert len(c.schedule) == 0 and c._changed


def test_a_tick_that_fails_loses_no_fleet(controller):
    """A fleet popped from the schedule by a tick that then raised is tried again at its next poll."""
    c = controller
    c.reconcile(body("q"))

    def broken(*args, **kwargs):
        raise RuntimeError("a bug in the tick")

    c.observer.snapshots = broken
    with pytest.raises(RuntimeError):
        c.tick()
    assert c.schedule.next_due() == 101.0
    assert c.schedule.pop_due(101.0, 10) == [("ns", "q")]


def test_a_new_generation_is_due_at_once_and_a_deleted_fleet_is_dropped(controller):
    c = controller
    c.reconcile(body("q"))
    c._sync(dict(c._queues), 100.0)
    c.schedule.put(("ns", "q"), c.schedule[("ns", "q")].rescheduled(500.0))
    c.reconcile(body("q", generation=2))
    c._sync(dict(c._queues), 120.0)
    assert c.schedule.pop_due(120.0, 10) == [("ns", "q")] and c.schedule[("ns", "q")].generation == 2
    c.forget("ns", "q")
    c._sync(dict(c._queues), 121.0)
    assert ("ns", "q") not in c.schedule
