"""The tick's last step: write what a Plan names, and nothing else; return what happened (an Outcome).

Order matters: the messages of dead workers back in their queues first; pod protection and deletion costs
before a scale-in (so the ReplicaSet removes the idle pods), the Deployment (and its PodDisruptionBudget), then
the Events (a scale Event only once the Deployment was accepted), the status, the metrics. A write that fails
ends the fleet's apply there: the Outcome says so, and the fleet is tried again at its next poll.
"""

from __future__ import annotations

import logging

from gpufleet import metrics
from gpufleet.broker import BrokerUnreachable, Handle
from gpufleet.cache import Cache
from gpufleet.kube import Kube, Rejected
from gpufleet.model import Gauges, Outcome, Plan, Snapshot

log = logging.getLogger(__name__)


def apply(kube: Kube, cache: Cache, snap: Snapshot, plan: Plan, broker: Handle | None = None) -> Outcome:
    """Write `plan` for the fleet of `snap`. `broker` is where the fleet's orphaned messages are put back."""
    restored: tuple[tuple[str, int], ...] = ()
    try:
        restored = _restore(snap, plan, broker)
        for pod, write in plan.pods.items():
            kube.patch_pod(snap.namespace, pod, dict(write.metadata))
            cache.pod_written(snap.namespace, snap.name, pod, **write.known)
        events = list(plan.events)
        if plan.deployment is not None:
            try:
                if plan.claim_template is not None:
                    kube.apply(plan.claim_template)
                if plan.pdb is not None:
                    kube.apply(plan.pdb)
                cache.deployment_event("MODIFIED", kube.apply(plan.deployment))
            except Rejected as exc:
                return Outcome(rejected=str(exc), restored=restored)
            if plan.scale_event is not None:
                events.insert(0, plan.scale_event)
                log.info("%s/%s: %s", snap.namespace, snap.name, plan.scale_event.message)
        ref = {"metadata": {"name": snap.name, "namespace": snap.namespace, "uid": snap.uid}}
        for event in events:
            kube.event(ref, event.type, event.reason, event.message)
        if plan.status is not None:
            kube.patch_status(snap.namespace, snap.name, plan.status)
    except Exception as exc:
        return Outcome(restored=restored, failed=exc)
    if plan.gauges is not None:
        _export(snap, plan.gauges)
    return Outcome(restored=restored)


def _restore(snap: Snapshot, plan: Plan, broker: Handle | None) -> tuple[tuple[str, int], ...]:
    """First of all: every second a dead worker's task waits is lost time."""
    if not plan.restore or broker is None:
        return ()
    try:
        counts = broker.restore(plan.restore, snap.now)
    except BrokerUnreachable as exc:
        log.warning("%s/%s: cannot restore the tasks of %s yet: %s", snap.namespace, snap.name,
                    ", ".join(pod for pod, _ in plan.restore), exc)  # fmt: skip
        return ()
    restored = tuple((pod, n) for pod, n in counts.items() if n > 0)
    for pod, n in restored:
        metrics.restored.labels(snap.namespace, snap.name).inc(n)
        log.info(
            "%s/%s: put back %d task(s) held by worker %s, which is gone", snap.namespace, snap.name, n, pod
        )
    return restored


def _export(snap: Snapshot, g: Gauges) -> None:
    ns, name = snap.namespace, snap.name
    for queue, (queued, reserved) in g.queues.items():
        metrics.queued.labels(ns, name, queue).set(queued)
        metrics.reserved.labels(ns, name, queue).set(reserved)
    metrics.forget_queues(ns, name, g.dropped)
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
