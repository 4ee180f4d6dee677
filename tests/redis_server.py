"""The tests' redis-server: the one the demo uses too (`gpufleet_tools.devcluster.redisserver`).

`tests/conftest.py` exposes it as the `redis_server` (session) and `redis_url` (per test, flushed) fixtures.
"""

from gpufleet_tools.devcluster.redisserver import REDIS_SERVER, RedisServer

__all__ = ["REDIS_SERVER", "RedisServer"]
