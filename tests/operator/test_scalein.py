"""Safe scale-in: only idle pods are removable, and deletion costs make the ReplicaSet pick them."""

from __future__ import annotations

from gpufleet.model import Pod, WorkerState
from gpufleet.scalein import changed_annotations, deletion_costs, idle_pods


def pod(name, cost=None, scheduled=True, terminating=False):
    return Pod(name, scheduled, not scheduled, terminating, cost)


def state(busy, since, active=0):
    return WorkerState(busy=busy, since=since, expires=1e12, active=active)


PODS = {
    p.name: p
    for p in [
        pod("busy-long"),
        pod("busy-new"),
        pod("idle-long"),
        pod("idle-new"),
        pod("starting"),
        pod("gone", terminating=True),
    ]
}
WORKERS = {
    "busy-long": state(True, 0, 1),
    "busy-new": state(True, 90, 1),
    "idle-long": state(False, 10),
    "idle-new": state(False, 95),
    "gone": state(True, 0, 1),
}


def test_idle_pods_are_those_running_nothing():
    assert sorted(idle_pods(PODS, WORKERS)) == ["idle-long", "idle-new", "starting"]


def test_costs_order_idle_before_busy_and_longest_idle_first():
    costs = {k: int(v) for k, v in deletion_costs(PODS, WORKERS, now=100).items()}
    assert "gone" not in costs
    order = sorted(costs, key=costs.get)
    assert order[:3] == ["idle-long", "idle-new", "starting"]
    assert order[-1] == "busy-long"  # the longest-running task is dearest
    assert all(costs[p] < 0 for p in order[:3]) and all(costs[p] > 0 for p in order[3:])


def test_only_changed_costs_are_written():
    costs = deletion_costs(PODS, WORKERS, now=100)
    carried = {**PODS, "idle-long": pod("idle-long", cost=costs["idle-long"])}
    assert "idle-long" not in changed_annotations(carried, costs)
    assert "idle-new" in changed_annotations(carried, costs)
