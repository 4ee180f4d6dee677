"""The worker's transport names a delivery in the worker's state entry in kombu's own pipeline, on a real Redis."""

from __future__ import annotations

import json

import pytest
import redis
from kombu import Connection

from gpufleet_worker import contract, state, transport
from gpufleet_worker.settings import from_env


@pytest.fixture
def keeper(redis_url):
    def make(prefix: str = "") -> state.Keeper:
        env = {"GPUFLEET_BROKER_URL": redis_url, "GPUFLEET_FLEET": "team-a/matrix", "GPUFLEET_POD_NAME": "matrix-0",
               "GPUFLEET_QUEUES": "gpu", "GPUFLEET_GLOBAL_KEYPREFIX": prefix}  # fmt: skip
        made = state.Keeper(from_env(env), "matrix-0@gpufleet", redis.Redis.from_url(redis_url))
        state._current = made  # as Keeper.start() does, without its thread: only the receipt writes
        return made

    yield make
    state._current = None


@pytest.mark.parametrize("prefix", ["", "team-a:"])
def test_a_delivery_is_named_as_it_arrives(redis_url, keeper, prefix):
    k = keeper(prefix)
    options = {"global_keyprefix": prefix} if prefix else {}
    with Connection(redis_url, transport=transport.for_url(redis_url), transport_options=options) as conn:
        queue = conn.SimpleQueue("gpu")
        queue.put({"n": 1})
        queue.put({"n": 2})
        first = queue.get(timeout=10)
        second = queue.get(timeout=10)
        raw = redis.Redis.from_url(redis_url).hget(contract.workers_key(prefix, "team-a/matrix"), "matrix-0")
        entry = json.loads(raw)
        # The second arrival names both: the first is still held (not acked).
        assert set(entry["tags"]) == {first.delivery_tag, second.delivery_tag}
        # Held is running (prefetch 1): both count from their arrival, before Celery's bookkeeping has them.
        assert entry["busy"] is True and entry["active"] == 2
        assert entry["hostname"] == "matrix-0@gpufleet" and entry["expires"] > entry["since"]
        assert contract.WorkerState.from_json(raw) is not None
        first.ack()
        second.ack()
        queue.close()
    assert k.client.keys("*gpufleet:workers*") == [contract.workers_key(prefix, "team-a/matrix").encode()]


def test_without_a_keeper_the_transport_is_kombus(redis_url):
    with Connection(redis_url, transport=transport.for_url(redis_url)) as conn:
        queue = conn.SimpleQueue("gpu")
        queue.put({"n": 1})
        queue.get(timeout=10).ack()
        queue.close()
    assert redis.Redis.from_url(redis_url).keys("*gpufleet:workers*") == []


@pytest.mark.parametrize(
    "url, expected",
    [
        ("redis://r:6379/0", "gpufleet_worker.transport:Transport"),
        ("rediss://r:6380/0", "gpufleet_worker.transport:Transport"),
        ("sentinel://s1:26379;sentinel://s2:26379", "gpufleet_worker.transport:SentinelTransport"),
        ("amqp://guest@rabbit//", None),
    ],
)
def test_transport_for_each_url(url, expected):
    assert transport.for_url(url) == expected
