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
