"""The usual recipe for GPU work in Celery, for comparison only: pickle, and a fresh process per task.

Each task pickles its arguments to a child interpreter that imports the array library (on a GPU: CuPy, and
creates a CUDA context), computes, and pickles the result back. gpufleet's worker does neither.
"""

import os
import pickle
import subprocess
import sys

from celery import Celery

BROKER = os.environ["BENCH_BROKER"]
XP = os.environ.get("BENCH_XP", "numpy")

app = Celery("worker_recipe", broker=BROKER, backend=BROKER)
app.conf.update(
    task_serializer="pickle",
    result_serializer="pickle",
    accept_content=["pickle"],
    result_accept_content=["pickle"],
    task_default_queue="recipe",
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
)

CHILD = f"""
import pickle, sys
import {XP} as xp
a, b = pickle.load(sys.stdin.buffer)
out = xp.matmul(xp.asarray(a), xp.asarray(b))
pickle.dump(out.get() if hasattr(out, "get") else out, sys.stdout.buffer)
"""


@app.task(name="recipe.matmul")
def matmul(a, b):
    done = subprocess.run(
        [sys.executable, "-c", CHILD], input=pickle.dumps((a, b)), capture_output=True, check=True
    )
    return pickle.loads(done.stdout)
