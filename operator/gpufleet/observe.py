"""The tick's first step: gather one immutable Snapshot per due fleet. Reads only, never writes.

Per fleet: its broker connection (Secrets read when the spec changed or the last probes failed), then ONE
pipelined probe per distinct broker for all its fleets (brokers probed side by side), then the Deployment and the
pods from the watch caches (a namespace's Deployments listed from the API once, at start). What it saw comes back
as one Observed: the snapshots, the fleets whose reads failed (with the error), the fleets still waiting on their
broker, and each probed fleet's broker handle. What to do with them is the caller's to decide.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Collection, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

from gpufleet import metrics
from gpufleet.broker import BrokerUnreachable, Connection, Handle, Layout, ProbePool, Request
from gpufleet.cache import Cache
from gpufleet.kube import Forbidden, Kube
from gpufleet.model import MANAGED_BY, MANAGED_BY_LABEL, Queue, Reading, Snapshot
from gpufleet.resources import deployment_name

log = logging.getLogger(__name__)
Key = tuple[str, str]
# How long a tick waits for the brokers' probes. A probe still running then (a blackholed broker takes its
# timeout, and a retry, to give up) is left to finish on its own while the tick goes on with the other brokers'
# fleets; its own fleets wait for it, and use what it found at a later tick. Joining every probe made each tick
# as slow as the slowest broker: one blackholed broker delayed every fleet of the operator by seconds.
PROBE_WAIT = 0.5
MANAGED = f"{MANAGED_BY_LABEL}={MANAGED_BY}"


@dataclass(frozen=True)
class Observed:
    """What one look at the due fleets found."""

    snapshots: list[Snapshot] = field(default_factory=list)
    failed: dict[Key, Exception] = field(default_factory=dict)  # fleets whose reads raised (an API fault)
    waiting: set[Key] = field(default_factory=set)  # fleets whose broker has not answered yet: no snapshot
    brokers: dict[Key, Handle] = field(default_factory=dict)  # the broker of each fleet with a connection


@dataclass(frozen=True)
class _Resolved:
    generation: int
    connection: Connection | None
    problem: tuple[str, str] | None  # (reason, message) when a Secret could not be read
    request: Request | None = None  # the fleet's part of its broker's probe, made once per generation


class Observer:
    def __init__(self, kube: Kube, cache: Cache, probes: ProbePool | None = None) -> None:
        self.kube = kube
        self.cache = cache
        self.probes = probes or ProbePool()
        self._resolved: dict[Key, _Resolved] = {}  # the tick's thread only
        self._listed: set[str] = (
            set()
        )  # namespaces whose Deployments were listed once (the tick's thread only)
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="gpufleet-probe")
        self._inflight: dict[Connection, Future] = {}  # probes a tick left running (the tick's thread only)

    def snapshots(self, queues: Sequence[Queue], now: float, reresolve: Collection[Key] = ()) -> Observed:
        """Snapshots of `queues`, their brokers' Secrets read again for the fleets in `reresolve`."""
        seen = Observed()
        resolved: dict[Key, _Resolved] = {}
        for q in queues:
            if q.spec is None:
                continue
            last = self._resolved.get(q.key)
            if last is not None and last.connection is not None and self._running(last.connection):
                seen.waiting.add(q.key)  # not even its Secrets are read again while its broker's probe runs
                continue
            try:
                resolved[q.key] = self._resolve(q, q.key in reresolve)
            except Exception as exc:
                seen.failed[q.key] = exc
        readings, errors, late = self._probe([q for q in queues if q.key in resolved], resolved, now)
        seen.waiting.update(late)
        for q in queues:
            if q.spec is not None and (q.key not in resolved or q.key in late):
                continue
            try:
                if q.spec is not None:
                    self._list_once(q.namespace)
            except Exception as exc:
                seen.failed[q.key] = exc
                continue
            deployment, pods, gone = self.cache.fleet(q.namespace, q.name, deployment_name(q.name))
            r = resolved.get(q.key)
            seen.snapshots.append(
                Snapshot(
                    namespace=q.namespace,
                    name=q.name,
                    uid=q.uid,
                    generation=q.generation,
                    now=now,
                    spec=q.spec,
                    spec_error=q.spec_error,
                    secret_problem=r.problem if r else None,
                    reading=readings.get(q.key),
                    broker_error=errors.get(q.key),
                    deployment=deployment,
                    pods=pods,
                    gone=gone,
                )  # fmt: skip
            )
            if r is not None and r.connection is not None:
                seen.brokers[q.key] = Handle(self.probes.get(r.connection), r.request)
        return seen

    def _resolve(self, q: Queue, reresolve: bool) -> _Resolved:
        """The broker connection, with passwords read from Secrets (kept nowhere but in the Connection)."""
        known = self._resolved.get(q.key)
        if known and known.connection and known.generation == q.generation and not reresolve:
            return known
        b = q.spec.broker
        values: dict[str, str] = {}
        refs = (("url", b.url_secret_ref), ("password", b.password_secret_ref),
                ("ca", b.tls.ca_secret_ref if b.tls.enabled else None),
                ("sentinel", b.sentinel.password_secret_ref if b.sentinel else None))  # fmt: skip
        for name, ref in refs:
            if ref is None:
                continue
            try:
                value = self.kube.secret_value(q.namespace, ref.name, ref.key)
            except Forbidden:
                problem = ("SecretForbidden", f"the operator may not read Secret {q.namespace}/{ref.name} named by "
                           "spec.broker (with the Helm chart: add it to rbac.secretNames)")  # fmt: skip
                return self._keep(q, None, problem)
            if value is None:
                problem = ("SecretNotFound",
                           f"Secret {q.namespace}/{ref.name} (key {ref.key!r}) named by spec.broker is missing")  # fmt: skip
                return self._keep(q, None, problem)
            values[name] = value
        s = b.sentinel
        conn = Connection(url=values.get("url") or b.url or "", password=values.get("password"), database=b.database,
                          tls=b.tls.enabled, tls_insecure=b.tls.insecure_skip_verify, tls_ca_pem=values.get("ca"),
                          sentinels=s.sentinels if s else (), master_name=s.master_name if s else None,
                          sentinel_password=values.get("sentinel"))  # fmt: skip
        return self._keep(q, conn, None)

    def _keep(self, q: Queue, conn: Connection | None, problem: tuple[str, str] | None) -> _Resolved:
        self._resolved[q.key] = r = _Resolved(q.generation, conn, problem, _request(q) if conn else None)
        return r

    def _running(self, conn: Connection) -> bool:
        future = self._inflight.get(conn)
        return future is not None and not future.done()

    def _probe(
        self, queues: Sequence[Queue], resolved: Mapping[Key, _Resolved], now: float
    ) -> tuple[dict[Key, Reading], dict[Key, str], set[Key]]:
        """Readings and errors by fleet, and the fleets whose broker has not answered yet (late)."""
        groups: dict[Connection, list[Request]] = defaultdict(list)
        errors: dict[Key, str] = {}
        for q in queues:
            r = resolved[q.key]
            if r.connection is None:
                errors[q.key] = r.problem[1]
            else:
                groups[r.connection].append(r.request)
        futures = {}
        for conn, members in groups.items():
            # A probe a tick left running and that has finished since: what it read is this tick's reading
            # (a broker that answers slowly still gets read); otherwise a new probe.
            left = self._inflight.pop(conn, None)
            futures[conn] = left if left is not None else self._pool.submit(self._read, conn, members, now)
        wait(futures.values(), timeout=PROBE_WAIT)
        readings: dict[Key, Reading] = {}
        late: set[Key] = set()
        for conn, members in groups.items():
            future = futures[conn]
            if not future.done():
                self._inflight[conn] = future
                late.update(_key(req) for req in members)
                continue
            got, error = future.result()
            for req in members:
                if error is not None:
                    errors[_key(req)] = error
                elif (reading := got.get(req.fleet)) is not None:
                    readings[_key(req)] = reading
                else:  # a fleet that joined this broker after the probe left: read at the next tick
                    late.add(_key(req))
        return readings, errors, late

    def _read(
        self, conn: Connection, requests: list[Request], now: float
    ) -> tuple[dict[str, Reading], str | None]:
        started = time.perf_counter()
        try:
            return self.probes.get(conn).read(requests, now), None
        except BrokerUnreachable as exc:
            return {}, str(exc)
        finally:
            metrics.probe_seconds.observe(time.perf_counter() - started)

    def _list_once(self, namespace: str) -> None:
        """A fleet's Deployment comes from the watch's cache. At start, before the watch's listing arrives, a
        missing entry must not read as a deleted Deployment: the first fleet of a namespace lists the namespace's
        Deployments into the cache, once (one request, where a read per fleet took thousands); from then on the
        watch and our own applies keep the cache."""
        if namespace not in self._listed:
            for live in self.kube.list_deployments(namespace, MANAGED):
                if self.cache.deployment(namespace, live["metadata"]["name"]) is None:
                    self.cache.deployment_event("MODIFIED", live)
            self._listed.add(namespace)

    def keep_only(self, keys: set[Key]) -> None:
        """Forget the connections of fleets that are gone, and close the probes no fleet uses any more."""
        self._resolved = {k: r for k, r in self._resolved.items() if k in keys}
        self.probes.keep_only(r.connection for r in self._resolved.values() if r.connection is not None)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.probes.close()


def _key(req: Request) -> Key:
    namespace, _, name = req.fleet.partition("/")
    return namespace, name


def _request(q: Queue) -> Request:
    b = q.spec.broker
    layout = Layout(b.global_keyprefix, b.priority_steps, b.separator, b.unacked_key)
    return Request(f"{q.namespace}/{q.name}", q.spec.queues, layout)
