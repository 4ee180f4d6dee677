"""The vocabulary that the pure core and the edges share, as plain immutable values.

What the operator observes: the broker probe produces Readings, the Kubernetes caches produce Pods and
Deployments, the tick bundles them into one Snapshot per fleet; the policy and the plan read nothing else.
What the tick decides: a Plan per fleet (with its Events, Conditions, Gauges and pod writes) and the FleetState
it carries to the next tick; what `apply` did of a plan comes back as an Outcome. Also the one table of label
and annotation keys and the one time format. No I/O here, and no import of an edge.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from gpufleet.spec import QueueSpec, SpecError, parse_spec
from gpufleet_worker.contract import WorkerState

if TYPE_CHECKING:  # types only: the policy and the meter import this module
    from gpufleet.policy import Decision, History
    from gpufleet.throughput import Meter

__all__ = [
    "DELETION_COST",
    "Condition",
    "Deployment",
    "Depth",
    "Event",
    "FleetState",
    "Gauges",
    "Observation",
    "Outcome",
    "Plan",
    "Pod",
    "PodWrite",
    "Queue",
    "Reading",
    "Snapshot",
    "Trouble",
    "WorkerState",
]

_EMPTY: Mapping = MappingProxyType({})

# ---- label and annotation keys ---------------------------------------------------------------------------------
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "gpufleet"  # its value on everything the operator creates: the watches select by it
FLEET_LABEL = "gpufleet.dev/fleet"  # the GpuTaskQueue a worker pod belongs to
BUSY_LABEL = "gpufleet.dev/busy"  # "true" on pods running a task: the busy PodDisruptionBudget selects them
DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"  # read by the ReplicaSet controller
KARPENTER_MANAGED_COST = (
    "karpenter.sh/managed-deletion-cost"  # Karpenter's PodDeletionCostManagement marks its own
)
SAFE_TO_EVICT = (
    "cluster-autoscaler.kubernetes.io/safe-to-evict"  # "false": the cluster autoscaler keeps the node
)
DO_NOT_DISRUPT = "karpenter.sh/do-not-disrupt"  # "true": Karpenter does not consolidate the node


# ---- time -----------------------------------------------------------------------------------------------------
def rfc3339(epoch: float) -> str:
    """Epoch seconds as the API writes a timestamp (2026-01-02T03:04:05Z)."""
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def epoch(stamp: str | None) -> float | None:
    """An RFC 3339 timestamp as the API serves it (2026-01-02T03:04:05Z) in epoch seconds; None if unreadable."""
    try:
        return dt.datetime.fromisoformat(stamp).timestamp() if stamp else None
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True)
class Depth:
    """What a fleet's queues hold: waiting in the broker, and delivered but not acknowledged (running)."""

    queued: int
    reserved: int

    @property
    def total(self) -> int:
        return self.queued + self.reserved


@dataclass(frozen=True)
class Reading:
    """What one probe of the broker saw for one fleet."""

    queues: Mapping[str, Depth]
    workers: Mapping[str, WorkerState]  # pod name -> state, live entries only
    stale: tuple[str, ...] = ()  # entries that expired: their workers died, maybe holding messages

    @cached_property
    def depth(self) -> Depth:
        return Depth(
            sum(d.queued for d in self.queues.values()), sum(d.reserved for d in self.queues.values())
        )


# Why a worker pod cannot start, as the kubelet (or the scheduler) says it: the typed reasons of the conditions.
IMAGE_PULL_FAILED = "ImagePullFailed"
CONTAINER_CONFIG_ERROR = "ContainerConfigError"
OOM_KILLED = "OOMKilled"
CRASH_LOOP = "CrashLoopBackOff"
UNSCHEDULABLE = "Unschedulable"
TROUBLES = (
    IMAGE_PULL_FAILED,
    CONTAINER_CONFIG_ERROR,
    OOM_KILLED,
    CRASH_LOOP,
    UNSCHEDULABLE,
)  # the first hides the next
_PULL = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull", "RegistryUnavailable"}
_CONFIG = {"CreateContainerConfigError", "CreateContainerError", "RunContainerError"}
TAIL_LINES = 3  # lines of a crashed container's termination message (its log's end) that a message quotes
TAIL_CHARS = 400


@dataclass(frozen=True)
class Trouble:
    """Why a pod's worker cannot start: a typed reason and what the kubelet or the scheduler said."""

    reason: str
    detail: str


_CREDENTIALS = re.compile(
    r"(\w+://)[^/@\s]*@"
)  # a URL's user and password: a traceback may print a broker URL


