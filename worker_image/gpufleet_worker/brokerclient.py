"""The worker's own redis-py client to its broker (its state entry, restores): the URL's server, or the master
the sentinels name now, as Celery's own connections reach it."""

from __future__ import annotations

import redis
import redis.sentinel

from .settings import Settings


def client(settings: Settings, timeout: float = 5.0) -> redis.Redis:
    s = settings.sentinel
    if s is None:
        return redis.Redis.from_url(
            settings.broker_url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            **(settings.broker_use_ssl or {}),
        )
    # Each new connection asks the sentinels for the master; after a failover they cut the old master's
    # clients, so the next write reconnects to the new one.
    sentinel = redis.sentinel.Sentinel(
        s.sentinels,
        sentinel_kwargs={
            "password": s.sentinel_password,
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
        },
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
    )
    return sentinel.master_for(s.master_name, db=s.db, password=s.password)
