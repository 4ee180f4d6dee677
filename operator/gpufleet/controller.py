"""The operator's loop: what the handlers saw of each GpuTaskQueue, and the tick that scales them all.

A tick reads top to bottom: which fleets are due -> observe (one Snapshot each, one probe per broker) ->
plan (pure: replicas, annotations, conditions, Events, status, metrics) -> apply (write only what changed).
The handlers' threads only record what they saw (the queues here, pods and Deployments in the Cache); the
tick's thread alone keeps each fleet's state.
"""

from __future__ import annotations

import heapq
import logging
import math
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

from kubernetes.client.exceptions import ApiException

from gpufleet import metrics
from gpufleet.apply import apply
from gpufleet.broker import ProbePool
from gpufleet.cache import Cache
from gpufleet.kube import Kube, namespace_gone, transient
from gpufleet.leader import NotLeading
from gpufleet.model import Queue
from gpufleet.observe import Observer
from gpufleet.plan import FleetState, plan_tick
from gpufleet.spec import SpecError, parse_spec

log = logging.getLogger(__name__)
Key = tuple[str, str]
WRITERS = 8  # fleets written side by side: within the API client's connection pool
WAIT_RECHECK = 0.25  # seconds until a fleet whose broker is slow to answer is looked at again
# Fleets a tick takes at most; more that are due wait for the next tick, which starts at once. A tick observes,
# plans and writes its fleets together: over thousands of fleets, a task seen by the probe waited for every other
# fleet to be planned before its scale-up was written.
FLEETS_PER_TICK = 500


