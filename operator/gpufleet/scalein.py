"""Safe scale-in: which pods may go, and the pod-deletion-cost that makes the ReplicaSet pick exactly those. Pure.

The ReplicaSet controller removes, among running and ready pods, those with the lowest
`controller.kubernetes.io/pod-deletion-cost` first. Idle pods get negative costs (the longest idle cheapest),
busy pods positive ones (the busiest, longest-running dearest), so a scale-in by k removes k idle pods.
"""

from __future__ import annotations

from collections.abc import Mapping

from gpufleet.model import Pod, WorkerState


def idle_pods(pods: Mapping[str, Pod], workers: Mapping[str, WorkerState]) -> list[str]:
    """Pods whose removal interrupts nothing: not yet scheduled, or with a worker that reports no task running.
    A pod with no live entry has no consuming worker (starting up, or dead and its task to be redelivered)."""
    return [
        name
        for name, pod in pods.items()
        if not pod.terminating and not (name in workers and workers[name].busy)
    ]


def deletion_costs(pods: Mapping[str, Pod], workers: Mapping[str, WorkerState], now: float) -> dict[str, str]:
    costs = {}
    for name, pod in pods.items():
        if pod.terminating:
            continue
        state = workers.get(name)
        if state is None or not state.busy:
            idle_for = now - state.since if state else 0.0
            cost = -1 - min(int(idle_for), 1_000_000)
        else:
            cost = 1_000 * max(state.active, 1) + min(int(now - state.since), 1_000_000)
        costs[name] = str(cost)
    return costs


def changed_annotations(pods: Mapping[str, Pod], costs: Mapping[str, str]) -> dict[str, str]:
    """Only the pods whose cost differs from what they carry: annotations are written once, before a scale-in."""
    return {name: cost for name, cost in costs.items() if pods[name].deletion_cost != cost}
