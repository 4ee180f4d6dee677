"""The operator's loop: what the handlers saw of each GpuTaskQueue, and the tick that scales them all.

A tick reads top to bottom: which fleets are due (the Schedule) -> observe (one Snapshot each, one probe per
broker) -> plan (pure) -> apply (write only what changed) -> settle (the Outcome into the next state). The
handlers' threads only record what they saw (the queues here, pods and Deployments in the Cache); the tick's
thread alone keeps each fleet's state. This module only wires those steps together.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

from gpufleet import metrics
from gpufleet.apply import apply
from gpufleet.broker import ProbePool
from gpufleet.cache import Cache
from gpufleet.kube import Kube, log_failure
from gpufleet.model import FleetState, Outcome, Plan, Queue
from gpufleet.observe import Observer
from gpufleet.plan import plan_tick, settled
from gpufleet.schedule import Schedule

Key = tuple[str, str]
WRITERS = 8  # fleets written side by side: within the API client's connection pool
WAIT_RECHECK = 0.25  # seconds until a fleet whose broker is slow to answer is looked at again
# Fleets a tick takes at most; more that are due wait for the next tick, which starts at once. A tick observes,
# plans and writes its fleets together: over thousands of fleets, a task seen by the probe waited for every other
# fleet to be planned before its scale-up was written.
FLEETS_PER_TICK = 500


class Controller:
    def __init__(
        self, kube: Kube, probes: ProbePool | None = None, clock: Callable[[], float] = time.time,
        gpu_budget: int | None = None,
    ) -> None:  # fmt: skip
        self.kube, self.clock, self.gpu_budget = kube, clock, gpu_budget
        self.cache = Cache()
        self.observer = Observer(kube, self.cache, probes)
        self.schedule = Schedule()  # the tick's thread only
        self.wake = threading.Event()  # set when a queue changed: the ticker need not sleep its poll out
        self._queues: dict[Key, Queue] = {}  # written by handler threads, under the lock
        self._lock = threading.Lock()
        self._changed = True  # a queue came, went or changed since the last tick (under the lock)
        self._writers = ThreadPoolExecutor(max_workers=WRITERS, thread_name_prefix="gpufleet-write")

    # ---- what the handlers saw ---------------------------------------------------------------------------

    def reconcile(self, body: dict[str, Any]) -> None:
        """A GpuTaskQueue was created, changed or found at start: remember it; the next tick acts on it."""
        queue = Queue.from_object(body)
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
        self.schedule.clear()
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
            now = self.clock()
            with self._lock:
                queues = dict(self._queues)
                changed, self._changed = self._changed, False
            if changed:  # with thousands of fleets, a pass over all of them at every tick is not free
                self._sync(queues, now)
            due = [queues[key] for key in self.schedule.pop_due(now, FLEETS_PER_TICK) if key in queues]
            try:
                self._tick(queues, due, now)
            except BaseException:
                for q in due:  # popped from the schedule: each is tried again at its next poll, not forgotten
                    self._retry(q.key, queues)
                raise
            return self.schedule.wait(now, self.clock())

    def _tick(self, queues: dict[Key, Queue], due: list[Queue], now: float) -> None:
        seen = self.observer.snapshots(due, now, {q.key for q in due if self.schedule[q.key].reresolve})
        for key, exc in seen.failed.items():
            log_failure(key, exc)
            self._retry(key, queues)
        for key in seen.waiting:  # looked at again shortly, without holding up the others
            self.schedule.put(key, self.schedule[key].rescheduled(self.clock() + WAIT_RECHECK))
        resting = {}  # only a GPU budget needs the fleets not due: they claim their share of it
        if self.gpu_budget is not None:
            planned = {s.key for s in seen.snapshots}
            resting = {k: q.spec for k, q in queues.items() if k not in planned and q.spec is not None}
        plans = plan_tick(seen.snapshots, self.schedule.states, resting, self.gpu_budget)
        # Fleets are written side by side (a mass apply is thousands of API round trips), each fleet's writes in
        # their order; one that puts tasks back uses the broker's small connection pool, so it is written here.
        written = []
        for snap in seen.snapshots:
            plan = plans[snap.key]
            if plan.at_rest:
                self.schedule.put(snap.key, plan.state)
            elif plan.writes and not plan.needs_broker:
                written.append((snap, plan, self._writers.submit(apply, self.kube, self.cache, snap, plan)))
            else:
                outcome = apply(self.kube, self.cache, snap, plan, seen.brokers.get(snap.key))
                self._settle(snap.key, plan, outcome, queues)
        for snap, plan, future in written:
            self._settle(snap.key, plan, future.result(), queues)

    def _settle(self, key: Key, plan: Plan, outcome: Outcome, queues: dict[Key, Queue]) -> None:
        self.schedule.put(key, settled(self.schedule[key], plan, outcome))
        if outcome.failed is not None:
            log_failure(key, outcome.failed)
            self._retry(key, queues)

    def _retry(self, key: Key, queues: dict[Key, Queue]) -> None:
        """One fleet's fault: tried again at its next poll; the other fleets go on."""
        if key not in self.schedule:
            return
        queue = queues.get(key)
        poll = queue.spec.scaling.poll_interval_seconds if queue and queue.spec else 1.0
        self.schedule.put(key, self.schedule[key].rescheduled(self.clock() + poll))

    def _sync(self, queues: dict[Key, Queue], now: float) -> None:
        """Fleets that came, went or changed their spec since the last tick."""
        for key in [k for k in self.schedule if k not in queues]:
            self.schedule.drop(key)
            metrics.forget(*key)
        self.observer.keep_only(set(queues))
        for key, q in queues.items():
            state = self.schedule.get(key)
            if state is None or state.uid != q.uid:
                state = FleetState.first(q.uid, q.written)
                self.schedule.put(key, state)
            if state.generation != q.generation:  # a changed spec is planned at once
                self.schedule.put(key, replace(state, generation=q.generation, next_probe=now))

    def close(self) -> None:
        self._writers.shutdown(wait=False, cancel_futures=True)
        self.observer.close()
