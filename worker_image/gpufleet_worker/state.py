"""This worker's entry in the fleet's worker-state hash (docs/worker-contract.md), and its upkeep.

The entry is kept by a thread of the worker's main process, which reads Celery's own bookkeeping there
(`celery.worker.state`): under the prefork pool tasks run in child processes, whose signals the main
process never sees, but it does see every task accepted and finished. Reading that costs nothing, so the
thread looks often and writes to Redis only when busy/active/done changed or the entry is due a refresh.
A message that arrives is named at once by the main process, in the pipeline by which kombu records it as
unacknowledged (transport.py, `receipt_entry`), so that costs no round trip of its own.
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
    tags: tuple[str, ...] = ()  # delivery tags of every message this worker holds, running or reserved

    @property
    def busy(self) -> bool:
        return self.active > 0


def snapshot(received: tuple[str, ...] = ()) -> Snapshot:
    """What Celery's bookkeeping says now; `received` are tags just received and perhaps not yet reserved."""
    active = len(celery_state.active_requests)
    tags = {str(t) for req in list(celery_state.reserved_requests) if (t := delivery_tag(req)) is not None}
    # all_total_count counts tasks accepted; those no longer active are done.
    done = max(celery_state.all_total_count[0] - active, 0)
    return Snapshot(active=active, done=done, tags=tuple(sorted(tags | set(received))))


def delivery_tag(request) -> str | None:
    return getattr(getattr(request, "message", None), "delivery_tag", None)


_current: Keeper | None = None  # the running keeper of this process, if any