def _tail(text: str | None) -> str:
    """The last lines of a log, one line, without the credentials of any URL in them: they go to Events."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return _CREDENTIALS.sub(r"\1***@", " | ".join(lines[-TAIL_LINES:]))[-TAIL_CHARS:]


def _ended(name: str, terminated: Mapping[str, Any]) -> Trouble:
    code, why = terminated.get("exitCode"), terminated.get("reason") or "Error"
    if why == "OOMKilled":
        return Trouble(
            OOM_KILLED, f"container {name} was killed for using more memory than its limit (OOMKilled)"
        )
    tail = _tail(terminated.get("message"))
    detail = f"container {name} exited with code {code} ({why})"
    return Trouble(CRASH_LOOP, f"{detail}; its last output: {tail}" if tail else detail)


def container_trouble(status: Mapping[str, Any]) -> Trouble | None:
    """What keeps one container (a containerStatuses item) from running, by its state: None for one running, or
    merely slow to start (ContainerCreating, PodInitializing, an image pull under way)."""
    name = status.get("name") or "worker"
    state = status.get("state") or {}
    waiting = state.get("waiting") or {}
    reason, message = waiting.get("reason"), waiting.get("message") or ""
    if reason in _PULL:
        detail = f"image {status.get('image')!r} cannot be pulled ({reason})"
        return Trouble(IMAGE_PULL_FAILED, f"{detail}: {message}" if message else detail)
    if reason in _CONFIG:
        return Trouble(CONTAINER_CONFIG_ERROR, f"container {name} cannot be created ({reason}): {message}")
    ended = state.get("terminated") or (status.get("lastState") or {}).get("terminated")
    if ended is None:
        return (
            Trouble(CRASH_LOOP, f"container {name} restarts in a loop")
            if reason == "CrashLoopBackOff"
            else None
        )
    abnormal = ended.get("reason") == "OOMKilled" or ended.get("exitCode") not in (0, None)
    # Crashed, and not ready since: waiting out its back-off, just ended, or started again and not ready yet.
    if reason == "CrashLoopBackOff" or (abnormal and not status.get("ready")):
        return _ended(name, ended)
    return None


def pod_trouble(obj: Mapping[str, Any]) -> Trouble | None:
    """Why a pod's worker cannot start: its containers' states first, then the scheduler's word."""
    status = obj.get("status") or {}
    for item in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []):
        if (found := container_trouble(item)) is not None:
            return found
    gates = (obj.get("spec") or {}).get("schedulingGates")
    if gates:
        names = ", ".join(g.get("name", "?") for g in gates)
        return Trouble(UNSCHEDULABLE, f"held by scheduling gates ({names})")
    for c in status.get("conditions") or []:
        if (
            c.get("type") == "PodScheduled"
            and c.get("status") == "False"
            and c.get("reason") == "Unschedulable"
        ):
            return Trouble(UNSCHEDULABLE, c.get("message") or "no node can take it")
    return None


@dataclass(frozen=True)
class Pod:
    """A worker pod, as far as scaling cares."""

    name: str
    scheduled: bool
    unschedulable: bool  # PodScheduled=False with reason Unschedulable: no node has room (no free GPU)
    terminating: bool
    deletion_cost: str | None
    protected: bool = (
        False  # labelled busy: the busy PodDisruptionBudget and the autoscalers' annotations hold it
    )
    failed: bool = False  # phase Failed (evicted, for one): its worker is gone though the object stays
    cost_contested: bool = False  # another controller (Karpenter) manages its pod-deletion-cost
    created: float | None = None  # metadata.creationTimestamp (epoch seconds): start-up is measured from it
    trouble: Trouble | None = None  # why its worker cannot start (image, crash, configuration, no node)

    @property
    def cannot_start(self) -> bool:
        """Its worker cannot start as the pod is (image, crash, configuration): a pod waiting for a node may still
        get one, and a pod merely slow to start has no trouble at all."""
        return self.trouble is not None and self.trouble.reason != UNSCHEDULABLE and not self.terminating

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> Pod:
        meta = obj["metadata"]
        annotations = meta.get("annotations") or {}
        trouble = pod_trouble(obj)
        return cls(
            name=meta["name"],
            scheduled=bool((obj.get("spec") or {}).get("nodeName")),
            # Held by a scheduling gate (Kueue and other admission controllers) is as pending as unplaceable.
            unschedulable=trouble is not None and trouble.reason == UNSCHEDULABLE,
            terminating=bool(meta.get("deletionTimestamp")),
            deletion_cost=annotations.get(DELETION_COST),
            protected=(meta.get("labels") or {}).get(BUSY_LABEL) == "true",
            failed=(obj.get("status") or {}).get("phase") == "Failed",
            cost_contested=KARPENTER_MANAGED_COST in annotations,
            created=epoch(meta.get("creationTimestamp")),
            trouble=trouble,
        )


