"""The Celery app the e2e worker pods run (spec.worker.celeryApp: e2e_app:app).

It is gpufleet_worker's app (configure() gives the fleet-safe defaults, heartbeat and worker state), plus one
task that leaves a trace of every run in Redis, so a test can count each task: none lost, none run twice.
"""

from __future__ import annotations

import json
import os
import time

import redis
from celery import Celery

from gpufleet_worker.app import configure

app = Celery("e2e_app")
configure(app)

RUNS = "e2e:runs"  # one entry per start of a task: {marker, pod, start}
DONE = "e2e:done"  # one entry per finished task: marker


@app.task(name="e2e.work")
def work(marker: str, seconds: float) -> str:
    client = redis.Redis.from_url(app.conf.broker_url)
    client.rpush(
        RUNS, json.dumps({"marker": marker, "pod": os.environ.get("GPUFLEET_POD_NAME"), "start": time.time()})
    )
    time.sleep(seconds)
    client.rpush(DONE, marker)
    return marker
