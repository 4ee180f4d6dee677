"""The tick's last step: write what a Plan names, and nothing else. No decisions here.

Order matters: pod-deletion-costs before a scale-in (so the ReplicaSet removes the idle pods), the Deployment,
then the Events (a scale Event only once the Deployment was accepted), the status, the metrics.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from gpufleet import metrics
from gpufleet.cache import Cache
from gpufleet.kube import Kube, Rejected
from gpufleet.model import DELETION_COST, Snapshot
from gpufleet.plan import FleetState, Gauges, Plan

log = logging.getLogger(__name__)


def apply(kube: Kube, cache: Cache, snap: Snapshot, plan: Plan, before: FleetState) -> FleetState:
    """Write `plan` for the fleet of `snap`; returns what the fleet carries into the next tick (`before` is
    what it carried into this one)."""
    ref = {"metadata": {"name": snap.name, "namespace": snap.namespace, "uid": snap.uid}}
    for pod, cost in plan.annotations.items():
        kube.annotate_pod(snap.namespace, pod, {DELETION_COST: cost})
        cache.deletion_cost_written(snap.namespace, snap.name, pod, cost)
    events = list(plan.events)
    if plan.deployment is not None:
        try:
            cache.deployment_event("MODIFIED", kube.apply(plan.deployment))
        except Rejected as exc:
            # Nothing this plan says holds now: the fleet is planned again at once, knowing the refusal, which it
            # then shows (DeploymentRejected) until its spec changes.
            return replace(
                before, rejected=(snap.generation, str(exc)), applied_generation=None, next_probe=0.0
            )
        if plan.scale_event is not None:
            events.insert(0, plan.scale_event)
            log.info("%s/%s: %s", snap.namespace, snap.name, plan.scale_event.message)
    for event in events:
        kube.event(ref, event.type, event.reason, event.message)
    if plan.status is not None:
        kube.patch_status(snap.namespace, snap.name, plan.status)
    _export(snap, plan.gauges)
    return plan.state


def _export(snap: Snapshot, g: Gauges) -> None:
    ns, name = snap.namespace, snap.name
    for queue, (queued, reserved) in g.queues.items():
        metrics.queued.labels(ns, name, queue).set(queued)
        metrics.reserved.labels(ns, name, queue).set(reserved)
    if g.desired is not None:
        metrics.desired.labels(ns, name).set(g.desired)
    metrics.replicas.labels(ns, name).set(g.replicas)
    if g.busy is not None:
        metrics.busy_workers.labels(ns, name).set(g.busy)
    if g.direction is not None:
        metrics.decisions.labels(ns, name, g.direction, g.limited_by).inc()
    if g.probe_failed:
        metrics.probe_errors.labels(ns, name).inc()
