"""Dividing a fleet-wide GPU budget among GpuTaskQueues: a pure function.

The rule, in order:
  1. every queue first gets its guaranteed minimum (minReplicas pods), even when that alone exceeds the budget;
  2. the rest is shared by weight (weighted max-min fairness, one pod at a time): the queue with the fewest GPUs
     per unit of weight gets the next pod, and a queue stops taking once its demand is met, so what it does not
     need flows to the others;
  3. between queues equally served, the higher priority takes the pod first: the remainder that cannot be split
     evenly goes to the higher priority.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Claim:
    key: str | tuple[str, str]  # the operator's (namespace, name); any orderable name in a table
    gpus_per_pod: int
    min_pods: int
    demand_pods: int  # what the load asks for, within [min, max]
    priority: int = 0
    weight: int = 1


@dataclass(frozen=True)
class Share:
    pods: int
    gpus: int
    reason: str


def divide(budget: int, claims: Sequence[Claim]) -> dict[str | tuple[str, str], Share]:
    gpu_claims = [c for c in claims if c.gpus_per_pod > 0]
    pods = {c.key: c.min_pods for c in gpu_claims}
    left = budget - sum(c.min_pods * c.gpus_per_pod for c in gpu_claims)
    while left > 0:
        hungry = [c for c in gpu_claims if pods[c.key] < c.demand_pods and c.gpus_per_pod <= left]
        if not hungry:
            break
        nxt = min(hungry, key=lambda c: (pods[c.key] * c.gpus_per_pod / c.weight, -c.priority, c.key))
        pods[nxt.key] += 1
        left -= nxt.gpus_per_pod

    demand = sum(c.demand_pods * c.gpus_per_pod for c in gpu_claims)
    shares = {}
    for c in gpu_claims:
        got = pods[c.key]
        if demand <= budget:
            why = f"demand {demand} GPUs fits the budget of {budget}"
        elif got == c.min_pods and got < c.demand_pods:
            why = (
                f"guaranteed minimum only: {got} pods; the budget of {budget} GPUs is taken (demand {demand})"
            )
        else:
            why = f"fair share by weight {c.weight} and priority {c.priority} of {budget} GPUs (demand {demand})"
        shares[c.key] = Share(got, got * c.gpus_per_pod, why)
    return shares
