"""A tick's probes: a broker that does not answer holds up its own fleets only (real redis-server, and a socket
that accepts connections and never answers, as a blackholed broker does)."""

from __future__ import annotations

import time

from gpufleet.broker import Connection, ProbePool
from gpufleet.cache import Cache
from gpufleet.model import Queue
from gpufleet.observe import Observer, _request, _Resolved
from gpufleet.spec import parse_spec


def queue(name: str, url: str) -> Queue:
    spec = parse_spec({"broker": {"url": url}, "queues": ["gpu"], "worker": {"image": "w:1"}})
    return Queue("team", name, f"uid-{name}", 1, spec)


def test_a_silent_broker_holds_up_only_its_own_fleets(redis_url, blackhole):
    observer = Observer(kube=None, cache=Cache(), probes=ProbePool(timeout=1.0))
    healthy, silent = queue("healthy", redis_url), queue("silent", blackhole[0])
    resolved = {
        q.key: _Resolved(1, Connection(q.spec.broker.url), None, _request(q)) for q in (healthy, silent)
    }
    try:
        readings, errors, late = observer._probe([healthy, silent], resolved, time.time())
        assert healthy.key in readings and late == {silent.key} and errors == {}
        observer._resolved = resolved
        assert observer._running(resolved[silent.key].connection)  # its probe goes on after the tick

        # Ticks go on meanwhile, the healthy fleet read at each; then the silent probe gives up, and the next
        # tick reports it: the fleet is held as for any unreachable broker.
        deadline = time.monotonic() + 30
        while observer._running(resolved[silent.key].connection) and time.monotonic() < deadline:
            readings, errors, late = observer._probe([healthy], resolved, time.time())
            assert healthy.key in readings
            time.sleep(0.1)
        readings, errors, late = observer._probe([healthy, silent], resolved, time.time())
        assert healthy.key in readings and silent.key in errors and not late
        assert "Timeout" in errors[silent.key]
    finally:
        observer.close()


def test_the_observer_returns_what_it_saw_and_decides_nothing(redis_url, blackhole):
    """Snapshots for the fleets it could read, the fleets whose reads failed with their error, the fleets still
    waiting on their broker, and a broker handle per fleet with a connection; no callback, no rescheduling."""
    observer = Observer(kube=None, cache=Cache(), probes=ProbePool(timeout=1.0))
    observer._listed.add("team")  # the namespace's Deployments listed once already
    healthy, silent = queue("healthy", redis_url), queue("silent", blackhole[0])
    invalid = Queue("team", "invalid", "uid-invalid", 1, None, "spec.worker.pool: unknown pool")
    secret = parse_spec({"broker": {"urlSecretRef": {"name": "s", "key": "url"}}, "queues": ["gpu"],
                         "worker": {"image": "w:1"}})  # fmt: skip
    unreadable = Queue("team", "unreadable", "uid-unreadable", 1, secret)  # no API to read its Secret from
    try:
        seen = observer.snapshots([healthy, silent, invalid, unreadable], time.time())
        by_key = {s.key: s for s in seen.snapshots}
        assert set(by_key) == {healthy.key, invalid.key}
        assert by_key[healthy.key].reading is not None and by_key[invalid.key].spec_error
        assert seen.waiting == {silent.key}
        assert set(seen.failed) == {unreadable.key} and isinstance(
            seen.failed[unreadable.key], AttributeError
        )
        assert (
            set(seen.brokers) == {healthy.key} and seen.brokers[healthy.key].request.fleet == "team/healthy"
        )
        # While the silent broker's probe runs, its fleet is not even resolved again: still waiting.
        again = observer.snapshots([silent], time.time(), reresolve={silent.key})
        assert again.waiting == {silent.key} and again.snapshots == [] and again.failed == {}
    finally:
        observer.close()
