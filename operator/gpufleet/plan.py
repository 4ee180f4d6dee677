"""The tick's decision, pure: from one Snapshot per fleet (and what each fleet carries between ticks) to a Plan
that says everything that should be true afterwards. `apply` then writes only what the Plan names, and what it
did comes back as an Outcome that `settled` turns into the state the next plan starts from.

No I/O and no clock: time comes in with the snapshot, and what a fleet remembers comes in as a FleetState and
goes out as a new one.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from gpufleet import model
from gpufleet import status as st
from gpufleet.budget import Claim, Share, divide
from gpufleet.model import (
    KARPENTER_MANAGED_COST,
    Condition,
    Event,
    FleetState,
    Gauges,
    Observation,
    Outcome,
    Plan,
    Pod,
    PodWrite,
    Snapshot,
)
from gpufleet.policy import Decision, Recommendation, decide, recommend, seeded
from gpufleet.resources import (
    BUSY_DELETION_COST,
    busy_pdb,
    claim_template,
    deployment,
    deployment_name,
    pod_metadata,
)
from gpufleet.scalein import changed_annotations, deletion_costs, idle_pods
from gpufleet.spec import QueueSpec
from gpufleet.throughput import Meter, measure, resumed

MAX_BACKOFF_SECONDS = 30.0
Key = tuple[str, str]


# A worker idle this long loses its protection; a steady stream of short tasks keeps it protected, so the
# protection is written when a worker starts or stops working, not at every task.
RELEASE_AFTER_IDLE_SECONDS = 10.0


def plan_tick(
    snapshots: Sequence[Snapshot],
    states: Mapping[Key, FleetState],
    resting: Mapping[Key, QueueSpec],
    gpu_budget: int | None,
) -> dict[Key, Plan]:
    """Plans for the fleets due this tick. `resting` are the other fleets: they still claim their share of the
    GPU budget, at what they last asked for."""
    prepared, quiet = {}, {}
    for s in snapshots:
        state = states.get(s.key) or FleetState()
        if at_rest(s, state):
            quiet[s.key] = _rest(s, state)
        else:
            prepared[s.key] = _prepare(s, state)
    shares: dict = {}
    if gpu_budget is not None:
        claims = [_claim(key, p.snap.spec, p.demand) for key, p in prepared.items() if p.snap.spec]
        holding = {**resting, **{s.key: s.spec for s in snapshots if s.key in quiet}}
        for key, spec in holding.items():
            last = (states.get(key) or FleetState()).decision
            claims.append(_claim(key, spec, last.recommendation if last else spec.scaling.min_replicas))
        shares = divide(gpu_budget, claims)
    return quiet | {key: _plan(p, shares.get(key), gpu_budget) for key, p in prepared.items()}


# A fleet at rest is still planned this often: time alone moves its measured figures and the policy's windows.
REPLAN_SECONDS = 30.0


def at_rest(snap: Snapshot, state: FleetState) -> bool:
    """Whether planning this fleet now would change nothing: it is idle (nothing queued or running, no worker
    and no pod, none deleted lately) at its minReplicas, which it last decided and has, its Deployment applied
    for this spec; it reads as it did when it was last planned, and that was less than REPLAN_SECONDS ago.

    Most fleets of a large cluster wait most of the time: planning each of them at every poll (the policy, the
    meter, the status body and its comparison, the metrics) was most of the operator's work, for nothing. A
    task queued, a pod, a worker, a changed spec or Deployment, or a failed probe plans the fleet at once."""
    r, d, spec = snap.reading, snap.deployment, snap.spec
    return (
        spec is not None
        and r is not None
        and d is not None
        and state.decision is not None
        and r.depth.total == 0
        and not r.workers
        and not r.stale
        and not snap.pods
        and not snap.gone
        and d.replicas == d.have == state.decision.replicas == spec.scaling.min_replicas
        and state.applied_generation == snap.generation
        and state.rejected is None
        and state.failures == 0
        and not state.restored
        and state.planned_on == (snap.generation, r, d)
        and snap.now - state.planned_at < REPLAN_SECONDS
    )


def _rest(snap: Snapshot, state: FleetState) -> Plan:
    """The plan of a fleet at rest: nothing to write; probed again at its next poll."""
    state = state.rescheduled(next_poll(snap.now, snap.spec.scaling.poll_interval_seconds, snap.uid))
    return Plan(deployment=None, annotations={}, scale_event=None, events=(), status=None, gauges=None,
                state=state, at_rest=True)  # fmt: skip


def next_poll(now: float, poll: float, uid: str) -> float:
    """When a fleet is probed next: at its own phase of its poll interval, drawn from its uid. Fleets applied
    together would otherwise be probed together for ever: every tick would read and plan all of them at once, and
    a task would wait for the whole of such a tick; spread, each tick takes a few of them."""
    phase = zlib.crc32(uid.encode()) / 2**32 * poll
    return now + ((phase - now) % poll or poll)


def _claim(key: Key, spec: QueueSpec, pods: int) -> Claim:
    s = spec.scaling
    return Claim(key, spec.worker.gpus_per_pod, s.min_replicas, pods, s.priority, s.weight)


@dataclass(frozen=True)
class _Prepared:
    """A fleet's snapshot with its Observation worked out: the same for its budget demand and its decision."""

    snap: Snapshot
    state: FleetState  # with the history seeded, the probe's backoff and the meter updated
    obs: Observation | None  # None: nothing to decide (invalid spec, or no Deployment yet)
    recommended: Recommendation | None = None  # worked out once: the budget's claim and the decision's start

    @property
    def demand(self) -> int:
        return self.recommended.pods if self.recommended else 0


