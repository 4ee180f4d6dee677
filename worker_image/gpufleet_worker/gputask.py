"""`gpu_task`: the decorator for GPU tasks, the library's and users' own.

The function receives the array module (`xp`: CuPy on a GPU worker, NumPy elsewhere) and its array
arguments already on the device; what it returns is brought back to host NumPy arrays for the codec.
"""

from __future__ import annotations

import functools

from celery import shared_task

from . import device
from .errors import GpuOutOfMemory


def gpu_task(
    fn=None, /, *, name: str | None = None, oom_retries: int = 0, oom_retry_delay: float = 5.0, **options
):
    """Make `fn(xp, *arrays, **kwargs)` a Celery task (of every app, like `shared_task`).

    A CUDA out-of-memory error frees the device's memory pools and fails the task with GpuOutOfMemory, or
    retries it up to `oom_retries` times (after `oom_retry_delay` seconds) when the pressure may pass.
    Other options go to Celery's task decorator.
    """

    def decorate(fn):
        task_name = name or f"{fn.__module__}.{fn.__qualname__}"

        # wraps() also gives Celery fn's signature; as the task is bound, its first parameter (xp) takes
        # the place of `self`, so callers are checked against the arguments they really pass.
        @functools.wraps(fn)
        def run(task, *args, **kwargs):
            dev = device.current()
            try:
                return dev.to_host(fn(dev.xp, *dev.to_device(args), **dev.to_device(kwargs)))
            except Exception as exc:
                if not dev.is_out_of_memory(exc):
                    raise
                dev.free_memory()
                error = GpuOutOfMemory(
                    f"{task_name} ran out of GPU memory on {dev.name} (pools freed): {exc}"
                )
                if task.request.retries < oom_retries:
                    raise task.retry(exc=error, countdown=oom_retry_delay, max_retries=oom_retries) from None
                raise error from None

        return shared_task(name=task_name, bind=True, **options)(run)

    return decorate(fn) if fn is not None else decorate
