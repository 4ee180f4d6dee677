"""The benchmarks' own app, configured like any user's: an empty task and an echo beside the gpufleet library.

BENCH_TODAY_CODEC=1 gives it the result path gpufleet had before results followed their request's format
(every result in gpufleet-msgpack, Celery's own Redis backend): the baseline of benchmarks/worker_codec.py.
BENCH_STATE_THREAD=1 gives it kombu's own transport, so each delivery is named by waking the state thread for
a write of its own, as before 2026-12-06: the baseline of benchmarks/worker_fleet.py --before.
"""

import os

from celery import Celery

from gpufleet_worker import codec
from gpufleet_worker.app import configure

app = Celery("worker_bench")
settings = configure(app)
if os.environ.get("BENCH_TODAY_CODEC") == "1":
    app.conf.update(
        task_serializer=codec.NAME, result_serializer=codec.NAME, result_backend=settings.result_backend
    )


@app.task(name="bench.noop")
def noop():
    return None


@app.task(name="bench.echo")
def echo(value):
    return value