def receipt_entry(tag, held: tuple = ()) -> tuple[str, str, str] | None:
    """(key, field, value) of this worker's entry naming the message `tag` that has just arrived, beside
    `held` (the deliveries the channel holds already); None where no state is published. The key has no
    global_keyprefix: kombu's pipeline adds it."""
    keeper = _current
    if keeper is None or keeper.client is None:
        return None
    return keeper.entry_at_receipt(str(tag), held)


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
        self._wake = threading.Event()
        self._received: dict[str, float] = {}  # tag -> when: named at once, before Celery reserves it
        self._lock = threading.Lock()
        self._failing = False
        # Since when this worker's writes have gone through without a break. Another worker's entry is judged
        # stale only once this one has been connected for a whole entry lifetime: after a partition that cut
        # every worker off (a blackholed or stalled broker), every entry has expired, and the live workers need
        # that long to write theirs again; sweeping at once would put back the tasks they are running.
        # A write that completes long after the previous one (failed writes, or one held up by a stalled
        # broker) starts that clock again.
        self._healthy_since = 0.0
        self._written_at: float | None = None
        self._ttl = contract.STATE_TTL_INTERVALS * settings.state_interval
        self._unprefixed_key = contract.workers_key("", settings.fleet)
        # The thread's last view of busy and since it was so, read by entry_at_receipt in the main thread.
        self._busy = False
        self._since = time.time()

    def start(self) -> None:
        """Restores what this pod's previous container held, then starts naming deliveries: in this order, before
        the consumer takes its first message (worker_ready), so that this worker's own first deliveries, named
        in this same entry as they arrive, are never taken for its predecessor's and put back."""
        global _current
        if self.client is not None:
            # This pod's previous container (OOM-killed, crashed) may have died holding messages: nobody else
            # will restore them, as this entry is about to be written fresh.
            try:
                self._restore(self.field, stale_before=None)
            except redis.RedisError as exc:
                logger.warning("gpufleet: cannot restore what %s held before a restart: %s", self.field, exc)
        _current = self
        super().start()

    def run(self) -> None:
        last: Snapshot | None = None
        due = 0.0
        while True:
            now = time.time()
            snap = snapshot(self._recent(now))
            if last is not None and snap.busy != last.busy:
                self._since = now
            self._busy = snap.busy
            if snap != last or now >= due:
                heartbeat.refresh(self.settings.heartbeat_file)
                if self.client is not None:
                    self._publish(snap, self._since, now, sweep=now >= due)
                due = now + self.interval
                last = snap
            self._wake.wait(LOOK_INTERVAL)
            self._wake.clear()
            if self._stop_event.is_set():
                return

    def entry_at_receipt(self, tag: str, held: tuple) -> tuple[str, str, str]:
        """The entry naming `tag` as well, for the main process to write as the message arrives."""
        now = time.time()
        held = set(map(str, held))
        with self._lock:
            # Only what the channel still holds: in a burst, every tag of the last second would ride along.
            self._received = {t: at for t, at in self._received.items() if t in held and now - at < 1.0}
            self._received[tag] = now
            recent = tuple(self._received)
        snap = snapshot(recent)
        tags = tuple(sorted(held.union(snap.tags)))
        # What the worker holds, it runs: prefetch 1 hands each slot one message at a time, and a message that has
        # just arrived starts at once. Counted as running from its arrival, or a stream of tasks would read as idle
        # (and the operator's measured service time as shorter) until the state thread's next look.
        active = max(snap.active, len(tags))
        since = self._since if (active > 0) == self._busy else now
        state = contract.WorkerState.fresh(active, snap.done, since, now, self.settings.state_interval, tags)
        return self._unprefixed_key, self.field, state.to_json(self.hostname)

    def received(self, tag: str) -> None:
        """A message just arrived (task_received, in the main process): name it in the entry now, so a worker
        killed a moment later does not leave it to the visibility timeout. One that the transport named as
        it arrived (entry_at_receipt) needs nothing more."""
        tag = str(tag)
        with self._lock:
            if tag in self._received:
                return
            self._received[tag] = time.time()
        self._wake.set()

    def _recent(self, now: float) -> tuple[str, ...]:
        # By a second later Celery has reserved it (then it is in the bookkeeping) or is done with it.
        with self._lock:
            self._received = {t: at for t, at in self._received.items() if now - at < 1.0}
            return tuple(self._received)

    def _publish(self, snap: Snapshot, since: float, now: float, sweep: bool) -> None:
        state = contract.WorkerState.fresh(
            snap.active, snap.done, since, now, self.settings.state_interval, snap.tags
        )
        value = state.to_json(self.hostname)
        try:
            sweep = sweep and self._written_at is not None and now - self._healthy_since >= self._ttl
            pipe = self.client.pipeline(transaction=False)
            pipe.hset(self.key, self.field, value)
            if sweep:
                pipe.hgetall(self.key)
            replies = pipe.execute()
            done = time.time()
            if self._written_at is None or done - self._written_at > 2 * self.interval + LOOK_INTERVAL:
                self._healthy_since = done
            self._written_at = done
            if sweep and done - self._healthy_since >= self._ttl:
                for field in contract.stale_fields(replies[1], now, self.field):
                    self._restore(field, stale_before=now)
        except redis.RedisError as exc:
            # Celery reconnects its own connections; this thread retries at the next change or refresh.
            if not self._failing:
                logger.warning("gpufleet: cannot write the worker state to %s: %s", self.key, exc)
            self._failing = True
            return
        if self._failing:
            logger.info("gpufleet: worker state written again to %s", self.key)
        self._failing = False

    def _restore(self, field: str, stale_before: float | None) -> None:
        """Put back the messages a dead worker of this fleet held (contract.RESTORE_SCRIPT)."""
        s = self.settings
        keys, argv = contract.restore_call(
            s.global_keyprefix, s.fleet, field, separator=s.separator, priority_steps=s.priority_steps,
            unacked_key=s.unacked_key, stale_before=stale_before,
        )  # fmt: skip
        restored = self.client.eval(contract.RESTORE_SCRIPT, len(keys), *keys, *argv)
        if restored and restored > 0:
            logger.warning("gpufleet: put back %d task(s) held by %s, a worker that is gone", restored, field)

    def stop(self) -> None:
        """End the thread and remove this worker's entry: a worker that shut down is neither busy nor idle."""
        global _current
        if _current is self:
            _current = None
        self._stop_event.set()
        self._wake.set()
        self.join(timeout=10)
        if self.client is None:
            return
        try:
            self.client.hdel(self.key, self.field)
        except redis.RedisError as exc:
            logger.warning(
                "gpufleet: cannot remove the worker state entry %s/%s: %s", self.key, self.field, exc
            )
