"""Leader election over a coordination.k8s.io Lease: of several operator replicas, exactly one writes.

The rule (client-go's leaderelection, and the same figures by default):
- the holder renews the Lease every `retry` seconds;
- a candidate takes the Lease once it has seen it unchanged (same resourceVersion) for `duration` seconds on its
  OWN clock, or released (no holder); every write names the resourceVersion it read, so of two racing candidates
  the API server lets one win (409 for the other);
- fencing: the holder counts itself active only until `renew_deadline` after the START of its last successful
  renewal. A candidate's `duration` starts when it sees that renewal, which is after it was sent, so the holder
  stops writing at least `duration - renew_deadline` seconds before any candidate can hold the Lease; that margin
  also covers a write already in flight. No clock is compared across machines.
So after a crash (SIGKILL, a node gone) a standby leads within `duration + retry` seconds; after a graceful stop
(SIGTERM) the holder releases the Lease and a standby leads within `retry` seconds.

`decide` and `seen_since` are pure; `Elector` does the I/O in a thread of its own.
"""

from __future__ import annotations

import enum
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import kubernetes
from kubernetes.client.exceptions import ApiException

from gpufleet import metrics
from gpufleet.kube import Kube, NotLeading

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Timing:
    duration: float = 15.0  # a Lease unchanged this long (on the candidate's clock) is free
    renew_deadline: float = 10.0  # the holder stops writing this long after its last good renewal began
    retry: float = 2.0  # how often the holder renews and a candidate looks

    def __post_init__(self) -> None:
        if not 0 < self.retry < self.renew_deadline < self.duration:
            raise ValueError(
                "leader election needs 0 < retry period < renew deadline < lease duration, got "
                f"{self.retry} < {self.renew_deadline} < {self.duration}"
            )


@dataclass(frozen=True)
class Election:
    """Where the Lease is and who we are in it: given on the command line, handed to the handlers in kopf's memo."""

    namespace: str
    name: str
    identity: str  # unique per process: the pod name in a cluster
    timing: Timing = Timing()


@dataclass(frozen=True)
class Record:
    """What a Lease says, as far as the decision goes."""

    holder: str  # "" once released
    duration: float
    version: str  # the resourceVersion: every write changes it
    transitions: int = 0


class Action(enum.Enum):
    CREATE = "create"  # no Lease yet
    RENEW = "renew"  # ours
    ACQUIRE = "acquire"  # released, or its holder silent for its whole duration
    WAIT = "wait"  # another holds it


def seen_since(previous: tuple[str, float] | None, record: Record | None, now: float) -> float:
    """When this Lease version was first seen here: `previous` is (version, since) of the last look."""
    if record is None or previous is None or previous[0] != record.version:
        return now
    return previous[1]


def decide(me: str, record: Record | None, since: float, now: float) -> Action:
    if record is None:
        return Action.CREATE
    if record.holder == me:
        return Action.RENEW
    if not record.holder or now - since >= record.duration:
        return Action.ACQUIRE
    return Action.WAIT


class Conflict(Exception):
    """Someone else wrote the Lease since we read it (409): they won."""


class LeaseStore(Protocol):
    def read(self) -> dict[str, Any] | None: ...
    def create(self, body: dict[str, Any]) -> dict[str, Any]: ...
    def replace(self, body: dict[str, Any]) -> dict[str, Any]: ...


