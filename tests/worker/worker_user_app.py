"""A user's own Celery app, configured with gpufleet_worker.app.configure, as the worker tests run it."""

import os
import time
from pathlib import Path

import numpy as np
from celery import Celery

from gpufleet_worker import gpu_task
from gpufleet_worker.app import configure

app = Celery("worker_user_app")
configure(app)


@gpu_task(name="user.scale")
def scale(xp, a, factor):
    return {"scaled": a * factor, "on_device": isinstance(a, xp.ndarray), "xp": xp.__name__}


@app.task(name="user.sleep")
def sleep(seconds, marker_dir):
    """Leaves one file per run (named by pid) so a test can see it started, and how often."""
    Path(marker_dir, f"run-{os.getpid()}-{time.monotonic_ns()}").write_text(str(os.getpid()))
    time.sleep(seconds)
    return "slept"


@app.task(name="user.count")
def count(results):
    """A chord's callback: how many results its header gave."""
    return len(results)


@app.task(name="user.object_result")
def object_result():
    return np.array([object(), None])


if os.environ.get("USER_APP_SLOW_TASK"):

    @app.task(name="user.slow", time_limit=float(os.environ["USER_APP_SLOW_TASK"]))
    def slow():
        return None


@app.task(name="user.total")
def total(prices, quantities):
    """A user's task as it was before gpufleet: plain Python values in and out."""
    return {"total": sum(p * q for p, q in zip(prices, quantities, strict=True)), "items": len(prices)}


@app.task(name="user.histogram")
def histogram(values, bins):
    """Returns NumPy values, which a JSON producer gets as lists and numbers."""
    counts, edges = np.histogram(values, bins=bins)
    return {"counts": counts, "edges": edges, "peak": counts.max()}
