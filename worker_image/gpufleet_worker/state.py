"""This worker's entry in the fleet's worker-state hash (docs/worker-contract.md), and its upkeep.

The entry is kept by a thread of the worker's main process, which reads Celery's own bookkeeping there
(`celery.worker.state`): under the prefork pool tasks run in child processes, whose signals the main
process never sees, but it does see every task accepted and finished. Reading that costs nothing, so the
thread looks often and writes to Redis only when busy/active/done changed or the entry is due a refresh.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import redis
from celery.worker import state as celery_state

from . import contract, heartbeat
from .settings import Settings

logger = logging.getLogger(__name__)

# How often the thread looks at the worker's bookkeeping: how late a busy/idle change reaches Redis.
LOOK_INTERVAL = 0.25


@dataclass(frozen=True)
class Snapshot:
    active: int
    done: int

    @property
    def busy(self) -> bool:
        return self.active > 0


def snapshot() -> Snapshot:
    active = len(celery_state.active_requests)
    # all_total_count counts tasks accepted; those no longer active are done.
    return Snapshot(active=active, done=max(celery_state.all_total_count[0] - active, 0))


class Keeper(threading.Thread):
    """Keeps the heartbeat file fresh and this worker's state entry current, from the main process."""

    def __init__(self, settings: Settings, hostname: str, client: redis.Redis | None):
        super().__init__(name="gpufleet-state", daemon=True)
        self.settings = settings
        self.hostname = hostname
        self.field = settings.pod_name or hostname.partition("@")[0]
        self.key = contract.workers_key(settings.global_keyprefix, settings.fleet)
        self.client = client
        self.interval = min(settings.state_interval, settings.heartbeat_max_age / 4)
        self._stop_event = threading.Event()
        self._failing = False

    def run(self) -> None:
        last: Snapshot | None = None
        since = time.time()
        due = 0.0
        while True:
            now = time.time()
            snap = snapshot()
            if last is not None and snap.busy != last.busy:
                since = now
            if snap != last or now >= due:
                heartbeat.refresh(self.settings.heartbeat_file)
                if self.client is not None:
                    self._publish(snap, since, now, sweep=now >= due)
                due = now + self.interval
                last = snap
            if self._stop_event.wait(LOOK_INTERVAL):
                return

    def _publish(self, snap: Snapshot, since: float, now: float, sweep: bool) -> None:
        state = contract.WorkerState.fresh(snap.active, snap.done, since, now, self.settings.state_interval)
        value = state.to_json(self.hostname)
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.hset(self.key, self.field, value)
            if sweep:
                pipe.hgetall(self.key)
            replies = pipe.execute()
            if sweep:
                stale = contract.stale_fields(replies[1], now, self.field)
                if stale:
                    self.client.hdel(self.key, *stale)
        except redis.RedisError as exc:
            # Celery reconnects its own connections; this thread retries at the next change or refresh.
            if not self._failing:
                logger.warning("gpufleet: cannot write the worker state to %s: %s", self.key, exc)
            self._failing = True
            return
        if self._failing:
            logger.info("gpufleet: worker state written again to %s", self.key)
        self._failing = False

    def stop(self) -> None:
        """End the thread and remove this worker's entry: a worker that shut down is neither busy nor idle."""
        self._stop_event.set()
        self.join(timeout=10)
        if self.client is None:
            return
        try:
            self.client.hdel(self.key, self.field)
        except redis.RedisError as exc:
            logger.warning(
                "gpufleet: cannot remove the worker state entry %s/%s: %s", self.key, self.field, exc
            )
