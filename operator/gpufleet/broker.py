"""Reading a Celery Redis broker: kombu's key layout (pure) and the probe (one pipelined round trip)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from functools import cached_property
from types import MappingProxyType
from urllib.parse import unquote, urlsplit

import redis
import redis.sentinel
from redis.backoff import NoBackoff
from redis.retry import Retry

from gpufleet.model import Depth, Reading
from gpufleet_worker import contract

_NO_WORKERS: MappingProxyType = MappingProxyType({})


class BrokerUnreachable(Exception):
    """The broker could not be read. The message never carries a password."""


@dataclass(frozen=True)
class Layout:
    """Where kombu's Redis transport keeps a Celery app's queues (its transport options)."""

    global_keyprefix: str = ""
    priority_steps: tuple[int, ...] = contract.KOMBU_PRIORITY_STEPS
    separator: str = contract.KOMBU_SEP
    unacked_key: str = contract.UNACKED_KEY

    def list_keys(self, queue: str) -> list[str]:
        """One Redis list per priority step: kombu's `_q_for_pri`, with the global prefix its client adds."""
        return [
            self.global_keyprefix + (f"{queue}{self.separator}{step}" if step else queue)
            for step in sorted(set(self.priority_steps))
        ]

    @property
    def unacked(self) -> str:
        return self.global_keyprefix + self.unacked_key

    def workers_key(self, fleet: str) -> str:
        """The hash where the workers of `fleet` ("namespace/name") publish whether they are busy."""
        return contract.workers_key(self.global_keyprefix, fleet)


@dataclass(frozen=True, repr=False)
class Connection:
    """How to reach one broker. Two fleets with equal Connections share one pool and one round trip."""

    url: str
    password: str | None = field(default=None, repr=False)
    database: int | None = None
    tls: bool = False
    tls_insecure: bool = False
    tls_ca_pem: str | None = field(default=None, repr=False)
    # Redis Sentinel (then `url` is unused): the master of `master_name`, as these sentinels know it now.
    sentinels: tuple[tuple[str, int], ...] = ()
    master_name: str | None = None
    sentinel_password: str | None = field(default=None, repr=False)

    def __hash__(self) -> int:  # a key of the probe pools and of each tick's grouping: hashed once
        return self._hash

    @cached_property
    def _hash(self) -> int:
        return hash(tuple(getattr(self, f.name) for f in fields(self)))

    def __repr__(self) -> str:  # a URL from a Secret may carry a password: show only the safe form
        return f"Connection({self.safe_url!r}, database={self.database}, tls={self.tls})"

    @property
    def safe_url(self) -> str:
        """The URL as it may be shown in a log, an Event or a status: credentials removed."""
        if self.sentinels:
            hosts = ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.sentinels)
            return f"sentinel://{hosts}/{self.master_name}"
        parts = urlsplit(self.url)
        netloc = parts.hostname or ""
        if parts.port:
            netloc += f":{parts.port}"
        return parts._replace(netloc=netloc, query="").geturl()

    def sentinel_kwargs(self, timeout: float) -> dict:
        """How to talk to the sentinels themselves (redis-py's `sentinel_kwargs`, as kombu's transport option).

        redis-py asks them one after the other until one answers: each gets a share of the probe's timeout, so
        that blackholed sentinels cost a connect no more than a blackholed master does (the tick waits on it)."""
        share = max(0.2, timeout / max(1, len(self.sentinels)))
        return {"password": self.sentinel_password, "socket_timeout": share, "socket_connect_timeout": share,
                "retry": Retry(NoBackoff(), 0)}  # fmt: skip

    def client_kwargs(self) -> dict:
        if self.sentinels:  # the master's address comes from the sentinels at each connect
            return {"db": self.database or 0, "password": self.password}
        parts = urlsplit(self.url)
        path_db = parts.path.strip("/")
        kwargs: dict = {
            "host": parts.hostname or "localhost",
            "port": parts.port or 6379,
            "db": self.database if self.database is not None else int(path_db or 0),
            "username": unquote(parts.username) if parts.username else None,
            "password": self.password
            if self.password is not None
            else (unquote(parts.password) if parts.password else None),
        }
        if self.tls or parts.scheme == "rediss":
            kwargs |= {"ssl": True, "ssl_cert_reqs": "none" if self.tls_insecure else "required"}
            if self.tls_ca_pem:
                kwargs["ssl_ca_data"] = self.tls_ca_pem
        return kwargs