@dataclass(frozen=True)
class Deployment:
    """The worker Deployment as last seen: what we asked for, what it has, and why it cannot create pods."""

    replicas: int  # spec.replicas
    have: int = 0  # status.replicas
    ready: int = 0  # status.readyReplicas
    replica_failure: str | None = None  # the ReplicaFailure condition's message (admission, quota, ...)

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> Deployment:
        status = obj.get("status") or {}
        failure = next(
            (
                c.get("message") or c.get("reason") or "pods cannot be created"
                for c in status.get("conditions") or []
                if c.get("type") == "ReplicaFailure" and c.get("status") == "True"
            ),
            None,
        )
        return cls(
            replicas=obj["spec"]["replicas"],
            have=status.get("replicas") or 0,
            ready=status.get("readyReplicas") or 0,
            replica_failure=failure,
        )


@dataclass(frozen=True)
class Observation:
    """The policy's inputs for one tick. Every limit is optional: None means "not known", and then it does not
    bind."""

    now: float
    depth: Depth | None  # None: the broker could not be read
    current: int  # the Deployment's spec.replicas
    idle_workers: int | None = None  # workers known to run nothing: the most pods a scale-in may remove
    schedulable: int | None = None  # the most pods the cluster can run now, surge included
    budget: int | None = None  # the most pods this fleet's share of a fleet-wide GPU budget allows
    throughput: float | None = None  # measured tasks per second per worker, for drainWithinSeconds
    # What the fleet's own work measures (gpufleet.throughput), for targetWaitSeconds: None until measured.
    arrival_rate: float | None = None  # tasks per second into the fleet's queues
    service_s: float | None = None  # seconds one task holds a worker slot
    startup_s: float | None = None  # seconds from a pod's creation to its worker taking tasks
    slots: int = 1  # tasks one worker pod runs at once
    ready: int | None = None  # worker pods whose worker takes tasks (None: not known)
    failing: int = (
        0  # worker pods whose worker cannot start (image, crash, configuration): not about to start
    )
    starting: tuple[float, ...] = ()  # ages in seconds of the worker pods whose worker has not started yet


@dataclass(frozen=True)
class Snapshot:
    """Everything observed about one fleet in one tick, gathered before anything is decided."""

    namespace: str
    name: str
    uid: str
    generation: int
    now: float
    spec: QueueSpec | None = None  # None when the spec is invalid (then `spec_error` says why)
    spec_error: str | None = None
    secret_problem: tuple[str, str] | None = None  # (reason, message) when a Secret of spec.broker failed
    reading: Reading | None = None
    broker_error: str | None = None  # why the broker could not be read, when it could not
    deployment: Deployment | None = None  # None: it does not exist (not yet, or deleted by hand)
    pods: Mapping[str, Pod] = field(default_factory=lambda: _EMPTY)
    gone: frozenset[str] = frozenset()  # pods deleted lately: their workers' entries may still name messages

    @cached_property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)


@dataclass(frozen=True)
class Queue:
    """A GpuTaskQueue as its last create/update/resume handler saw it."""

    namespace: str
    name: str
    uid: str
    generation: int
    spec: QueueSpec | None
    spec_error: str | None = None
    written: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)  # its status at that moment

    @cached_property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    @classmethod
    def from_object(cls, body: Mapping[str, Any]) -> Queue:
        """The queue of a GpuTaskQueue object: its spec parsed, or why it cannot be."""
        meta = body["metadata"]
        try:
            spec, error = parse_spec(body.get("spec") or {}), None
        except SpecError as exc:
            spec, error = None, str(exc)
        return cls(meta["namespace"], meta["name"], meta["uid"], meta.get("generation", 0), spec, error,
                   dict(body.get("status") or {}))  # fmt: skip


# ---- what the tick decides --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    type: str  # Normal or Warning
    reason: str
    message: str


@dataclass(frozen=True)
class Condition:
    type: str
    status: bool | None  # None: Unknown
    reason: str
    message: str
    generation: int | None = None  # set on Ready: the spec generation it speaks of

    @property
    def value(self) -> str:
        return "Unknown" if self.status is None else "True" if self.status else "False"