def _prepare(snap: Snapshot, state: FleetState) -> _Prepared:
    spec = snap.spec
    if state.meter is None:
        state = replace(state, meter=Meter())
    if spec is None:
        # Nothing to probe until the spec changes (a new generation makes the fleet due again).
        return _Prepared(snap, replace(state, next_probe=math.inf), None)
    poll = spec.scaling.poll_interval_seconds
    if snap.deployment is None:
        return _Prepared(snap, replace(state, next_probe=next_poll(snap.now, poll, snap.uid)), None)
    current = snap.deployment.replicas
    history = state.history or seeded(snap.now, current)
    if snap.reading is None:
        failures = state.failures + 1
        backoff = min(poll * 2**failures, MAX_BACKOFF_SECONDS)
        state = replace(state, history=history, failures=failures, next_probe=snap.now + backoff)
        obs = Observation(now=snap.now, depth=None, current=current)
        return _Prepared(snap, state, obs, recommend(spec.scaling, obs, history))
    pods, workers = snap.pods, snap.reading.workers
    live = {name: p for name, p in pods.items() if not p.terminating}
    created = {name: p.created for name, p in live.items() if p.created is not None}
    meter = resumed(state.meter, state.written.get("startupSeconds"))
    meter = measure(meter, workers, snap.now, snap.reading.depth.total, created)
    blocked = any(p.unschedulable and not p.terminating for p in pods.values())
    scheduled = sum(1 for p in pods.values() if p.scheduled and not p.terminating)
    obs = Observation(
        now=snap.now,
        depth=snap.reading.depth,
        current=current,
        idle_workers=len(idle_pods(pods, workers)) if pods else None,
        schedulable=scheduled + spec.scaling.gpu_surge if blocked else None,
        throughput=meter.rate,
        arrival_rate=meter.arrival_rate,
        service_s=meter.service_s,
        startup_s=meter.startup_s,
        slots=spec.worker.slots,
        ready=sum(1 for name in live if name in workers) if pods else None,
        failing=sum(1 for name, p in live.items() if p.cannot_start and name not in workers),
        # Pods with no node for their GPU, or that cannot start, are not about to start: the policy counts them as
        # just asked for.
        starting=tuple(
            snap.now - t
            for name, t in created.items()
            if name not in workers and not live[name].unschedulable and not live[name].cannot_start
        ),
    )
    next_probe = next_poll(snap.now, poll, snap.uid)
    state = replace(state, history=history, meter=meter, failures=0, next_probe=next_probe)
    return _Prepared(snap, state, obs, recommend(spec.scaling, obs, history))


