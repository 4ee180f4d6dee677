"""The Celery app the fault tests' worker pods run (spec.worker.celeryApp: chaos_app:app).

Like e2e_app, gpufleet_worker's app plus one task that leaves a trace of every run in Redis. Its traces survive
the faults under test: the client retries through a broker that is restarting or blackholed (otherwise a task
whose trace failed would count as lost while the fleet did nothing wrong), and every write is idempotent, because
a write that timed out in a blackhole may still land once the path is back.
"""

from __future__ import annotations

import os
import time
import uuid

import redis
from celery import Celery
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from gpufleet_worker.app import configure

app = Celery("chaos_app")
configure(app)

RUNS = "chaos:runs"  # hash: one field per start of a task (a fresh id), its value the task's marker
DONE = "chaos:done"  # set: the marker of every finished task

_client: redis.Redis | None = None


def traces() -> redis.Redis:
    global _client
    if _client is None:
        _client = redis.Redis.from_url(
            app.conf.broker_url,
            socket_timeout=5,
            socket_connect_timeout=5,
            retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=300),
            retry_on_error=[redis.ConnectionError, redis.TimeoutError],
        )
    return _client


@app.task(name="chaos.work")
def work(marker: str, seconds: float) -> str:
    run = f"{uuid.uuid4().hex}:{os.environ.get('GPUFLEET_POD_NAME', '')}"
    if seconds:
        traces().hset(RUNS, run, marker)
        time.sleep(seconds)
        traces().sadd(DONE, marker)
    else:  # the burst's trivial task: one round trip
        traces().pipeline(transaction=False).hset(RUNS, run, marker).sadd(DONE, marker).execute()
    return marker