@dataclass(frozen=True)
class Request:
    """One fleet's part of a probe."""

    fleet: str
    queues: tuple[str, ...]
    layout: Layout = Layout()

    @cached_property
    def keys(self) -> tuple[str, ...]:
        """What the probe reads for this fleet: its queues' lists, queue by queue, then its workers' hash."""
        lists = (key for queue in self.queues for key in self.layout.list_keys(queue))
        return (*lists, self.layout.workers_key(self.fleet))

    @cached_property
    def shape(self) -> tuple[int, int]:
        """(queues, lists per queue): how the probe's script walks `keys`."""
        return len(self.queues), len(set(self.layout.priority_steps))


# Reads many fleets in one call: for each, LLEN summed over each queue's priority lists, and its workers' hash.
# KEYS: fleet after fleet, its `Request.keys`; ARGV: fleet after fleet, its `Request.shape`. Returns, fleet
# after fleet, {sum per queue} and the hash's flat field/value list. One call per chunk of fleets: a command per
# fleet (and the script's text sent with each) cost the operator more CPU than everything else it did per poll.
_READ_FLEETS = """
local out, k = {}, 1
for f = 1, #ARGV, 2 do
  local sums, per = {}, tonumber(ARGV[f + 1])
  for q = 1, tonumber(ARGV[f]) do
    local n = 0
    for _ = 1, per do n = n + redis.call('LLEN', KEYS[k]); k = k + 1 end
    sums[q] = n
  end
  out[#out + 1] = sums
  out[#out + 1] = redis.call('HGETALL', KEYS[k])
  k = k + 1
end
return out
"""
# Fleets per call: the server runs a script to its end, so a call over thousands of fleets would hold other
# clients (the workers' BRPOP and acks) for milliseconds; chunks let them in between.
FLEETS_PER_CALL = 200

# Counts the unacknowledged deliveries per routing key on the server, so the payloads never cross the wire.
# kombu stores each as json [message, exchange, routing_key]: the routing key is the last string.
_COUNT_UNACKED = """
local counts = {}
for _, v in ipairs(redis.call('HVALS', KEYS[1])) do
  local rk = string.match(string.sub(v, -1024), '"([^"]*)"%s*%]%s*$')
  if rk then counts[rk] = (counts[rk] or 0) + 1 end
end
local out = {}
for k, n in pairs(counts) do out[#out + 1] = k; out[#out + 1] = n end
return out
"""