def _plan(p: _Prepared, share: Share | None, gpu_budget: int | None) -> Plan:
    snap, state, spec = p.snap, p.state, p.snap.spec
    stamp = model.rfc3339(snap.now)
    decision = None
    if p.obs is not None:
        budget = share.pods if share else None
        decision = decide(spec.scaling, replace(p.obs, budget=budget), state.history, p.recommended)
    current = snap.deployment.replicas if snap.deployment else None

    rejected = state.rejected if state.rejected and state.rejected[0] == snap.generation else None
    body, pdb, template, annotations, scale_event = None, None, None, {}, None
    if spec is not None and rejected is None:
        replicas = (
            decision.replicas if decision else current if current is not None else spec.scaling.min_replicas
        )
        if current is None or replicas != current or state.applied_generation != snap.generation:
            body = deployment(spec, namespace=snap.namespace, name=snap.name, uid=snap.uid, replicas=replicas)
        if body is not None and (current is None or state.applied_generation != snap.generation):
            # It names no replica count: applied with a new Deployment or spec, not one more write (ahead of the
            # Deployment's) at every scale.
            pdb = busy_pdb(namespace=snap.namespace, name=snap.name, uid=snap.uid)
            template = claim_template(spec, namespace=snap.namespace, name=snap.name, uid=snap.uid)
        if decision and current is not None and decision.replicas != current:
            up = decision.replicas > current
            scale_event = Event("Normal", "ScaledUp" if up else "ScaledDown", decision.reason)
        if decision and current is not None and decision.replicas < current:
            workers = snap.reading.workers if snap.reading else {}
            annotations = changed_annotations(snap.pods, deletion_costs(snap.pods, workers, snap.now))

    failing = _failing(snap)
    conditions = _conditions(snap, decision, rejected, failing)
    events, warned = _events(snap, conditions, state)
    events += _restored(state)
    rendered = st.render(conditions, state.written.get("conditions") or [], stamp)
    last_scale = stamp if scale_event else state.last_scale_time
    throughput = state.meter.rate if spec and spec.scaling.drain_within_seconds else None
    status = st.body(
        generation=snap.generation, conditions=rendered, deployment=deployment_name(snap.name),
        replicas=snap.deployment, gpus_per_pod=spec.worker.gpus_per_pod if spec else 0, reading=snap.reading,
        pods=snap.pods, throughput=throughput, share=share, budget=gpu_budget, decision=decision,
        last_scale_time=last_scale, arrival_rate=state.meter.arrival_rate, service_s=state.meter.service_s,
        startup_s=state.meter.startup_s, ready_workers=_ready(snap),
    )  # fmt: skip
    patch = st.merge_patch(state.written, status)
    if patch is not None and st.only_figures_changed(state.written, status):
        if snap.now - state.written_at < st.REFRESH_SECONDS:
            patch = None
    creating = body is not None and snap.deployment is None
    if creating:
        # The status of a new fleet is written once, at the next tick (at once), with its Deployment: not first
        # without it and again a second later, twice the writes when thousands of queues are applied together.
        patch = None
    new_state = replace(
        state,
        next_probe=snap.now if creating else state.next_probe,
        # The policy's memory (its windows, the idle timer, its last steps) goes on to the next tick.
        history=decision.history if decision else state.history,
        decision=decision or state.decision,
        applied_generation=snap.generation if body is not None else state.applied_generation,
        warned=warned,
        written=status if patch is not None else state.written,
        written_at=snap.now if patch is not None else state.written_at,
        last_scale_time=last_scale,
        planned_at=snap.now,
        planned_on=(snap.generation, snap.reading, snap.deployment),
        restored=(),
    )
    protect = _protection(snap) if spec is not None else {}
    return Plan(
        deployment=body,
        pdb=pdb,
        claim_template=template,
        protect=protect,
        pods=_pod_writes(protect, annotations),
        restore=_orphans(snap),
        annotations=annotations,
        scale_event=scale_event,
        events=events,
        status=patch,
        gauges=_gauges(snap, decision, current, failing, state.written),
        state=new_state,
    )