class KubeLeases:
    """The one Lease, through the API: 404 on a read is None, 409 on a write is Conflict, the rest raises."""

    def __init__(self, namespace: str, name: str, timeout: float) -> None:
        self.namespace, self.name, self.timeout = namespace, name, timeout
        self.client = kubernetes.client.ApiClient()
        self.api = kubernetes.client.CoordinationV1Api(self.client)

    def _call(self, fn: Callable[..., Any], *args: Any) -> dict[str, Any]:
        # A request timeout: a call hung on a silent network must not keep the loop from noticing it lost.
        return self.client.sanitize_for_serialization(fn(*args, _request_timeout=self.timeout))

    def read(self) -> dict[str, Any] | None:
        try:
            return self._call(self.api.read_namespaced_lease, self.name, self.namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        try:
            return self._call(self.api.create_namespaced_lease, self.namespace, body)
        except ApiException as exc:
            if exc.status == 409:
                raise Conflict() from None
            raise

    def replace(self, body: dict[str, Any]) -> dict[str, Any]:
        try:
            return self._call(self.api.replace_namespaced_lease, self.name, self.namespace, body)
        except ApiException as exc:
            if exc.status == 409:
                raise Conflict() from None
            raise


def _record(lease: dict[str, Any] | None) -> Record | None:
    if lease is None:
        return None
    spec = lease.get("spec") or {}
    return Record(
        holder=spec.get("holderIdentity") or "",
        duration=float(spec.get("leaseDurationSeconds") or 0),
        version=lease["metadata"]["resourceVersion"],
        transitions=int(spec.get("leaseTransitions") or 0),
    )


def _micro_time(wall: float) -> str:
    return datetime.fromtimestamp(wall, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Elector:
    """Keeps trying to hold the Lease; `active()` says whether this process may write now."""

    def __init__(
        self,
        store: LeaseStore,
        name: str,
        identity: str,
        timing: Timing,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        on_lead: Callable[[], None] = lambda: None,
    ) -> None:
        self.store, self.name, self.identity, self.timing = store, name, identity, timing
        self.clock, self.wall, self.on_lead = clock, wall, on_lead
        self._until = -math.inf  # active while clock() < _until
        self._seen: tuple[str, float] | None = None
        self._leading = False  # for the log lines and on_lead: whether the last step left us holding it

    def active(self) -> bool:
        return self.clock() < self._until

    def step(self) -> None:
        """One look at the Lease, and the write it calls for."""
        started = self.clock()  # before the read: a renewal counts from before it could have been seen
        try:
            lease = self.store.read()
            record = _record(lease)
            self._seen = None if record is None else (record.version, seen_since(self._seen, record, started))
            action = decide(self.identity, record, self._seen[1] if self._seen else started, started)
            if action is Action.WAIT:
                self._lose(f"held by {record.holder}" if record else "")
                return
            self._write(action, lease, record)
        except Conflict:
            self._lose("another replica wrote it first")
            return
        except Exception as exc:  # the API unreachable: keep leading until the deadline, then stop
            log.warning("leader election: cannot read or write the Lease %s: %s", self.name, exc)
            if self._leading and not self.active():
                self._lose("not renewed within the renew deadline")
            return
        self._until = started + self.timing.renew_deadline
        if not self._leading:
            self._leading = True
            metrics.leader.set(1)
            log.info(
                "leader election: %s leads (Lease %s); this replica writes now", self.identity, self.name
            )
            self.on_lead()

    def _write(self, action: Action, lease: dict[str, Any] | None, record: Record | None) -> None:
        now = _micro_time(self.wall())
        spec = {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": math.ceil(self.timing.duration),
            "renewTime": now,
        }
        if action is Action.CREATE:
            spec |= {"acquireTime": now, "leaseTransitions": 0}
            self.store.create({"metadata": {"name": self.name}, "spec": spec})
            return
        assert lease is not None and record is not None
        if action is Action.ACQUIRE:
            spec |= {"acquireTime": now, "leaseTransitions": record.transitions + 1}
        body = {
            "metadata": {"name": self.name, "resourceVersion": record.version},
            "spec": {**(lease.get("spec") or {}), **spec},
        }
        self.store.replace(body)

    def _lose(self, why: str) -> None:
        self._until = -math.inf
        if self._leading:
            self._leading = False
            metrics.leader.set(0)
            log.warning(
                "leader election: %s no longer leads (%s); this replica stops writing", self.identity, why
            )

    def release(self) -> None:
        """On a graceful stop: stop writing, then free the Lease so that a standby leads at its next look."""
        if not self._leading:
            return
        self._lose("stopping")
        try:
            lease = self.store.read()
            record = _record(lease)
            if lease is None or record is None or record.holder != self.identity:
                return
            spec = {
                **(lease.get("spec") or {}),
                "holderIdentity": None,
                "renewTime": _micro_time(self.wall()),
            }
            self.store.replace(
                {"metadata": {"name": self.name, "resourceVersion": record.version}, "spec": spec}
            )
        except Exception as exc:  # the standby takes it over when it expires instead
            # (an uninstall deletes the Role while this pod is still stopping: 403, and nobody is waiting)
            why = f"{exc.status} {exc.reason}" if isinstance(exc, ApiException) else str(exc).splitlines()[0]
            log.warning(
                "leader election: could not release the Lease %s (%s); it expires instead", self.name, why
            )

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self.step()
            stop.wait(self.timing.retry)

    def start(self) -> None:
        """Look at the Lease every `retry` seconds in a thread of its own, until `stop`."""
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self.run, args=(self._stop,), name="leader-election", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """On a graceful stop: end the loop, then release. The loop's step under way ends first (a read and a
        write of at most renew_deadline / 2 each): a renewal landing after release() read the Lease would get
        the release refused (409), and a standby would wait the whole lease out."""
        self._stop.set()
        self._thread.join(self.timing.renew_deadline)
        self.release()


class FencedKube(Kube):
    """Kube whose every write first asks `active()`: a tick that began while this replica led and runs past the
    loss of the Lease writes nothing more. (A new write method of Kube must be fenced here too.)"""

    def __init__(self, active: Callable[[], bool], *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._active = active

    def _fence(self) -> None:
        if not self._active():
            raise NotLeading("this replica does not hold the Lease")

    def apply(self, body: dict[str, Any]) -> dict[str, Any]:
        self._fence()
        return super().apply(body)

    def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self._fence()
        super().patch_status(namespace, name, status)

    def patch_pod(self, namespace: str, name: str, metadata: dict[str, Any]) -> None:
        self._fence()
        super().patch_pod(namespace, name, metadata)

    def event(self, obj: dict[str, Any], type_: str, reason: str, message: str) -> None:
        self._fence()
        super().event(obj, type_, reason, message)
