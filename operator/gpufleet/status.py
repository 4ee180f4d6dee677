"""Pure builders of a GpuTaskQueue's status: typed conditions, their rendering (transition times kept), the
status body, and the merge patch that writes only what changed."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from gpufleet.budget import Share
from gpufleet.model import Condition, Deployment, Pod, Reading
from gpufleet.policy import Decision
from gpufleet.scalein import idle_pods

BROKER_REACHABLE = "BrokerReachable"
READY = "Ready"
SCALING_LIMITED = "ScalingLimited"
SCALE_IN_PROTECTED = "ScaleInProtected"
WORKERS_FAILING = "WorkersFailing"


def render(conditions: Sequence[Condition], previous: Sequence[Mapping[str, Any]], stamp: str) -> list[dict]:
    """The conditions as the API stores them; lastTransitionTime moves only when a condition's status does."""
    old = {c.get("type"): c for c in previous}
    out = []
    for c in conditions:
        was = old.get(c.type) or {}
        since = (
            was["lastTransitionTime"]
            if was.get("status") == c.value and was.get("lastTransitionTime")
            else stamp
        )
        item = {"type": c.type, "status": c.value, "reason": c.reason, "message": c.message,
                "lastTransitionTime": since}  # fmt: skip
        if c.generation is not None:
            item["observedGeneration"] = c.generation
        out.append(item)
    return out


def condition(conditions: Sequence[Mapping[str, Any]], type_: str) -> Mapping[str, Any] | None:
    return next((c for c in conditions if c.get("type") == type_), None)


def camel(word: str) -> str:
    """limited_by names (camelCase) as condition reasons (CamelCase)."""
    return word[:1].upper() + word[1:]


# What a status must show at once; the rest (depths, busy and idle counts, measured rates, the decision's wording)
# are live figures, refreshed at most every REFRESH_SECONDS while nothing else changes: a fleet under load would
# otherwise patch its status at every poll.
AT_ONCE = ("observedGeneration", "deployment", "replicas", "readyReplicas", "gpus", "desiredReplicas",
           "pendingPods", "lastScaleTime", "workers", "failingPods")  # fmt: skip
REFRESH_SECONDS = 5.0


def _essence(status: Mapping[str, Any]) -> tuple:
    conditions = tuple(
        (c.get("type"), c.get("status"), c.get("reason")) for c in status.get("conditions") or ()
    )
    share = (status.get("gpuShare") or {}).get("gpus")
    return tuple(status.get(k) for k in AT_ONCE) + (conditions, share)


def only_figures_changed(written: Mapping[str, Any], status: Mapping[str, Any]) -> bool:
    """True when `status` differs from what was written in its live figures alone."""
    return _essence(written) == _essence(status)


def merge_patch(written: Mapping[str, Any], status: Mapping[str, Any]) -> dict[str, Any] | None:
    """The merge patch from what was written to `status`; None when they are equal. A merge patch keeps the
    keys it does not name, so what is no longer there (a key, a queue) is named with None."""
    if dict(status) == dict(written):
        return None
    patch = {key: None for key in written if key not in status} | dict(status)
    if "queues" in status:
        gone = {q: None for q in written.get("queues") or {} if q not in status["queues"]}
        patch["queues"] = {**gone, **status["queues"]}
    return patch


def body(
    *,
    generation: int,
    conditions: list[dict],
    deployment: str,
    replicas: Deployment | None,
    gpus_per_pod: int,
    reading: Reading | None,
    pods: Mapping[str, Pod],
    throughput: float | None,
    share: Share | None,
    budget: int | None,
    decision: Decision | None,
    last_scale_time: str | None,
    arrival_rate: float | None = None,
    service_s: float | None = None,
    startup_s: float | None = None,
    ready_workers: int | None = None,
) -> dict[str, Any]:
    """The status subresource of one GpuTaskQueue, from what was observed and decided in one tick."""
    status: dict[str, Any] = {"observedGeneration": generation, "conditions": conditions}
    if replicas is not None:
        status |= {
            "deployment": deployment,
            "replicas": replicas.have,
            "readyReplicas": replicas.ready,
            "gpus": replicas.have * gpus_per_pod,
        }
    if reading is not None:
        depth = reading.depth
        status |= {
            "queued": depth.queued,
            "reserved": depth.reserved,
            "queues": {q: {"queued": d.queued, "reserved": d.reserved} for q, d in reading.queues.items()},
            "busyWorkers": sum(1 for w in reading.workers.values() if w.busy),
            "idleWorkers": len(idle_pods(pods, reading.workers)),
            "pendingPods": sum(1 for p in pods.values() if p.unschedulable and not p.terminating),
            "failingPods": sum(
                1 for name, p in pods.items() if p.cannot_start and name not in reading.workers
            ),
        }
        if throughput is not None:
            status["throughput"] = f"{throughput:.2g}"
    # What the wait target sizes by, kept while the broker is away (the start-up is read back after a restart).
    load = {"arrivalRate": arrival_rate, "serviceSeconds": service_s, "startupSeconds": startup_s}
    status |= {key: f"{v:.2g}" if v < 100 else f"{v:.0f}" for key, v in load.items() if v is not None}
    if share is not None:
        status["gpuShare"] = {"gpus": share.gpus, "budget": budget, "reason": share.reason}
    if decision is not None:
        status |= {"desiredReplicas": decision.replicas, "reason": decision.reason}
        if decision.history.gaps:  # what the policy learned: it keeps a warm pod only if these are short
            status["idleGaps"] = ", ".join(f"{g:.0f}" for g in decision.history.gaps)
    desired = (
        decision.replicas if decision is not None else replicas.replicas if replicas is not None else None
    )
    ready = ready_workers if ready_workers is not None else replicas.ready if replicas is not None else None
    if desired is not None and ready is not None:
        status["workers"] = f"{ready}/{desired}"  # kubectl get's WORKERS column
    if last_scale_time:
        status["lastScaleTime"] = last_scale_time
    return status