def settled(before: FleetState, plan: Plan, outcome: Outcome) -> FleetState:
    """What a fleet carries into the next tick once `apply` wrote `plan` (`before`: what it carried into this
    one). A refused Deployment undoes the whole plan: the fleet is planned again at once, knowing the refusal,
    which it then shows (DeploymentRejected) until its spec changes. Tasks put back are told by the next plan,
    made at once."""
    if outcome.failed is not None:
        # Not all was written: the fleet is planned again from where it was. What it measured is kept: the tasks
        # seen finishing are facts of the broker, whatever the API said. Dropped, the next reading would count
        # the tasks running at the last one kept as running through every failed tick (an API server away for
        # seconds read a 4 s task as 1.6 s, and the fleet was held short of a backlog).
        return replace(before, meter=plan.state.meter, restored=before.restored + outcome.restored)
    if outcome.rejected is not None:
        return replace(before, rejected=(before.generation, outcome.rejected), applied_generation=None,
                       next_probe=0.0, restored=before.restored + outcome.restored)  # fmt: skip
    if outcome.restored:  # planned again at once: its Event follows within a tick
        return replace(plan.state, restored=outcome.restored, next_probe=0.0)
    return plan.state


def _restored(state: FleetState) -> tuple[Event, ...]:
    return tuple(
        Event("Normal", "TasksRestored",
              f"put back {n} task(s) held by worker {pod}, which is gone; they run again on another worker")
        for pod, n in state.restored
    )  # fmt: skip


def _pod_writes(protect: Mapping[str, bool], annotations: Mapping[str, str]) -> dict[str, PodWrite]:
    """Each pod's metadata patch, pods in name order, and what the cache then knows of it: a protected pod's
    deletion cost is the busy one unless a scale-in named another."""
    out = {}
    for pod in sorted(set(protect) | set(annotations)):
        on, cost = protect.get(pod), annotations.get(pod)
        known: dict = {"protected": on} if on is not None else {}
        known["deletion_cost"] = cost or (BUSY_DELETION_COST if on else None)
        out[pod] = PodWrite(pod_metadata(on, cost), known)
    return out


def _orphans(snap: Snapshot) -> tuple[tuple[str, bool], ...]:
    """Workers that are gone while their entry may still name messages: pods seen deleted or failed (put back
    at once), and entries that expired (put back if still expired when the script runs)."""
    if snap.reading is None:
        return ()
    failed = {name for name, pod in snap.pods.items() if pod.failed}
    dead = sorted(set(snap.reading.workers) & (snap.gone | failed))
    # An expired entry whose pod is still there, not failed, is a worker cut off from the broker (a partition:
    # after a blackhole every entry has expired), or one that hangs, which its liveness probe restarts and its
    # next container puts back what it held. Not ours to put back: that worker may be running those tasks.
    expired = [n for n in snap.reading.stale if n not in dead and (n not in snap.pods or n in failed)]
    return tuple((name, False) for name in dead) + tuple((n, True) for n in expired)


def _protection(snap: Snapshot) -> dict[str, bool]:
    """Pods whose protection from eviction and consolidation should change: on as soon as their worker is busy,
    off once it has been idle for RELEASE_AFTER_IDLE_SECONDS (or has no entry: not started, or gone)."""
    if snap.reading is None:
        return {}  # not known: change nothing
    out = {}
    for name, pod in snap.pods.items():
        if pod.terminating:
            continue
        w = snap.reading.workers.get(name)
        if w is not None and w.busy:
            want = True
        else:
            want = w is not None and pod.protected and snap.now - w.since < RELEASE_AFTER_IDLE_SECONDS
        if want != pod.protected:
            out[name] = want
    return out


def _problem(
    snap: Snapshot, rejected: tuple[int, str] | None, failing: list[tuple[str, list[str]]]
) -> tuple[str, str] | None:
    """What stops this fleet from being scaled as asked, the most basic first."""
    if snap.spec_error is not None:
        return "InvalidSpec", snap.spec_error
    if snap.secret_problem is not None:
        return snap.secret_problem
    if rejected is not None:
        return "DeploymentRejected", f"the worker Deployment was refused: {rejected[1]}"
    if snap.deployment is not None and snap.deployment.replica_failure:
        return "PodsNotCreated", f"the worker pods cannot be created: {snap.deployment.replica_failure}"
    if _ready(snap) == 0 and failing and failing[0][0] != model.UNSCHEDULABLE:
        return failing[0][0], f"no worker runs: {_failing_message(snap, failing)}"
    return None


def _ready(snap: Snapshot) -> int | None:
    """Workers taking tasks: the fleet's pods whose worker reports to the broker (None: the broker unread)."""
    if snap.reading is None:
        return None
    return sum(1 for name, p in snap.pods.items() if name in snap.reading.workers and not p.terminating)


