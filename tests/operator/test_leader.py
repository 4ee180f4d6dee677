"""Leader election: the pure decision by table, then two Electors over one in-memory Lease on a shared clock."""

from __future__ import annotations

import copy
import itertools
import threading

import pytest
from prometheus_client import REGISTRY

from gpufleet.leader import Action, Conflict, Elector, Record, Timing, decide, seen_since

HELD = Record("b", 15.0, "7")

DECIDE = [
    ("no Lease: create it", None, 0.0, 0.0, Action.CREATE),
    ("ours: renew", Record("a", 15.0, "7"), 0.0, 100.0, Action.RENEW),
    ("released: take it at once", Record("", 15.0, "7"), 5.0, 5.0, Action.ACQUIRE),
    ("another's, just seen: wait", HELD, 10.0, 10.0, Action.WAIT),
    ("another's, unchanged for less than its duration: wait", HELD, 10.0, 24.9, Action.WAIT),
    ("another's, unchanged for its whole duration: take it", HELD, 10.0, 25.0, Action.ACQUIRE),
    ("its own duration counts, not ours", Record("b", 60.0, "7"), 10.0, 30.0, Action.WAIT),
]


@pytest.mark.parametrize(("case", "record", "since", "now", "action"), DECIDE, ids=[c[0] for c in DECIDE])
def test_decide(case, record, since, now, action):
    assert decide("a", record, since, now) is action


def test_seen_since_restarts_on_every_new_version():
    assert seen_since(None, HELD, 3.0) == 3.0  # first look
    assert seen_since(("7", 3.0), HELD, 9.0) == 3.0  # unchanged: the wait goes on
    assert seen_since(("6", 3.0), HELD, 9.0) == 9.0  # renewed meanwhile: it starts again
    assert seen_since(("7", 3.0), None, 9.0) == 9.0


@pytest.mark.parametrize(
    ("retry", "deadline", "duration"), [(2, 10, 10), (10, 10, 15), (0, 1, 2), (3, 2, 15)]
)
def test_timing_refuses_a_deadline_that_does_not_fence(retry, deadline, duration):
    with pytest.raises(ValueError, match="retry period < renew deadline < lease duration"):
        Timing(duration, deadline, retry)


class FakeLeases:
    """One Lease with resourceVersions and 409s, as the API server keeps it; `down` makes every call fail."""

    def __init__(self) -> None:
        self.lease: dict | None = None
        self.versions = itertools.count(1)
        self.down = False
        self.writes: list[str] = []

    def _check(self) -> None:
        if self.down:
            raise ConnectionError("API server unreachable")

    def read(self):
        self._check()
        return copy.deepcopy(self.lease)

    def _store(self, body):
        self.lease = {"metadata": {**body["metadata"], "resourceVersion": str(next(self.versions))},
                      "spec": dict(body["spec"])}  # fmt: skip
        self.writes.append(body["spec"].get("holderIdentity") or "")
        return copy.deepcopy(self.lease)

    def create(self, body):
        self._check()
        if self.lease is not None:
            raise Conflict()
        return self._store(body)

    def replace(self, body):
        self._check()
        if (
            self.lease is None
            or body["metadata"]["resourceVersion"] != self.lease["metadata"]["resourceVersion"]
        ):
            raise Conflict()
        return self._store(body)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


TIMING = Timing(duration=15, renew_deadline=10, retry=2)


@pytest.fixture
def world():
    store, clock = FakeLeases(), Clock()
    leads = []
    a, b = (
        Elector(store, "lease", name, TIMING, clock=clock, wall=clock, on_lead=lambda n=name: leads.append(n))
        for name in "ab"
    )
    return store, clock, a, b, leads


def run(clock, electors, seconds, step=TIMING.retry, timeline=None):
    """Every elector steps each `step` seconds of the shared clock; `timeline` gets (time, who is active)."""
    end = clock.now + seconds
    while clock.now < end:
        for e in electors:
            e.step()
        if timeline is not None:
            timeline.append((clock.now, tuple(e.identity for e in electors if e.active())))
        clock.now += step


def test_first_comer_leads_the_other_waits_and_never_writes(world):
    store, clock, a, b, leads = world
    a.step()
    b.step()
    assert a.active() and not b.active() and leads == ["a"]
    run(clock, [a, b], 120)
    assert a.active() and not b.active() and leads == ["a"]
    assert set(store.writes) == {"a"}, "the standby wrote the Lease while it was held"
    assert store.lease["spec"]["leaseDurationSeconds"] == 15 and store.lease["spec"]["leaseTransitions"] == 0


