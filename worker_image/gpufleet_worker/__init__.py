"""gpufleet_worker: the Celery worker that runs inside every gpufleet worker pod.

`gpufleet_worker.gpu_task` is the decorator for GPU tasks; it is imported on first use so that the
liveness probe (`python -m gpufleet_worker.health`) stays free of Celery and NumPy.
"""

__all__ = ["gpu_task"]


def __getattr__(name):
    if name == "gpu_task":
        from .gputask import gpu_task

        return gpu_task
    raise AttributeError(f"module 'gpufleet_worker' has no attribute {name!r}")