# What a user does about each cause.
_ADVICE = {
    model.IMAGE_PULL_FAILED: "fix spec.worker.image, or let the nodes pull it (the registry's credentials in "
    "spec.worker.imagePullSecrets)",
    model.CONTAINER_CONFIG_ERROR: "create the Secret or ConfigMap (or its key) that spec.worker.env names, or fix "
    "the reference",
    model.OOM_KILLED: "raise spec.worker.resources.limits.memory, or make its tasks use less",
    model.CRASH_LOOP: "the worker exits as it starts: check spec.worker.celeryApp (its module must import in the "
    "image) and the pod's log (kubectl logs --previous)",
    model.UNSCHEDULABLE: "add nodes with free GPUs, or check spec.worker.nodeSelector and tolerations (and "
    "spec.worker.claim: its device class and selectors must match devices the cluster has)",
}


def _failing(snap: Snapshot) -> list[tuple[str, list[str]]]:
    """What keeps worker pods from starting, the cause to fix first first (model.TROUBLES): (reason, its pods by name). A pod whose
    worker reports to the broker is not counted, whatever its containers' last state."""
    workers = snap.reading.workers if snap.reading else {}
    by_reason: dict[str, list[str]] = {}
    for name in sorted(snap.pods):
        pod: Pod = snap.pods[name]
        if pod.trouble is not None and not pod.terminating and name not in workers:
            by_reason.setdefault(pod.trouble.reason, []).append(name)
    return [(reason, by_reason[reason]) for reason in model.TROUBLES if reason in by_reason]


def _failing_message(snap: Snapshot, failing: list[tuple[str, list[str]]]) -> str:
    """The first cause, counted, with one of its pods, what the kubelet or the scheduler says, and the fix."""
    reason, names = failing[0]
    live = sum(1 for p in snap.pods.values() if not p.terminating)
    if reason == model.UNSCHEDULABLE:
        what, held = "wait for a node", ""
    else:
        what, held = "cannot start", "; no more pods are asked for until a worker starts"
    detail = snap.pods[names[0]].trouble.detail
    return (
        f"{len(names)} of {live} worker pods {what} ({reason}); pod {names[0]}: {detail}. "
        f"To fix: {_ADVICE[reason]}{held}"
    )


def _conditions(
    snap: Snapshot, decision: Decision | None, rejected, failing: list[tuple[str, list[str]]]
) -> list[Condition]:
    """Every condition, derived afresh from this tick's snapshot and decision."""
    problem = _problem(snap, rejected, failing)
    if snap.spec is None:
        broker = Condition(st.BROKER_REACHABLE, None, "NotProbed", "the spec is invalid; nothing is probed")
    elif snap.reading is not None:
        broker = Condition(st.BROKER_REACHABLE, True, "Probed", "the broker answered the last probe")
    elif snap.broker_error is not None:
        reason = snap.secret_problem[0] if snap.secret_problem else "ConnectionFailed"
        broker = Condition(st.BROKER_REACHABLE, False, reason, snap.broker_error)
    else:
        broker = Condition(st.BROKER_REACHABLE, None, "NotProbed", "the worker Deployment is being applied")
    if problem is not None:
        ready = Condition(st.READY, False, *problem, generation=snap.generation)
    elif broker.status is False:
        ready = Condition(st.READY, False, "BrokerUnreachable", "the broker cannot be read; replicas are held",
                             generation=snap.generation)  # fmt: skip
    else:
        ready = Condition(st.READY, True, "Scaling", "the worker Deployment is applied and scaled from the broker",
                             generation=snap.generation)  # fmt: skip
    out = [broker, ready]
    if snap.spec is not None:
        if any(pod.cost_contested for pod in snap.pods.values()):
            out.append(Condition(st.SCALE_IN_PROTECTED, False, "DeletionCostContested",
                                    f"another controller manages the pod-deletion-cost of this fleet's pods "
                                    f"({KARPENTER_MANAGED_COST}: Karpenter's PodDeletionCostManagement), so a "
                                    "scale-in may remove busy workers; turn that feature off for these pods"))  # fmt: skip
        else:
            out.append(Condition(st.SCALE_IN_PROTECTED, True, "Protected",
                                    "busy workers are kept from eviction (busy PodDisruptionBudget) and node "
                                    "consolidation, and a scale-in removes idle workers first"))  # fmt: skip
        if failing:
            out.append(Condition(st.WORKERS_FAILING, True, failing[0][0], _failing_message(snap, failing)))
        else:
            out.append(
                Condition(st.WORKERS_FAILING, False, "NoneFailing", "no worker pod is failing to start")
            )
    if decision is not None:
        limited = decision.limited_by
        out.append(
            Condition(
                st.SCALING_LIMITED,
                limited is not None,
                st.camel(limited) if limited else "WithinLimits",
                decision.reason if limited else "no limit holds the fleet back",
            )  # fmt: skip
        )
    return out