def test_a_dead_leader_is_replaced_within_duration_plus_retry(world):
    store, clock, a, b, leads = world
    run(clock, [a, b], 10)
    renewed = clock.now - TIMING.retry  # a's last renewal; it is SIGKILLed before the next one
    timeline = []
    run(clock, [b], 30, step=0.5, timeline=timeline)
    took = next(t for t, active in timeline if "b" in active)
    # from the kill, somewhere in the retry period after that renewal: duration - retry .. duration + retry
    assert TIMING.duration <= took - renewed <= TIMING.duration + 0.5
    assert leads == ["a", "b"] and store.lease["spec"]["leaseTransitions"] == 1


def test_a_partitioned_leader_stops_writing_before_another_can_lead(world):
    """a cannot reach the API (its renewals fail) while b still can: a fences itself at its renew deadline,
    which comes before b may take the Lease, however their steps interleave."""
    store, clock, a, b, _ = world
    run(clock, [a, b], 10)
    a_until = None
    for _ in range(400):  # 0.1 s steps
        store.down = True
        a.step()
        store.down = False
        if a_until is None and not a.active():
            a_until = clock.now
        b.step()
        if b.active():
            break
        clock.now += 0.1
    b_from = clock.now
    assert a_until is not None and b.active()
    assert b_from - a_until >= TIMING.duration - TIMING.renew_deadline - TIMING.retry
    assert not (a.active() and b.active())


def test_a_leader_that_loses_a_race_stops_at_once(world):
    store, clock, a, b, _ = world
    a.step()
    # b takes the Lease behind a's back (as after a's pause longer than the duration)
    lease = store.read()
    store.replace({"metadata": lease["metadata"], "spec": {**lease["spec"], "holderIdentity": "b"}})
    a.step()
    assert not a.active()


def test_release_lets_the_standby_lead_at_its_next_look(world):
    store, clock, a, b, leads = world
    run(clock, [a, b], 10)
    assert (
        REGISTRY.get_sample_value("gpufleet_leader") == 1
    )  # gpufleet_leader: one gauge per process (here, both electors')
    a.release()
    assert not a.active() and store.lease["spec"]["holderIdentity"] is None
    assert REGISTRY.get_sample_value("gpufleet_leader") == 0
    b.step()
    assert b.active() and leads == ["a", "b"]
    assert REGISTRY.get_sample_value("gpufleet_leader") == 1


class RenewalInFlight(FakeLeases):
    """The elector's own thread sends a renewal that lands only later: after any write by another thread has
    read the Lease (the order that makes a release racing it fail), or once `lands` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.sent, self.lands, self.landed = threading.Event(), threading.Event(), threading.Event()

    def replace(self, body):
        if threading.current_thread().name != "leader-election":
            self.lands.set()
            self.landed.wait(5)
            return super().replace(body)
        if self.landed.is_set():
            return super().replace(body)
        self.sent.set()
        self.lands.wait(5)
        try:
            return super().replace(body)
        finally:
            self.landed.set()


def test_stop_waits_for_a_renewal_under_way_then_releases():
    store = RenewalInFlight()
    a = Elector(store, "lease", "a", Timing(duration=1.5, renew_deadline=1.0, retry=0.01))
    a.start()
    assert store.sent.wait(5), "the elector never renewed"
    threading.Timer(0.2, store.lands.set).start()
    # Released at once, the renewal would land between the release's read and its write: refused (409), the
    # Lease left held until it expires. stop() lets the loop's step end first.
    a.stop()
    assert store.lease["spec"]["holderIdentity"] is None
    assert store.writes[-1] == "" and not a.active()


def test_an_unreachable_api_keeps_the_leader_until_its_deadline(world):
    store, clock, a, _, _ = world
    a.step()
    store.down = True
    clock.now += TIMING.renew_deadline - 0.5
    a.step()
    assert a.active()
    clock.now += 1
    a.step()
    assert not a.active()


def test_the_command_line_names_the_lease_and_refuses_timings_that_do_not_fence():
    from gpufleet.cli import _election, parser

    args = parser().parse_args(["run", "--leader-election", "--lease-namespace", "ops", "--identity", "pod-1",
                                "--lease-duration", "8", "--renew-deadline", "5.5", "--retry-period", "1"])  # fmt: skip
    election = _election(args)
    assert (election.namespace, election.name, election.identity) == ("ops", "gpufleet-operator", "pod-1")
    assert election.timing == Timing(8, 5.5, 1)
    assert _election(parser().parse_args(["run"])) is None  # one replica alone writes from the start
    # Two processes on one host never share an identity.
    one, two = (_election(parser().parse_args(["run", "--leader-election"])) for _ in range(2))
    assert one.identity != two.identity
    bad = parser().parse_args(["run", "--leader-election", "--renew-deadline", "20"])
    with pytest.raises(SystemExit, match="retry period < renew deadline < lease duration"):
        _election(bad)
