"""`gpu_task`: the decorator for GPU tasks, the library's and users' own.

The function receives the array module (`xp`: CuPy on a GPU worker, NumPy elsewhere) and its array
arguments already on the device; what it returns is brought back to host NumPy arrays for the codec.
Parameters named in `arrays` also take nested lists (what a JSON producer sends), made into arrays first.
"""

from __future__ import annotations

import functools
import inspect

import numpy as np
from celery import shared_task

from . import device
from .errors import GpuOutOfMemory


def as_array(name: str, value):
    """`value` (an array, or nested lists of numbers) as an array; a clear error naming the argument if not."""
    if isinstance(value, np.ndarray) or type(value).__module__.startswith("cupy"):
        return value
    try:
        array = np.asarray(value)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"argument {name} is not an array of numbers: {exc}") from None
    if array.dtype.kind not in "biufc":
        raise ValueError(
            f"argument {name} must be an array of numbers or booleans (nested lists), "
            f"got {type(value).__name__} {_short(value)}"
        )
    return array


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _arrays_of(fn, arrays: tuple[str, ...]):
    """A function that converts the arguments named in `arrays`, passed by position or by name."""
    params = list(inspect.signature(fn).parameters)[1:]  # after xp
    unknown = set(arrays) - set(params)
    if unknown:
        raise TypeError(f"{fn.__qualname__} has no parameter {', '.join(sorted(unknown))}")
    positions = [(i, p) for i, p in enumerate(params) if p in arrays]

    def convert(args: tuple, kwargs: dict):
        args = list(args)
        for i, param in positions:
            if i < len(args):
                args[i] = as_array(param, args[i])
            elif param in kwargs:
                kwargs[param] = as_array(param, kwargs[param])
        return args, kwargs

    return convert


def gpu_task(
    fn=None,
    /,
    *,
    name: str | None = None,
    arrays: tuple[str, ...] = (),
    oom_retries: int = 0,
    oom_retry_delay: float = 5.0,
    **options,
):
    """Make `fn(xp, *arrays, **kwargs)` a Celery task (of every app, like `shared_task`).

    The parameters named in `arrays` take arrays or nested lists of numbers (a JSON producer's arrays).

    A CUDA out-of-memory error frees the device's memory pools and fails the task with GpuOutOfMemory, or
    retries it up to `oom_retries` times (after `oom_retry_delay` seconds) when the pressure may pass.
    Other options go to Celery's task decorator.
    """

    def decorate(fn):
        task_name = name or f"{fn.__module__}.{fn.__qualname__}"
        convert = _arrays_of(fn, tuple(arrays)) if arrays else None

        # wraps() also gives Celery fn's signature; as the task is bound, its first parameter (xp) takes
        # the place of `self`, so callers are checked against the arguments they really pass.
        @functools.wraps(fn)
        def run(task, *args, **kwargs):
            if convert is not None:
                args, kwargs = convert(args, kwargs)
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
