"""The Celery app of the Sentinel e2e test's worker pods (spec.worker.celeryApp: sentinel_app:app).

gpufleet_worker's app with a broker behind Redis Sentinel, plus one task that leaves a trace of every run on the
master the sentinels name now (through the same client the worker's state writes use), so the test can count
each task across a failover: none lost.
"""

from __future__ import annotations

import json
import os
import time

from celery import Celery

from gpufleet_worker import brokerclient
from gpufleet_worker.app import configure

app = Celery("sentinel_app")
settings = configure(app)
client = brokerclient.client(settings)

RUNS = "e2e:runs"  # one entry per start of a task: {marker, pod, start}
DONE = "e2e:done"  # one entry per finished task: {marker, pod, end}


def _push(key: str, entry: dict) -> None:
    # The failover may cut this write too: retry until the new master takes it (the task's time limit bounds it).
    for _ in range(100):
        try:
            client.rpush(key, json.dumps(entry))
            return
        except Exception:  # noqa: BLE001 - redis.ConnectionError, MasterNotFoundError, ReadOnlyError alike
            time.sleep(0.1)
    raise RuntimeError(f"could not write {key}")


@app.task(name="e2e.work")
def work(marker: str, seconds: float) -> str:
    pod = os.environ.get("GPUFLEET_POD_NAME")
    _push(RUNS, {"marker": marker, "pod": pod, "start": time.time()})
    time.sleep(seconds)
    _push(DONE, {"marker": marker, "pod": pod, "end": time.time()})
    return marker