class RedisProbe:
    """Reads every queue of every fleet on one broker in a single pipelined round trip."""

    def __init__(self, connection: Connection, timeout: float = 2.0) -> None:
        self.connection = connection
        self._sentinel: redis.sentinel.Sentinel | None = None
        # One retry at once, no more: it covers a pooled connection the server dropped while idle (a restart, a
        # failover's CLIENT KILL), while a blackholed broker costs at most two timeouts. redis-py's default
        # (several retries with a growing back-off) made one probe of a blackholed broker take ~25 s, and the
        # tick, which waits for every broker's probe, stalled every other fleet as long.
        kwargs = {
            **connection.client_kwargs(),
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
            "retry": Retry(NoBackoff(), 1),
        }
        if connection.sentinels:
            # Each new connection asks the sentinels for the master. After a failover the sentinels kill every
            # client of the old master (CLIENT KILL TYPE normal), so the next probe connects to the new one;
            # while no sentinel names a master that answers, the probe raises and the fleet is held.
            self._sentinel = redis.sentinel.Sentinel(
                connection.sentinels, sentinel_kwargs=connection.sentinel_kwargs(timeout), **kwargs
            )
            self._client = self._sentinel.master_for(connection.master_name, max_connections=4)
        else:
            self._client = redis.Redis(**kwargs, max_connections=4)

    def read(self, requests: Sequence[Request], now: float | None = None) -> dict[str, Reading]:
        now = time.time() if now is None else now
        pipe = self._client.pipeline(transaction=False)
        chunks = [requests[i : i + FLEETS_PER_CALL] for i in range(0, len(requests), FLEETS_PER_CALL)]
        for chunk in chunks:
            keys = [key for req in chunk for key in req.keys]
            pipe.eval(_READ_FLEETS, len(keys), *keys, *(n for req in chunk for n in req.shape))
        unacked_keys = sorted({req.layout.unacked for req in requests})
        for key in unacked_keys:
            pipe.eval(_COUNT_UNACKED, 1, key)
        try:
            replies = pipe.execute()
        except (redis.RedisError, OSError) as exc:
            raise BrokerUnreachable(f"{self.connection.safe_url}: {type(exc).__name__}: {exc}") from None

        unacked: dict[str, dict[str, int]] = {}
        for key, flat in zip(unacked_keys, replies[len(chunks) :], strict=True):
            pairs = iter(flat)
            unacked[key] = {
                (k.decode() if isinstance(k, bytes) else k): int(n) for k, n in zip(pairs, pairs, strict=True)
            }
        per_fleet = iter([item for reply in replies[: len(chunks)] for item in reply])
        readings = {}
        for req, sums, flat in zip(requests, per_fleet, per_fleet, strict=True):
            running = unacked[req.layout.unacked]
            queues = {q: Depth(int(n), running.get(q, 0)) for q, n in zip(req.queues, sums, strict=True)}
            if not flat:  # no worker has written: most fleets, most of the time
                readings[req.fleet] = Reading(queues=queues, workers=_NO_WORKERS)
                continue
            pairs = iter(flat)
            state = dict(zip(pairs, pairs, strict=True))
            workers = contract.live_workers(state, now)
            readings[req.fleet] = Reading(
                queues=queues, workers=workers, stale=tuple(contract.stale_fields(state, now, live=workers))
            )
        return readings

    def restore(self, request: Request, fields: Sequence[tuple[str, bool]], now: float) -> dict[str, int]:
        """Put back the messages held by the workers named in `fields` (field, only if its entry is stale), in
        one round trip; returns how many each one held (-1: its entry was alive after all)."""
        b = request.layout
        pipe = self._client.pipeline(transaction=False)
        for pod, only_if_stale in fields:
            keys, argv = contract.restore_call(
                b.global_keyprefix, request.fleet, pod, separator=b.separator, priority_steps=b.priority_steps,
                unacked_key=b.unacked_key, stale_before=now if only_if_stale else None,
            )  # fmt: skip
            pipe.eval(contract.RESTORE_SCRIPT, len(keys), *keys, *argv)
        try:
            counts = pipe.execute()
        except (redis.RedisError, OSError) as exc:
            raise BrokerUnreachable(f"{self.connection.safe_url}: {type(exc).__name__}: {exc}") from None
        return {pod: int(n) for (pod, _), n in zip(fields, counts, strict=True)}

    def close(self) -> None:
        self._client.close()
        if self._sentinel is not None:
            for client in self._sentinel.sentinels:
                client.close()


@dataclass(frozen=True)
class Handle:
    """One fleet's broker and its part of the probe: where a plan's restore is written."""

    probe: RedisProbe
    request: Request

    def restore(self, fields: Sequence[tuple[str, bool]], now: float) -> dict[str, int]:
        return self.probe.restore(self.request, fields, now)


class ProbePool:
    """One RedisProbe (and so one connection pool) per distinct broker, dropped when no fleet uses it."""

    def __init__(self, timeout: float = 2.0) -> None:
        self._timeout = timeout
        self._probes: dict[Connection, RedisProbe] = {}
        self._lock = threading.Lock()

    def get(self, connection: Connection) -> RedisProbe:
        with self._lock:
            probe = self._probes.get(connection)
            if probe is None:
                probe = self._probes[connection] = RedisProbe(connection, self._timeout)
            return probe

    def keep_only(self, connections: Iterable[Connection]) -> None:
        wanted = set(connections)
        with self._lock:
            for conn in [c for c in self._probes if c not in wanted]:
                self._probes.pop(conn).close()

    def close(self) -> None:
        self.keep_only(())
