"""Plain Celery, for comparison: the same empty task with nothing of gpufleet (JSON, Celery's own worker).

BENCH_FLEET_SAFE=1 gives it the settings gpufleet's worker runs with (late acks, prefetch 1); without it,
Celery's defaults (ack on receipt, prefetch 4).
"""

import os

from celery import Celery

BROKER = os.environ["BENCH_BROKER"]

app = Celery("worker_plain", broker=BROKER, backend=BROKER)
app.conf.update(
    task_default_queue=os.environ.get("GPUFLEET_QUEUES", "celery"), broker_connection_retry_on_startup=True
)
if os.environ.get("BENCH_FLEET_SAFE") == "1":
    app.conf.update(task_acks_late=True, task_reject_on_worker_lost=True, worker_prefetch_multiplier=1)


@app.task(name="bench.noop")
def noop():
    return None