@dataclass(frozen=True)
class FleetState:
    """What one fleet carries from a tick to the next. Only the tick's thread holds it."""

    uid: str = ""
    generation: int | None = None  # the spec generation the tick has seen
    next_probe: float = 0.0
    failures: int = 0  # broker probes failed in a row
    history: History | None = None
    meter: Meter | None = None  # None: nothing measured yet
    decision: Decision | None = None
    applied_generation: int | None = None  # the generation whose Deployment the API accepted
    rejected: tuple[int, str] | None = None  # (generation, the API's message) of a Deployment it refused
    warned: frozenset[str] = frozenset()  # Warning Events posted and still true, each posted once
    written: Mapping[str, Any] = field(default_factory=dict)  # the status as last written
    written_at: float = -math.inf  # when it was written
    last_scale_time: str | None = None
    planned_at: float = -math.inf  # when the fleet was last planned (not merely found at rest)
    planned_on: tuple | None = None  # what that plan was made from: (generation, reading, Deployment)
    restored: tuple[
        tuple[str, int], ...
    ] = ()  # (pod, tasks) put back by the last apply: the next plan says so

    @classmethod
    def first(cls, uid: str, written: Mapping[str, Any]) -> FleetState:
        """A fleet first seen (an operator start): continue from the status written before."""
        return cls(uid=uid, written=dict(written), last_scale_time=written.get("lastScaleTime"))

    def rescheduled(self, next_probe: float) -> FleetState:
        """This state, probed next at `next_probe`: what a fleet at rest changes, at every poll of thousands of
        fleets (`dataclasses.replace` copies field by field through __init__, several times slower)."""
        new = object.__new__(FleetState)
        new.__dict__.update(self.__dict__)
        new.__dict__["next_probe"] = next_probe
        return new

    @property
    def reresolve(self) -> bool:
        """Re-read the broker's Secrets before the next probe: they may have been rotated."""
        return self.failures > 1


@dataclass(frozen=True)
class Gauges:
    """The fleet's metric values after this tick."""

    queues: Mapping[str, tuple[int, int]]  # queue -> (queued, reserved)
    desired: int | None
    replicas: int
    busy: int | None
    ready: int | None  # workers taking tasks (None: not known, the broker unread)
    failing: Mapping[str, int]  # reason -> worker pods that cannot start for it
    direction: str | None  # up, down or hold: one more decision counted; None when nothing was decided
    limited_by: str
    probe_failed: bool
    dropped: tuple[str, ...] = ()  # queues no longer in the fleet: their series go


@dataclass(frozen=True)
class PodWrite:
    """One worker pod's metadata patch, and what the pod then is (for the cache, before the watch says so)."""

    metadata: Mapping[str, Any]
    known: Mapping[str, Any]


@dataclass(frozen=True)
class Plan:
    """Everything that should be true of one fleet after this tick. It says what it is: `at_rest` (nothing to
    write: the fleet is only rescheduled), `needs_broker` (tasks of dead workers go back first) and `writes`."""

    deployment: dict[str, Any] | None  # the Deployment to apply (server-side); None: nothing to write
    annotations: Mapping[str, str]  # pod -> pod-deletion-cost, written before the Deployment
    scale_event: Event | None  # posted once the Deployment apply went through
    events: tuple[Event, ...]
    status: dict[str, Any] | None  # the merge patch of the status; None when nothing changed
    gauges: Gauges | None  # None: the metrics keep their values (a fleet at rest)
    state: FleetState  # what the fleet carries into the next tick once this plan is written
    pdb: dict[str, Any] | None = None  # the busy workers' PodDisruptionBudget, applied with the Deployment
    # The ResourceClaimTemplate of a claim-based fleet, applied before the Deployment whose pods claim from it.
    claim_template: dict[str, Any] | None = None
    protect: Mapping[str, bool] = field(default_factory=dict)  # pod -> protect (busy) or release (idle)
    pods: Mapping[str, PodWrite] = field(default_factory=dict)  # the pod patches that `protect` and
    # `annotations` make, in the order written
    # Workers whose messages go back to their queues: (pod, only if its entry is still expired).
    restore: tuple[tuple[str, bool], ...] = ()
    at_rest: bool = False

    @property
    def needs_broker(self) -> bool:
        return bool(self.restore)

    @property
    def writes(self) -> bool:
        """Whether applying it sends anything to the API or the broker."""
        return bool(self.deployment or self.pdb or self.claim_template or self.status or self.events or self.pods
                    or self.restore)  # fmt: skip


@dataclass(frozen=True)
class Outcome:
    """What `apply` did of one fleet's plan; the next plan reads it (plan.settled)."""

    rejected: str | None = None  # the API refused the Deployment (its message): nothing after it was written
    restored: tuple[tuple[str, int], ...] = ()  # (pod, tasks put back) for each worker whose tasks went back
    failed: BaseException | None = None  # a write failed (the API, this replica no longer leading): retried
