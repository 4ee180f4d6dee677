"""Who sets the replicas: gpufleet's own policy (its defaults, and sizing by throughput), a model of KEDA's
Redis scaler driving an HPA, a model of Ray Serve's autoscaler for asynchronous inference, and a static fleet.
Each is a set of control loops over the engine's View; a variant is one more class and one more line in
`fleet_policies`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gpufleet import crd
from gpufleet.model import Depth, Observation
from gpufleet.policy import History, decide
from gpufleet.spec import ScalingSpec, SpecError, parse_spec
from gpufleet.throughput import Meter, measure
from gpufleet_tools.simulate.engine import Loop, Policy, View

DRAIN_WITHIN_S = 600  # gpufleet-drain's drainWithinSeconds unless told otherwise


class Gpufleet:
    """The operator's policy itself: `gpufleet.policy.decide`, called every pollIntervalSeconds with the
    depth the broker probe reads (queued in every priority list, plus reserved), the idle workers that safe
    scale-in knows of, and the throughput the operator's own meter (`gpufleet.throughput.measure`) makes of the
    workers' published `done` counters. Busy pods get a higher pod-deletion-cost, so the pods a scale-in
    removes are idle. The throughput sizes the fleet only where the spec sets drainWithinSeconds."""

    name = "gpufleet"
    marks_deletion_cost = True
    grace_s = None  # the pods' terminationGracePeriodSeconds (Setup.grace_s)

    def __init__(self, spec: ScalingSpec, slots: int = 1) -> None:
        self.spec, self.slots = spec, slots
        self.initial = self.resting = spec.min_replicas
        # An operator that has watched the idle fleet for long: nothing recent in its windows. (`seeded`, for an
        # operator that has just started, would hold back a scale-up asked for at its first tick.)
        self.history = History()
        self.meter = Meter()
        self.loops = (Loop(spec.poll_interval_seconds, self._poll),)

    def _poll(self, now: float, view: View) -> int:
        # As the operator's tick does (plan._prepare): the meter takes every reading of the state hash, the depth
        # and the pods' creation times, then decide() its measurements.
        self.meter = measure(self.meter, view.workers, now, view.queued + view.reserved, view.created)
        obs = Observation(
            now,
            Depth(view.queued, view.reserved),
            view.replicas,
            idle_workers=view.idle,
            schedulable=None,  # the simulated cluster has a GPU for every pod
            budget=None,
            throughput=self.meter.rate,
            arrival_rate=self.meter.arrival_rate,
            service_s=self.meter.service_s,
            startup_s=self.meter.startup_s,
            slots=self.slots,
            ready=view.ready,
            starting=tuple(now - t for pod, t in view.created.items() if pod not in view.workers),
        )
        decision = decide(self.spec, obs, self.history)
        self.history = decision.history
        return decision.replicas


class GpufleetDrain(Gpufleet):
    """The same policy with drainWithinSeconds set: enough workers to drain what is queued and running within
    that many seconds at the measured tasks/s per worker; targetTasksPerReplica until the meter has a rate."""

    name = "gpufleet-drain"

    def __init__(self, spec: ScalingSpec, drain_within_s: int = DRAIN_WITHIN_S, slots: int = 1) -> None:
        super().__init__(dataclasses.replace(spec, drain_within_seconds=drain_within_s), slots)


KEDA_SCALEDOBJECT = "https://keda.sh/docs/2.16/reference/scaledobject-spec/"
KEDA_REDIS = "https://keda.sh/docs/2.16/scalers/redis-lists/"
HPA = "https://kubernetes.io/docs/tasks/run-application/horizontal-pod-autoscale/"


@dataclass(frozen=True)
class KedaSettings:
    """A ScaledObject with one `redis` trigger on the Celery queue's list, and the HPA KEDA makes for it,
    with the documented defaults (each field names its source)."""

    polling_interval_s: float = 30.0  # KEDA_SCALEDOBJECT#pollinginterval
    cooldown_s: float = 300.0  # KEDA_SCALEDOBJECT#cooldownperiod
    min_replica_count: int = 0  # KEDA_SCALEDOBJECT#minreplicacount
    # KEDA_SCALEDOBJECT#maxreplicacount (default 100): set to the maximum of the fleets compared
    max_replica_count: int = 10
    list_length: int = 5  # KEDA_REDIS: listLength, the AverageValue target per replica
    activation_list_length: int = 0  # KEDA_REDIS: activationListLength
    # HPA#how-does-a-horizontalpodautoscaler-work (--horizontal-pod-autoscaler-sync-period)
    hpa_sync_s: float = 15.0
    tolerance: float = 0.1  # HPA#algorithm-details (--horizontal-pod-autoscaler-tolerance)
    scale_down_window_s: float = 300.0  # HPA#default-behavior: scaleDown.stabilizationWindowSeconds
    # HPA#default-behavior: scaleUp adds at most 100 % or 4 pods per 15 s, whichever is more; KEDA sets no
    # `behavior`, and the controller then limits each sync to max(2 x current, 4) (horizontal.go's
    # scaleUpLimitFactor and scaleUpLimitMinimum), the same at a 15 s sync.
    scale_up_factor: float = 2.0
    scale_up_minimum: int = 4


class Keda:
    """KEDA's two loops over one Redis list. It reads LLEN of the queue's own list only: it cannot see the
    tasks running (reserved) nor the other priority lists. Scale-in goes through the ReplicaSet's default
    order, blind to what a pod runs."""

    name = "keda"
    marks_deletion_cost = False
    grace_s = None  # the pods' terminationGracePeriodSeconds (Setup.grace_s)

    def __init__(self, settings: KedaSettings) -> None:
        self.s = settings
        self.initial = self.resting = settings.min_replica_count
        self.last_active: float | None = None
        self.recommendations: list[tuple[float, int]] = []
        # KEDA's own loop first: at an instant both run, the HPA sees what KEDA did.
        self.loops = (Loop(settings.polling_interval_s, self._poll), Loop(settings.hpa_sync_s, self._sync))

    def _poll(self, now: float, view: View) -> int:
        """The scale executor (pkg/scaling/executor/scale_scaledobjects.go): KEDA itself scales 0 <-> 1 and
        leaves 1 <-> N to the HPA. It goes to zero once the trigger has been inactive for cooldownPeriod,
        whatever the pods are running."""
        active = view.listed > self.s.activation_list_length
        if active:
            self.last_active = now
        if view.replicas == 0 and active:
            return max(self.s.min_replica_count, 1)
        cooled = self.last_active is None or now - self.last_active > self.s.cooldown_s
        if view.replicas > 0 and not active and self.s.min_replica_count == 0 and cooled:
            return 0
        return view.replicas

    def _sync(self, now: float, view: View) -> int:
        """One HPA sync on the External metric (pkg/controller/podautoscaler/horizontal.go and
        replica_calculator.go, GetExternalPerPodMetricReplicas)."""
        current = view.replicas
        if current == 0:
            return 0  # the HPA does not act while its target is at zero replicas
        ratio = view.listed / (self.s.list_length * current)
        wanted = (
            current if abs(ratio - 1) <= self.s.tolerance else math.ceil(view.listed / self.s.list_length)
        )
        window = now - self.s.scale_down_window_s
        self.recommendations = [(t, r) for t, r in self.recommendations if t >= window] + [(now, wanted)]
        stabilized = max(r for _, r in self.recommendations)  # scale down only to the window's highest
        up_limit = max(self.s.scale_up_factor * current, self.s.scale_up_minimum)
        hpa_min = max(self.s.min_replica_count, 1)
        return int(min(max(stabilized, hpa_min), up_limit, self.s.max_replica_count))


RAY_AUTOSCALING_CONFIG = "https://docs.ray.io/en/latest/serve/api/doc/ray.serve.config.AutoscalingConfig.html"
RAY_ADVANCED = "https://docs.ray.io/en/latest/serve/advanced-guides/advanced-autoscaling.html"
RAY_POLICY = "https://github.com/ray-project/ray/blob/master/python/ray/serve/autoscaling_policy.py"
RAY_QUEUE = "https://github.com/ray-project/ray/blob/master/python/ray/serve/_private/queue_monitor.py"
RAY_CONSTANTS = "https://github.com/ray-project/ray/blob/master/python/ray/serve/_private/constants.py"


@dataclass(frozen=True)
class RaySettings:
    """A Ray Serve @task_consumer deployment (asynchronous inference: a Celery consumer in each replica) under
    `async_inference_autoscaling_policy`, with the documented defaults (each field names its source)."""

    target_ongoing_requests: float = 2.0  # RAY_AUTOSCALING_CONFIG, RAY_ADVANCED (default 2 since Ray 2.32)
    upscale_delay_s: float = 30.0  # RAY_AUTOSCALING_CONFIG
    downscale_delay_s: float = 600.0  # RAY_AUTOSCALING_CONFIG
    # RAY_AUTOSCALING_CONFIG: None, and RAY_POLICY's _apply_delay_logic then uses downscale_delay_s for 1 -> 0
    downscale_to_zero_delay_s: float | None = None
    # RAY_AUTOSCALING_CONFIG's default is 1; 0 here, like the other fleets, so that it may release every GPU
    # (RAY_POLICY's cold-start path wakes it from zero on the first queued task)
    min_replicas: int = 0
    max_replicas: int = 10  # RAY_AUTOSCALING_CONFIG (default 1): set to the maximum of the fleets compared
    # RAY_QUEUE: the QueueMonitor pushes the queue's LLEN to the controller every
    # RAY_SERVE_ASYNC_INFERENCE_TASK_QUEUE_METRIC_PUSH_INTERVAL_S (RAY_CONSTANTS, 10 s)
    queue_push_interval_s: float = 10.0
    # RAY_CONSTANTS: CONTROL_LOOP_INTERVAL_S is 0.1 s; the model runs the controller every second, and counts
    # the delays in seconds as RAY_POLICY counts them in loops (delays shift by under a second)
    control_loop_s: float = 1.0
    graceful_shutdown_timeout_s: float = 20.0  # RAY_CONSTANTS: DEFAULT_GRACEFUL_SHUTDOWN_TIMEOUT_S


class RayServe:
    """Ray Serve's autoscaler for a task consumer (RAY_POLICY: async_inference_autoscaling_policy and its
    wrapper). The workload it sees is the queue's LLEN (RAY_QUEUE: one LLEN of the queue's own list, no
    priority lists, no reserved tasks) plus the HTTP requests in flight (none: tasks come through Celery):
    desired = ceil(LLEN / target_ongoing_requests), within [min, max]; a scale-up only after `upscale_delay_s`
    of consecutive decisions to scale up, a scale-down after `downscale_delay_s` of decisions to scale down
    (never below one but from one to zero); from zero, one replica at once when the queue is not empty (the
    cold-start path), and no decision while no replica is running. Replicas to stop are chosen starting,
    then running, blind to what they run (deployment_scheduler.get_replicas_to_stop), and a stopped replica
    finishes its work for graceful_shutdown_timeout_s before it is killed."""

    name = "ray-serve"
    marks_deletion_cost = False

    def __init__(self, settings: RaySettings) -> None:
        self.s = settings
        self.initial = self.resting = settings.min_replicas
        self.grace_s = settings.graceful_shutdown_timeout_s
        self.queue_length = 0  # the last LLEN the queue monitor pushed
        self.target: int | None = None  # the controller's target number of replicas
        self.counter = 0.0  # seconds of consecutive decisions to scale up (> 0) or down (< 0)
        self.loops = (
            Loop(settings.queue_push_interval_s, self._push),
            Loop(settings.control_loop_s, self._control),
        )

    def _push(self, now: float, view: View) -> int:
        self.queue_length = view.listed
        return view.replicas

    def _control(self, now: float, view: View) -> int:
        s = self.s
        target = view.replicas if self.target is None else self.target
        if view.ready == 0:  # the cold-start path: no replica running yet
            if self.queue_length > 0:
                target = max(1, target)
            self.target = target
            return target
        desired = math.ceil(self.queue_length / s.target_ongoing_requests)
        desired = min(max(desired, s.min_replicas), s.max_replicas)
        step = s.control_loop_s
        if desired > target:
            self.counter = max(self.counter, 0.0) + step
            if self.counter > s.upscale_delay_s:
                self.counter, target = 0.0, desired
        elif desired < target:
            self.counter = min(self.counter, 0.0) - step
            to_zero = target == 1
            delay = s.downscale_delay_s
            if to_zero and s.downscale_to_zero_delay_s is not None:
                delay = s.downscale_to_zero_delay_s
            if not to_zero:
                desired = max(1, desired)
            if self.counter < -delay:
                self.counter, target = 0.0, desired
        else:
            self.counter = 0.0
        self.target = target
        return target


class Static:
    """A fleet sized for the peak: maxReplicas pods, warm from time 0, never scaled."""

    name = "static"
    marks_deletion_cost = False
    grace_s = None
    loops: tuple[Loop, ...] = ()

    def __init__(self, replicas: int) -> None:
        self.initial = self.resting = replicas


def fleet_policies(
    spec: ScalingSpec,
    keda: KedaSettings,
    drain_within_s: int = DRAIN_WITHIN_S,
    ray: RaySettings | None = None,
    slots: int = 1,
) -> list[Policy]:
    """Fresh policies for one run each (they keep state between ticks), in the order reports show them."""
    return [
        Gpufleet(spec, slots),
        GpufleetDrain(spec, drain_within_s, slots),
        Keda(keda),
        RayServe(ray or RaySettings(max_replicas=spec.max_replicas)),
        Static(spec.max_replicas),
    ]


def _scaling_schema() -> dict[str, Any]:
    return crd.schema()["properties"]["spec"]["properties"]["scaling"]["properties"]


def _checked(name: str, text: str) -> Any:
    """One `--spec name=value` against the CRD's own schema, so the simulator refuses what `kubectl apply` would."""
    fields = _scaling_schema()
    if name not in fields:
        raise SpecError(f"spec.scaling.{name}", f"no such field; the fields are {', '.join(fields)}")
    node = fields[name]
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = text
    kinds = {"integer": (int,), "number": (int, float), "boolean": (bool,)}.get(node.get("type"), (str,))
    if isinstance(value, bool) != (bool in kinds) or not isinstance(value, kinds):
        raise SpecError(f"spec.scaling.{name}", f"must be of type {node.get('type')}, not {text!r}")
    if "minimum" in node and value < node["minimum"]:
        raise SpecError(f"spec.scaling.{name}", f"must be at least {node['minimum']}, not {value}")
    if "maximum" in node and value > node["maximum"]:
        raise SpecError(f"spec.scaling.{name}", f"must be at most {node['maximum']}, not {value}")
    return value


def gpufleet_spec(overrides: Mapping[str, str]) -> ScalingSpec:
    """The ScalingSpec a GpuTaskQueue gets from the CRD's defaults plus these fields (CRD names, text values),
    read by the operator's own spec parser."""
    scaling = {name: _checked(name, text) for name, text in overrides.items()}
    raw = {"broker": {"url": "redis://simulated:6379/0"}, "queues": ["q"], "worker": {"image": "simulated"}}
    return parse_spec({**raw, "scaling": scaling}).scaling
