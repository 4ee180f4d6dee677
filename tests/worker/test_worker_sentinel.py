"""The worker's own client to a broker behind Redis Sentinel: the master the sentinels name, after a failover too."""

from __future__ import annotations

import time

import pytest
import redis

from gpufleet_worker import brokerclient
from gpufleet_worker.errors import SettingsError
from gpufleet_worker.settings import from_env


def test_sentinel_settings_refuse_half_a_configuration():
    with pytest.raises(SettingsError, match="GPUFLEET_BROKER_SENTINEL_MASTER is unset"):
        from_env({"GPUFLEET_BROKER_URL": "sentinel://s:26379"})
    with pytest.raises(SettingsError, match="is not sentinel://"):
        from_env({"GPUFLEET_BROKER_URL": "redis://r:6379", "GPUFLEET_BROKER_SENTINEL_MASTER": "m"})
    with pytest.raises(SettingsError, match="not a sentinel://host:port URL"):
        from_env(
            {"GPUFLEET_BROKER_URL": "sentinel://s:26379;redis://r", "GPUFLEET_BROKER_SENTINEL_MASTER": "m"}
        )
    plain = from_env({"GPUFLEET_BROKER_URL": "sentinel://s", "GPUFLEET_BROKER_SENTINEL_MASTER": "m"})
    assert plain.sentinel.sentinels == (("s", 26379),) and plain.broker_url == "sentinel://s:26379/0"
    assert "sentinel_kwargs" not in plain.transport_options
    # Results elsewhere: the result backend gets none of the sentinel options.
    other = from_env({"GPUFLEET_BROKER_URL": "sentinel://s", "GPUFLEET_BROKER_SENTINEL_MASTER": "m",
                      "GPUFLEET_RESULT_BACKEND": "redis://results:6379/1"})  # fmt: skip
    assert other.result_transport_options == {}


@pytest.mark.slow
def test_the_state_client_writes_to_the_new_master_after_a_failover():
    from redis_sentinel import SentinelGroup

    with SentinelGroup() as group:
        settings = from_env({**group.worker_env(), "GPUFLEET_BROKER_DB": "2"})
        client = brokerclient.client(settings, timeout=0.5)
        client.hset("gpufleet:workers:a/b", "pod-0", "{}")
        old = group.kill_master()
        deadline = time.monotonic() + 30
        while True:
            try:
                client.hset("gpufleet:workers:a/b", "pod-0", "{}")
                break
            except redis.RedisError:
                assert time.monotonic() < deadline, "no write reached the new master"
                time.sleep(0.1)
        new = group.master_port()
        assert new != old
        fresh = redis.Redis(port=new, password=group.password, db=2)
        assert fresh.hget("gpufleet:workers:a/b", "pod-0") == b"{}"
        client.close()
