"""The benchmarks' own app, configured like any user's: an empty task beside the gpufleet library."""

from celery import Celery

from gpufleet_worker.app import configure

app = Celery("worker_bench")
configure(app)


@app.task(name="bench.noop")
def noop():
    return None
