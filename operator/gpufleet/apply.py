"""The tick's last step: write what a Plan names, and nothing else. No decisions here.

Order matters: the messages of dead workers back in their queues first; pod protection and deletion costs
before a scale-in (so the ReplicaSet removes the idle pods), the Deployment (and its PodDisruptionBudget), then
the Events (a scale Event only once the Deployment was accepted), the status, the metrics.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from gpufleet import metrics
from gpufleet.broker import BrokerUnreachable, RedisProbe, Request
from gpufleet.cache import Cache
from gpufleet.kube import Kube, Rejected
from gpufleet.model import Snapshot
from gpufleet.plan import Event, FleetState, Gauges, Plan
from gpufleet.resources import BUSY_DELETION_COST, pod_metadata

Broker = tuple[RedisProbe, Request]

log = logging.getLogger(__name__)


def apply(
    kube: Kube, cache: Cache, snap: Snapshot, plan: Plan, before: FleetState, broker: Broker | None = None
) -> FleetState:
    """Write `plan` for the fleet of `snap`; returns what the fleet carries into the next tick (`before` is
    what it carried into this one). `broker` is where the fleet's orphaned messages are put back."""
    ref = {"metadata": {"name": snap.name, "namespace": snap.namespace, "uid": snap.uid}}
    events = _restore(snap, plan, broker) + list(plan.events)
    for pod in sorted(set(plan.protect) | set(plan.annotations)):
        protect, cost = plan.protect.get(pod), plan.annotations.get(pod)
        kube.patch_pod(snap.namespace, pod, pod_metadata(protect, cost))
        known = {"protected": protect} if protect is not None else {}
        cost = cost or (BUSY_DELETION_COST if protect else None)
        cache.pod_written(snap.namespace, snap.name, pod, deletion_cost=cost, **known)
    if plan.deployment is not None:
        try:
            if plan.claim_template is not None:
                kube.apply(plan.claim_template)
            if plan.pdb is not None:
                kube.apply(plan.pdb)
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
    if plan.gauges is not None:
        _export(snap, plan.gauges)
    return plan.state


def _restore(snap: Snapshot, plan: Plan, broker: Broker | None) -> list[Event]:
    """First of all: every second a dead worker's task waits is lost time."""
    if not plan.restore or broker is None:
        return []
    probe, request = broker
    try:
        counts = probe.restore(request, plan.restore, snap.now)
    except BrokerUnreachable as exc:
        log.warning("%s/%s: cannot restore the tasks of %s yet: %s", snap.namespace, snap.name,
                    ", ".join(pod for pod, _ in plan.restore), exc)  # fmt: skip
        return []
    events = []
    for pod, n in counts.items():
        if n > 0:
            metrics.restored.labels(snap.namespace, snap.name).inc(n)
            message = (
                f"put back {n} task(s) held by worker {pod}, which is gone; they run again on another worker"
            )
            log.info("%s/%s: %s", snap.namespace, snap.name, message)
            events.append(Event("Normal", "TasksRestored", message))
    return events


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
    if g.ready is not None:
        metrics.ready_workers.labels(ns, name).set(g.ready)
    metrics.set_failing(ns, name, dict(g.failing))
    if g.direction is not None:
        metrics.decisions.labels(ns, name, g.direction, g.limited_by).inc()
    if g.probe_failed:
        metrics.probe_errors.labels(ns, name).inc()
