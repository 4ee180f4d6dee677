"""Fan-out/fan-in: split a large array into chunks, run one task per chunk across the fleet, join the parts.

`map_chunks` waits and joins in the caller; `chunk_chord` joins on a worker (gpufleet.concatenate) and lets
the caller chain more work after it.
"""

from __future__ import annotations

import numpy as np
from celery import chord, group, shared_task, signature


def split(array: np.ndarray, chunks: int, axis: int = 0) -> list[np.ndarray]:
    if chunks < 1:
        raise ValueError(f"chunks must be at least 1, got {chunks}")
    # No empty chunks: an array shorter than `chunks` gets one chunk per element.
    return np.array_split(array, min(chunks, max(array.shape[axis], 1)), axis=axis)


def join(parts: list, axis: int = 0):
    """Concatenate per-chunk results: arrays along `axis`, dicts of arrays key by key."""
    if not parts:
        raise ValueError("no parts to join")
    if isinstance(parts[0], dict):
        return {key: join([part[key] for part in parts], axis) for key in parts[0]}
    return np.concatenate([np.asarray(part) for part in parts], axis=axis)


@shared_task(name="gpufleet.concatenate")
def concatenate(parts, axis=0):
    """The fan-in of chunk_chord. Plain host work: moving the parts to a GPU would only cost time."""
    return join(parts, axis)


def _signatures(task, array, args, kwargs, chunks, axis):
    # `task` may be a task, a task name or a signature; a chunk goes before a signature's own arguments,
    # so map_chunks(matmul.s(b), a, chunks=4) computes a @ b by row blocks.
    base = signature(task)
    return [base.clone(args=(part, *args), kwargs=kwargs) for part in split(array, chunks, axis)]


def map_chunks(
    task, array: np.ndarray, *args, chunks: int, axis: int = 0, timeout: float | None = None, **kwargs
):
    """Run `task(chunk, *args, **kwargs)` on every chunk as one Celery group; return the joined results.

    `task` is a task, a task name or a signature (whose own arguments follow the chunk).
    """
    result = group(_signatures(task, array, args, kwargs, chunks, axis)).apply_async()
    try:
        return join(result.get(timeout=timeout), axis)
    finally:
        result.forget()


def chunk_chord(task, array: np.ndarray, *args, chunks: int, axis: int = 0, **kwargs):
    """Start `task` on every chunk and gpufleet.concatenate on their results; returns the chord's AsyncResult."""
    return chord(_signatures(task, array, args, kwargs, chunks, axis))(concatenate.s(axis=axis))