class Controller:
    def __init__(
        self,
        kube: Kube,
        probes: ProbePool | None = None,
        clock: Callable[[], float] = time.time,
        gpu_budget: int | None = None,
    ) -> None:
        self.kube = kube
        self.clock = clock
        self.gpu_budget = gpu_budget
        self.cache = Cache()
        self.observer = Observer(kube, self.cache, probes)
        self.wake = threading.Event()  # set when a queue changed: the ticker need not sleep its poll out
        self._queues: dict[Key, Queue] = {}  # written by handler threads, under the lock
        self._lock = threading.Lock()
        self._changed = True  # a queue came, went or changed since the last tick (under the lock)
        self.states: dict[Key, FleetState] = {}  # the tick's thread only
        # (next_probe, key) of every fleet: a tick pops the due ones, where a pass over thousands of fleets at every
        # tick cost more than probing the few that were due. An entry whose state has moved on is skipped.
        self._schedule: list[tuple[float, Key]] = []
        self._writers = ThreadPoolExecutor(max_workers=WRITERS, thread_name_prefix="gpufleet-write")

    # ---- what the handlers saw ---------------------------------------------------------------------------

    def reconcile(self, body: dict[str, Any]) -> None:
        """A GpuTaskQueue was created, changed or found at start: remember it; the next tick acts on it."""
        meta = body["metadata"]
        try:
            spec, error = parse_spec(body.get("spec") or {}), None
        except SpecError as exc:
            spec, error = None, str(exc)
        queue = Queue(meta["namespace"], meta["name"], meta["uid"], meta.get("generation", 0), spec, error,
                      dict(body.get("status") or {}))  # fmt: skip
        with self._lock:
            self._queues[queue.key] = queue
            self._changed = True
        self.wake.set()

    def forget(self, namespace: str, name: str) -> None:
        with self._lock:
            self._queues.pop((namespace, name), None)
            self._changed = True
        self.cache.forget(namespace, name)

    def stand_by(self) -> None:
        """Forget what the ticks carried (a standby's, or a former leader's, is stale): leading again, every fleet
        continues from its status, as after a restart."""
        self.states.clear()
        self._schedule.clear()
        with self._lock:
            self._changed = True  # the next tick starts every fleet again

    @property
    def fleets(self) -> int:
        with self._lock:
            return len(self._queues)

    # ---- the tick ----------------------------------------------------------------------------------------

    def tick(self) -> float:
        """One pass over the due fleets; returns the seconds until the next one is due."""
        with metrics.tick_seconds.time():
            return self._tick()

    def _tick(self) -> float:
        now = self.clock()
        with self._lock:
            queues = dict(self._queues)
            changed, self._changed = self._changed, False
        if changed:  # with thousands of fleets, a pass over all of them at every tick is not free
            self._drop_gone(queues)
            for key, q in queues.items():
                if key not in self.states or self.states[key].uid != q.uid:
                    self._put(key, FleetState.first(q.uid, q.written))
                if self.states[key].generation != q.generation:  # a changed spec is planned at once
                    self._put(key, replace(self.states[key], generation=q.generation, next_probe=now))
        due = [queues[key] for key in self._pop_due(now, FLEETS_PER_TICK) if key in queues]
        try:
            return self._tick_due(queues, due, now)
        except BaseException:
            for q in due:  # popped from the schedule: each is tried again at its next poll, not forgotten
                if q.key in self.states:
                    self._retry(q.key)
            raise

    def _tick_due(self, queues: dict[Key, Queue], due: list[Queue], now: float) -> float:
        snapshots = self.observer.snapshots(
            due, lambda key: self.states[key].reresolve, now, self._failed, self._waiting
        )
        planned = {s.key for s in snapshots}
        resting = (  # only a GPU budget needs the fleets not due: they claim their share of it
            {k: q.spec for k, q in queues.items() if k not in planned and q.spec is not None}
            if self.gpu_budget is not None
            else {}
        )
        plans = plan_tick(snapshots, self.states, resting, self.gpu_budget)
        # Fleets are written side by side (a mass apply is thousands of API round trips: one after the other they
        # took minutes), each fleet's writes in their order; a plan that puts tasks back uses the broker's small
        # connection pool, so it is written here, as is one that writes nothing.
        writes = {}
        for snap in snapshots:
            plan, before = plans[snap.key], self.states[snap.key]
            if plan.writes and not plan.restore:
                writes[snap.key] = self._writers.submit(self._write, snap, plan, before, None)
            elif not plan.writes and plan.gauges is None:  # a fleet at rest: nothing to apply
                self._put(snap.key, plan.state)
            else:
                broker = self.observer.broker(queues[snap.key]) if plan.restore else None
                self._settle(snap.key, self._write(snap, plan, before, broker))
        for key, future in writes.items():
            self._settle(key, future.result())

        next_due = self._next_due()
        if next_due <= now:  # fleets left due by this tick's limit
            return 0.0
        return max(0.05, next_due - self.clock())

    def _write(self, snap, plan, before: FleetState, broker) -> FleetState | None:
        """Apply one fleet's plan; None when the API failed (logged here, with its traceback)."""
        try:
            return apply(self.kube, self.cache, snap, plan, before, broker)
        except Exception as exc:
            _log_failure(snap.key, exc)
            return None

    def _settle(self, key: Key, state: FleetState | None) -> None:
        if state is None:
            self._retry(key)
        else:
            self._put(key, state)

    def _failed(self, key: Key) -> None:
        """One fleet's API fault: logged, retried at its next poll; the other fleets go on."""
        _log_failure(key, sys.exc_info()[1])
        self._retry(key)

    def _waiting(self, key: Key) -> None:
        """A fleet whose broker has not answered yet: looked at again shortly, without holding up the others."""
        self._put(key, self.states[key].rescheduled(self.clock() + WAIT_RECHECK))

    def _retry(self, key: Key) -> None:
        with self._lock:
            queue = self._queues.get(key)
        poll = queue.spec.scaling.poll_interval_seconds if queue and queue.spec else 1.0
        self._put(key, self.states[key].rescheduled(self.clock() + poll))

    def _put(self, key: Key, state: FleetState) -> None:
        self.states[key] = state
        if state.next_probe < math.inf:
            heapq.heappush(self._schedule, (state.next_probe, key))

    def _pop_due(self, now: float, limit: int = FLEETS_PER_TICK) -> list[Key]:
        """The fleets due by `now`, each once, in the order they fell due: at most `limit` of them."""
        due: dict[Key, None] = {}
        while self._schedule and self._schedule[0][0] <= now and len(due) < limit:
            at, key = heapq.heappop(self._schedule)
            state = self.states.get(key)
            if state is not None and state.next_probe == at:
                due[key] = None
        return list(due)

    def _next_due(self) -> float:
        """When the next fleet falls due: entries left by states that moved on are dropped on the way."""
        while self._schedule:
            at, key = self._schedule[0]
            state = self.states.get(key)
            if state is not None and state.next_probe == at:
                return at
            heapq.heappop(self._schedule)
        return self.clock() + 1.0

    def _drop_gone(self, queues: dict[Key, Queue]) -> None:
        for key in [k for k in self.states if k not in queues]:
            metrics.forget(*key, tuple(self.states.pop(key).written.get("queues") or ()))
        self.observer.keep_only(set(queues))

    def close(self) -> None:
        self._writers.shutdown(wait=False, cancel_futures=True)
        self.observer.close()


def _log_failure(key: Key, exc: BaseException | None) -> None:
    """A passing fault (the API restarting or overloaded, this replica no longer leading) is one line; anything
    else is logged with its traceback, as a bug to look at."""
    if isinstance(exc, ApiException) and namespace_gone(exc):
        # Its namespace is going or gone, and the queue with it: the deletion event ends this fleet; nothing to debug.
        log.info("%s/%s: its namespace is being deleted or gone; nothing more is written there", *key)
    elif exc is not None and (transient(exc) or isinstance(exc, NotLeading)):
        log.warning("%s/%s: %s: %s; retrying at its next poll", *key, type(exc).__name__, _short(exc))
    else:
        log.error("%s/%s: failed; retrying at its next poll", *key, exc_info=exc)


def _short(exc: BaseException) -> str:
    text = f"{exc.status} {exc.reason}" if isinstance(exc, ApiException) else str(exc)
    return text.splitlines()[0][:300] if text else ""
