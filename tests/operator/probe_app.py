"""A plain Celery app (not gpufleet's) for the probe tests: the probe must read any Celery app's broker."""

import os
import time

from celery import Celery

app = Celery("probe_app", broker=os.environ.get("PROBE_BROKER", "redis://127.0.0.1:6379/0"))
app.conf.update(
    broker_transport_options={
        "global_keyprefix": os.environ.get("PROBE_PREFIX", ""),
        "priority_steps": [0, 3, 6, 9],
        "visibility_timeout": 3600,
    },
    task_serializer="json",
    accept_content=["json"],
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
)


@app.task(name="probe.hold")
def hold(path: str) -> None:
    """Runs until `path` exists: a task that stays running as long as the test needs."""
    while not os.path.exists(path):
        time.sleep(0.05)