# Warnings about a state that lasts are posted once per episode, whatever their changing details; the others
# once per distinct message (a spec fixed one way and broken another deserves a new Warning).
_EPISODES = ("BrokerUnreachable", "PodsNotCreated")


def _events(snap: Snapshot, conditions: Iterable[Condition], state: FleetState) -> tuple[tuple, frozenset]:
    """The Events this tick should post, and the Warnings that then stand posted."""
    by_type = {c.type: c for c in conditions}
    broker, ready = by_type[st.BROKER_REACHABLE], by_type[st.READY]
    events: list[Event] = []
    warned = set()
    if broker.status is False:
        warned.add("BrokerUnreachable")
        if "BrokerUnreachable" not in state.warned:
            events.append(Event("Warning", "BrokerUnreachable", f"{snap.broker_error}; holding the replicas until it answers"))  # fmt: skip
    elif broker.status is True:
        was = st.condition(state.written.get("conditions") or [], st.BROKER_REACHABLE)
        if was and was.get("status") == "False":
            events.append(Event("Normal", "BrokerReachable", "the broker answers again; scaling resumed"))
    workers = by_type.get(st.WORKERS_FAILING)
    was = st.condition(state.written.get("conditions") or [], st.WORKERS_FAILING) or {}
    if workers is not None and workers.status is True:
        # One Warning per cause and episode, naming a pod and its state; Ready, when it says the same, adds none.
        # An episode the status already shows was warned of, by this replica or before a restart or handover.
        key = f"{st.WORKERS_FAILING}: {workers.reason}"
        warned.add(key)
        shown = was.get("status") == "True" and was.get("reason") == workers.reason
        if key not in state.warned and not shown:
            events.append(Event("Warning", workers.reason, workers.message))
    elif workers is not None:
        if was.get("status") == "True":
            events.append(Event("Normal", "WorkersStarted", "no worker pod is failing to start any more"))
    if ready.status is False and ready.reason not in (
        "BrokerUnreachable",
        workers.reason if workers else None,
    ):
        key = ready.reason if ready.reason in _EPISODES else f"{ready.reason}: {ready.message}"
        warned.add(key)
        if key not in state.warned:
            events.append(Event("Warning", ready.reason, ready.message))
    guard = by_type.get(st.SCALE_IN_PROTECTED)
    if guard is not None and guard.status is False:
        warned.add(guard.reason)
        if guard.reason not in state.warned:
            events.append(Event("Warning", guard.reason, guard.message))
    return tuple(events), frozenset(warned)


def _gauges(
    snap: Snapshot,
    decision: Decision | None,
    current: int | None,
    failing: list[tuple[str, list[str]]],
    written: Mapping[str, Any],
) -> Gauges:
    reading = snap.reading
    queues = snap.spec.queues if snap.spec else ()
    direction = None
    if decision is not None and current is not None:
        direction = "up" if decision.replicas > current else "down" if decision.replicas < current else "hold"
    return Gauges(
        queues={q: (d.queued, d.reserved) for q, d in reading.queues.items()} if reading else {},
        desired=decision.replicas if decision else None,
        replicas=snap.deployment.have if snap.deployment else 0,
        busy=sum(w.busy for w in reading.workers.values()) if reading else None,
        ready=_ready(snap),
        failing={reason: len(names) for reason, names in failing},
        direction=direction,
        limited_by=(decision.limited_by if decision else None) or "none",
        probe_failed=snap.spec is not None and snap.deployment is not None and reading is None,
        dropped=tuple(q for q in written.get("queues") or () if q not in queues),
    )
