"""kombu's Redis transport, with a worker's deliveries named in its state entry in the same round trip.

When a message arrives, kombu records it as unacknowledged (a pipeline: ZADD to `unacked_index`, HSET to
`unacked`). The worker's state entry must name it at once too (docs/worker-contract.md: a worker killed a moment
later leaves it for another to put back). Written by the state thread, that was one more Redis round trip and a
thread handover per task, which cost a third of the worker's throughput on short tasks; written here, it is one
more command in kombu's own pipeline, atomic with kombu's record of the delivery.
"""

from __future__ import annotations

from contextlib import contextmanager

from kombu.transport import redis as kombu_redis

from . import contract, state


class NamingQoS(kombu_redis.QoS):
    _entry: tuple[str, str, str] | None = None

    def append(self, message, delivery_tag):
        self._entry = state.receipt_entry(delivery_tag, tuple(self._delivered))
        try:
            super().append(message, delivery_tag)
        finally:
            self._entry = None

    @contextmanager
    def pipe_or_acquire(self, pipe=None, client=None):
        with super().pipe_or_acquire(pipe, client) as pipe:
            entry, self._entry = self._entry, None
            if entry is not None:
                pipe.hset(*entry)
            yield pipe


class Channel(kombu_redis.Channel):
    QoS = NamingQoS


class Transport(kombu_redis.Transport):
    Channel = Channel


class SentinelChannel(kombu_redis.SentinelChannel):
    QoS = NamingQoS


class SentinelTransport(kombu_redis.SentinelTransport):
    Channel = SentinelChannel


def for_url(url: str) -> str | None:
    """Celery's `broker_transport` for a broker URL: one of the above for Redis, None (the URL's own) else."""
    name = {"redis": "Transport", "sentinel": "SentinelTransport"}.get(contract.redis_flavour(url) or "")
    return f"{__name__}:{name}" if name else None
