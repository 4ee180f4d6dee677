"""Orchestration: reconcile a GpuTaskQueue into its Deployment, and on every tick probe, decide and write.

The decisions are made by pure functions (spec, policy, resources, status); this module gathers their inputs,
applies their results, and writes to the API only what changed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

from gpufleet import metrics
from gpufleet.broker import BrokerUnreachable, Connection, Layout, ProbePool, Reading, Request
from gpufleet.budget import Claim, Share, divide
from gpufleet.kube import Forbidden, Kube, Rejected, now_rfc3339
from gpufleet.policy import Decision, History, Observation, decide, seeded
from gpufleet.resources import FLEET_LABEL, deployment, deployment_name
from gpufleet.scalein import DELETION_COST, Pod, changed_annotations, deletion_costs, idle_pods
from gpufleet.spec import QueueSpec, SpecError, parse_spec
from gpufleet.status import BROKER_REACHABLE, READY, SCALING_LIMITED, camel, condition, set_condition
from gpufleet.throughput import Meter, measure

log = logging.getLogger(__name__)
MAX_BACKOFF_SECONDS = 30.0


@dataclass
class Fleet:
    """What the operator keeps in memory for one GpuTaskQueue."""

    namespace: str
    name: str
    uid: str = ""
    generation: int = 0
    spec: QueueSpec | None = None
    connection: Connection | None = None
    problem: tuple[str, str] | None = None  # (reason, message) that stops this fleet from being scaled
    warned: set[tuple[str, str]] = field(
        default_factory=set
    )  # Warning Events already posted, to post each once
    history: History | None = None
    conditions: list[dict[str, Any]] = field(default_factory=list)
    status: dict[str, Any] = field(default_factory=dict)  # what was last written
    last_scale_time: str | None = None
    decision: Decision | None = None
    reading: Reading | None = None
    meter: Meter = field(default_factory=Meter)
    share: Share | None = None
    next_probe: float = 0.0
    failures: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    @property
    def ref(self) -> dict[str, Any]:
        return {"metadata": {"name": self.name, "namespace": self.namespace, "uid": self.uid}}

    @property
    def fleet_id(self) -> str:
        return f"{self.namespace}/{self.name}"


class Controller:
    def __init__(
        self,
        kube: Kube,
        probes: ProbePool | None = None,
        clock: Callable[[], float] = time.time,
        gpu_budget: int | None = None,
    ) -> None:
        self.kube = kube
        self.probes = probes or ProbePool()
        self.clock = clock
        self.gpu_budget = gpu_budget
        self.fleets: dict[tuple[str, str], Fleet] = {}
        self.deployments: dict[tuple[str, str], dict[str, Any]] = {}  # (namespace, name) -> live Deployment
        self.pods: dict[tuple[str, str], dict[str, Pod]] = {}  # (namespace, fleet) -> pod name -> Pod
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="gpufleet-probe")

    # ---- reconcile: spec -> Deployment -------------------------------------------------------------------

    def reconcile(self, body: dict[str, Any]) -> None:
        meta = body["metadata"]
        with self._lock:
            fleet = self.fleets.setdefault(
                (meta["namespace"], meta["name"]), Fleet(meta["namespace"], meta["name"])
            )
        with fleet.lock:
            fleet.uid, fleet.generation = meta["uid"], meta.get("generation", 0)
            if not fleet.status:  # first sight (an operator start): continue from what was written before
                fleet.status = dict(body.get("status") or {})
                fleet.conditions = list(fleet.status.get("conditions") or [])
            try:
                fleet.spec = parse_spec(body.get("spec") or {})
            except SpecError as exc:
                fleet.spec, fleet.problem = None, ("InvalidSpec", str(exc))
                self._write_status(fleet)
                return
            fleet.problem = None
            self._resolve_connection(fleet)
            live = self.kube.get_deployment(fleet.namespace, deployment_name(fleet.name))
            if live is not None:
                self._remember(live)
            current = live["spec"]["replicas"] if live else fleet.spec.scaling.min_replicas
            self._apply(fleet, current)
            fleet.next_probe = 0.0  # a changed spec is probed and decided at once
            self._write_status(fleet)

    def _resolve_connection(self, fleet: Fleet) -> None:
        """The broker connection, with passwords read from Secrets (never kept anywhere but here)."""
        b = fleet.spec.broker
        values: dict[str, str | None] = {}
        for field_name, ref in (
            ("url", b.url_secret_ref),
            ("password", b.password_secret_ref),
            ("ca", b.tls.ca_secret_ref if b.tls.enabled else None),
        ):
            if ref is None:
                continue
            try:
                value = self.kube.secret_value(fleet.namespace, ref.name, ref.key)
            except Forbidden:
                fleet.connection = None
                fleet.problem = (
                    "SecretForbidden",
                    f"the operator may not read Secret {fleet.namespace}/{ref.name} named by spec.broker "
                    "(with the Helm chart: add it to rbac.secretNames)",
                )
                return
            if value is None:
                fleet.connection = None
                fleet.problem = (
                    "SecretNotFound",
                    f"Secret {fleet.namespace}/{ref.name} (key {ref.key!r}) named by spec.broker is missing",
                )
                return
            values[field_name] = value
        fleet.connection = Connection(
            url=values.get("url") or b.url,
            password=values.get("password"),
            database=b.database,
            tls=b.tls.enabled,
            tls_insecure=b.tls.insecure_skip_verify,
            tls_ca_pem=values.get("ca"),
        )
        if fleet.problem and fleet.problem[0] in ("SecretNotFound", "SecretForbidden"):
            fleet.problem = None

    def _apply(self, fleet: Fleet, replicas: int) -> bool:
        body = deployment(
            fleet.spec, namespace=fleet.namespace, name=fleet.name, uid=fleet.uid, replicas=replicas
        )
        try:
            self._remember(self.kube.apply(body))
        except Rejected as exc:
            fleet.problem = ("DeploymentRejected", f"the worker Deployment was refused: {exc}")
            return False
        if fleet.problem and fleet.problem[0] == "DeploymentRejected":
            fleet.problem = None
        return True

    def forget(self, namespace: str, name: str) -> None:
        with self._lock:
            fleet = self.fleets.pop((namespace, name), None)
        if fleet is not None:
            metrics.forget(namespace, name, fleet.spec.queues if fleet.spec else ())
        self.pods.pop((namespace, name), None)

    # ---- the Deployment cache, fed by a watch ------------------------------------------------------------

    def _remember(self, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        self.deployments[(meta["namespace"], meta["name"])] = obj

    def observe_deployment(self, event_type: str | None, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        if event_type == "DELETED":
            self.deployments.pop((meta["namespace"], meta["name"]), None)
        else:
            self._remember(obj)

    def observe_pod(self, event_type: str | None, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        fleet = (meta.get("labels") or {}).get(FLEET_LABEL)
        if not fleet:
            return
        pods = self.pods.setdefault((meta["namespace"], fleet), {})
        if event_type == "DELETED":
            pods.pop(meta["name"], None)
            return
        conditions = (obj.get("status") or {}).get("conditions") or []
        pods[meta["name"]] = Pod(
            name=meta["name"],
            scheduled=bool((obj.get("spec") or {}).get("nodeName")),
            unschedulable=any(
                c.get("type") == "PodScheduled"
                and c.get("status") == "False"
                and c.get("reason") == "Unschedulable"
                for c in conditions
            ),
            terminating=bool(meta.get("deletionTimestamp")),
            deletion_cost=(meta.get("annotations") or {}).get(DELETION_COST),
        )

    # ---- the tick: probe every due fleet, one round trip per broker, then decide and write ----------------

    def tick(self) -> float:
        """One pass over the due fleets; returns the seconds until the next fleet is due."""
        now = self.clock()
        with self._lock:
            fleets = list(self.fleets.values())
        due = [f for f in fleets if f.next_probe <= now and f.spec is not None]
        for fleet in due:
            if fleet.connection is None:
                self._isolated(fleet, self._resolve_under_lock, fleet)
        groups: dict[Connection, list[Fleet]] = defaultdict(list)
        observed: list[tuple[Fleet, Observation, str | None]] = []
        for fleet in due:
            if fleet.connection is not None and fleet.spec is not None:
                groups[fleet.connection].append(fleet)
            else:
                self._observe_into(
                    observed, fleet, None, fleet.problem[1] if fleet.problem else "no broker connection", now
                )
        futures = {
            conn: self._pool.submit(self._probe, conn, members, now) for conn, members in groups.items()
        }
        for conn, members in groups.items():
            readings, error = futures[conn].result()
            for fleet in members:
                self._observe_into(
                    observed, fleet, readings.get(fleet.fleet_id) if readings else None, error, now
                )
        budgets = self._budgets(fleets, observed)
        for fleet, obs, error in observed:
            self._isolated(fleet, self._act, fleet, replace(obs, budget=budgets.get(fleet.key)), error)
        self.probes.keep_only(f.connection for f in fleets if f.connection is not None)
        pending = [f.next_probe for f in fleets if f.spec is not None]
        return max(0.05, min(pending) - self.clock()) if pending else 1.0

    def _probe(
        self, conn: Connection, members: list[Fleet], now: float
    ) -> tuple[dict[str, Reading] | None, str | None]:
        requests = [
            Request(
                f.fleet_id,
                f.spec.queues,
                Layout(
                    f.spec.broker.global_keyprefix,
                    f.spec.broker.priority_steps,
                    f.spec.broker.separator,
                    f.spec.broker.unacked_key,
                ),
            )
            for f in members
        ]
        started = time.perf_counter()
        try:
            readings = self.probes.get(conn).read(requests, now)
        except BrokerUnreachable as exc:
            return None, str(exc)
        finally:
            metrics.probe_seconds.observe(time.perf_counter() - started)
        return readings, None

    def _observe_into(
        self, out: list, fleet: Fleet, reading: Reading | None, error: str | None, now: float
    ) -> None:
        obs = self._isolated(fleet, self._observe, fleet, reading, now)
        if obs is not None:
            out.append((fleet, obs, error))

    def _resolve_under_lock(self, fleet: Fleet) -> None:
        with fleet.lock:
            if fleet.spec is not None:
                self._resolve_connection(fleet)

    def _isolated(self, fleet: Fleet, step: Callable, *args):
        """One fleet's step; an API fault there is logged and retried at its next poll, the others go on."""
        try:
            return step(*args)
        except Exception:
            log.exception("%s: failed; retrying at its next poll", fleet.fleet_id)
            if fleet.spec is not None:
                fleet.next_probe = self.clock() + fleet.spec.scaling.poll_interval_seconds
            return None

    def _observe(self, fleet: Fleet, reading: Reading | None, now: float) -> Observation | None:
        """Everything the policy needs about one fleet, from the probe and the Deployment and pod caches."""
        with fleet.lock:
            spec = fleet.spec
            if spec is None:
                return None
            live = self.deployments.get((fleet.namespace, deployment_name(fleet.name)))
            if live is None:
                # Not applied yet, or deleted by hand: apply it again rather than guess its replicas.
                fleet.next_probe = now + spec.scaling.poll_interval_seconds
                if fleet.problem is None:
                    self._apply(fleet, spec.scaling.min_replicas)
                return None
            current = live["spec"]["replicas"]
            if fleet.history is None:
                fleet.history = seeded(now, current)
            fleet.reading = reading
            if reading is None:
                fleet.failures += 1
                metrics.probe_errors.labels(fleet.namespace, fleet.name).inc()
                backoff = min(spec.scaling.poll_interval_seconds * 2**fleet.failures, MAX_BACKOFF_SECONDS)
                fleet.next_probe = now + backoff
                if fleet.failures > 1:
                    fleet.connection = (
                        None  # re-read the Secrets at the next attempt: they may have been rotated
                    )
                return Observation(now=now, depth=None, current=current)
            fleet.failures = 0
            fleet.next_probe = now + spec.scaling.poll_interval_seconds
            pods = self.pods.get(fleet.key, {})
            fleet.meter = measure(fleet.meter, reading.workers, now)
            scheduled = sum(1 for p in pods.values() if p.scheduled and not p.terminating)
            blocked = any(p.unschedulable and not p.terminating for p in pods.values())
            return Observation(
                now=now,
                depth=reading.depth,
                current=current,
                idle_workers=len(idle_pods(pods, reading.workers)) if pods else None,
                schedulable=scheduled + spec.scaling.gpu_surge if blocked else None,
                throughput=fleet.meter.rate,
            )

    def _budgets(self, fleets: list[Fleet], observed: list[tuple[Fleet, Observation, str | None]]) -> dict:
        """Each fleet's most pods under the fleet-wide GPU budget; empty when there is no budget."""
        if self.gpu_budget is None:
            return {}
        demand = {f.key: f.decision.recommendation for f in fleets if f.decision is not None}
        for fleet, obs, _ in observed:
            demand[fleet.key] = decide(fleet.spec.scaling, obs, fleet.history).recommendation
        claims = [
            Claim(f.key, f.spec.worker.gpus, f.spec.scaling.min_replicas, demand.get(f.key, f.spec.scaling.min_replicas),
                  f.spec.scaling.priority, f.spec.scaling.weight)
            for f in fleets
            if f.spec is not None
        ]  # fmt: skip
        shares = divide(self.gpu_budget, claims)
        for f in fleets:
            f.share = shares.get(f.key)
        return {key: share.pods for key, share in shares.items()}

    def _act(self, fleet: Fleet, obs: Observation, error: str | None) -> None:
        with fleet.lock:
            spec = fleet.spec
            if spec is None:
                return
            decision = decide(spec.scaling, obs, fleet.history)
            fleet.history, fleet.decision = decision.history, decision
            current = obs.current
            if decision.replicas < current:
                self._mark_for_scale_in(fleet, obs.now)
            if decision.changes(current) and self._apply(fleet, decision.replicas):
                fleet.last_scale_time = now_rfc3339()
                up = decision.replicas > current
                self.kube.event(fleet.ref, "Normal", "ScaledUp" if up else "ScaledDown", decision.reason)
                log.info("%s: %s", fleet.fleet_id, decision.reason)
            metrics.decisions.labels(
                fleet.namespace,
                fleet.name,
                "up" if decision.replicas > current else "down" if decision.replicas < current else "hold",
                decision.limited_by or "none",
            ).inc()
            self._broker_condition(fleet, error)
            self._write_status(fleet)

    def _mark_for_scale_in(self, fleet: Fleet, now: float) -> None:
        """Just before a scale-in: pod-deletion-cost on each pod, so the ReplicaSet removes idle ones first."""
        pods = self.pods.get(fleet.key, {})
        workers = fleet.reading.workers if fleet.reading else {}
        for name, cost in changed_annotations(pods, deletion_costs(pods, workers, now)).items():
            self.kube.annotate_pod(fleet.namespace, name, {DELETION_COST: cost})
            pods[name] = replace(pods[name], deletion_cost=cost)

    def _broker_condition(self, fleet: Fleet, error: str | None) -> None:
        was = condition(fleet.conditions, BROKER_REACHABLE)
        stamp = now_rfc3339()
        if error is None:
            fleet.conditions = set_condition(
                fleet.conditions,
                BROKER_REACHABLE,
                True,
                "Probed",
                "the broker answered the last probe",
                stamp,
            )
            if was and was["status"] == "False":
                self.kube.event(
                    fleet.ref, "Normal", "BrokerReachable", "the broker answers again; scaling resumed"
                )
                fleet.warned.discard(("BrokerUnreachable", ""))
            return
        reason = fleet.problem[0] if fleet.problem else "ConnectionFailed"
        fleet.conditions = set_condition(fleet.conditions, BROKER_REACHABLE, False, reason, error, stamp)
        if ("BrokerUnreachable", "") not in fleet.warned:
            fleet.warned.add(("BrokerUnreachable", ""))
            self.kube.event(
                fleet.ref, "Warning", "BrokerUnreachable", f"{error}; holding the replicas until it answers"
            )

    # ---- status ------------------------------------------------------------------------------------------

    def _write_status(self, fleet: Fleet) -> None:
        stamp = now_rfc3339()
        if fleet.problem:
            reason, message = fleet.problem
            fleet.conditions = set_condition(
                fleet.conditions, READY, False, reason, message, stamp, fleet.generation
            )
            if (reason, message) not in fleet.warned:
                fleet.warned.add((reason, message))
                self.kube.event(fleet.ref, "Warning", reason, message)
        else:
            fleet.warned = {w for w in fleet.warned if w[0] == "BrokerUnreachable"}
            broker = condition(fleet.conditions, BROKER_REACHABLE)
            if broker and broker["status"] == "False":
                ready = (False, "BrokerUnreachable", "the broker cannot be read; replicas are held")
            else:
                ready = (True, "Scaling", "the worker Deployment is applied and scaled from the broker")
            fleet.conditions = set_condition(fleet.conditions, READY, *ready, stamp, fleet.generation)
        decision = fleet.decision
        if decision is not None:
            limited = decision.limited_by
            fleet.conditions = set_condition(
                fleet.conditions,
                SCALING_LIMITED,
                limited is not None,
                camel(limited) if limited else "WithinLimits",
                decision.reason if limited else "no limit holds the fleet back",
                stamp,
            )

        status: dict[str, Any] = {"observedGeneration": fleet.generation, "conditions": fleet.conditions}
        live = self.deployments.get((fleet.namespace, deployment_name(fleet.name)))
        if live is not None:
            have = (live.get("status") or {}).get("replicas") or 0
            status |= {
                "deployment": deployment_name(fleet.name),
                "replicas": have,
                "readyReplicas": (live.get("status") or {}).get("readyReplicas") or 0,
                "gpus": have * (fleet.spec.worker.gpus if fleet.spec else 0),
            }
        if fleet.reading is not None:
            depth = fleet.reading.depth
            status |= {
                "queued": depth.queued,
                "reserved": depth.reserved,
                "queues": {
                    q: {"queued": d.queued, "reserved": d.reserved} for q, d in fleet.reading.queues.items()
                },
            }
            pods = self.pods.get(fleet.key, {})
            busy = sum(1 for w in fleet.reading.workers.values() if w.busy)
            status |= {
                "busyWorkers": busy,
                "idleWorkers": len(idle_pods(pods, fleet.reading.workers)),
                "pendingPods": sum(1 for p in pods.values() if p.unschedulable and not p.terminating),
            }
            if fleet.spec and fleet.spec.scaling.drain_within_seconds and fleet.meter.rate is not None:
                status["throughput"] = f"{fleet.meter.rate:.2g}"
        if fleet.share is not None:
            status["gpuShare"] = {
                "gpus": fleet.share.gpus,
                "budget": self.gpu_budget,
                "reason": fleet.share.reason,
            }
        if decision is not None:
            status |= {"desiredReplicas": decision.replicas, "reason": decision.reason}
        if fleet.last_scale_time:
            status["lastScaleTime"] = fleet.last_scale_time
        self._export(fleet, status)
        if status != fleet.status:
            patch = dict(status)
            if (
                "queues" in status
            ):  # a merge patch keeps keys it does not name: drop the queues no longer listed
                gone = {q: None for q in fleet.status.get("queues") or {} if q not in status["queues"]}
                patch["queues"] = {**gone, **status["queues"]}
            self.kube.patch_status(fleet.namespace, fleet.name, patch)
            fleet.status = status

    def _export(self, fleet: Fleet, status: dict[str, Any]) -> None:
        ns, name = fleet.namespace, fleet.name
        for queue, depth in status.get("queues", {}).items():
            metrics.queued.labels(ns, name, queue).set(depth["queued"])
            metrics.reserved.labels(ns, name, queue).set(depth["reserved"])
        if "desiredReplicas" in status:
            metrics.desired.labels(ns, name).set(status["desiredReplicas"])
        metrics.replicas.labels(ns, name).set(status.get("replicas", 0))
        if fleet.reading is not None:
            metrics.busy_workers.labels(ns, name).set(sum(w.busy for w in fleet.reading.workers.values()))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.probes.close()
