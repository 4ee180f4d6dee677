"""Fixtures shared by every test suite: a real redis-server, and the `gpu` marker's skip."""

from __future__ import annotations

import importlib.util

import pytest

from redis_server import RedisServer


@pytest.fixture(scope="session")
def redis_server():
    with RedisServer() as server:
        yield server


@pytest.fixture
def redis_url(redis_server):
    """The session's Redis, emptied and running, for one test."""
    import redis

    redis_server.start()
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    return redis_server.url


def _cuda_available() -> bool:
    if importlib.util.find_spec("cupy") is None:
        return False
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def pytest_collection_modifyitems(config, items):
    # Tests that run a Go-built binary (helm) need hack/build-k8s.sh; `make unit` leaves them out.
    for item in items:
        if "helm" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.binaries)
    # Slow tests first (a stable sort): under xdist they start at once and the quick ones fill in around them,
    # rather than the last worker running them one after another at the end.
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
    gpu_items = [item for item in items if "gpu" in item.keywords]
    # Only probe CUDA when a GPU test was collected: the probe initialises the driver in this process.
    if gpu_items and not _cuda_available():
        skip = pytest.mark.skip(reason="needs CuPy and a CUDA device")
        for item in gpu_items:
            item.add_marker(skip)
