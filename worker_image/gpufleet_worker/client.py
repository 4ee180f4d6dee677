"""For producers: send arrays to a fleet, and get arrays back, as raw bytes.

    from celery import Celery
    from gpufleet_worker.client import use_arrays

    app = Celery(broker="redis://...", backend="redis://...")
    use_arrays(app)
    app.send_task("gpufleet.matmul", args=(a, b), queue="gpu").get()   # a NumPy array

A producer needs none of this to use a fleet: with Celery's defaults (JSON) it sends lists and gets JSON back.
This opts one app into gpufleet's binary codec: its tasks go out in it, so the worker writes their results in
it too (arrays as dtype, shape and bytes; never pickle), and the app still reads JSON results. Installed by
`pip install 'gpufleet[client]'` (Celery, msgpack, NumPy); imports neither CuPy nor anything of the operator.
"""

from __future__ import annotations

from celery import Celery

from . import codec

__all__ = ["use_arrays"]


def use_arrays(app: Celery, max_payload_bytes: int = codec.DEFAULT_MAX_PAYLOAD_BYTES) -> Celery:
    """Send `app`'s tasks in gpufleet's binary codec and read results in it or in JSON; returns `app`.

    `max_payload_bytes` bounds what this producer sends and reads (the worker has its own limit,
    GPUFLEET_MAX_PAYLOAD_BYTES, 512 MiB by default)."""
    codec.register(max_payload_bytes)
    accept = ["json", codec.NAME]
    app.conf.update(
        task_serializer=codec.NAME,
        result_serializer=codec.NAME,
        accept_content=accept,
        result_accept_content=accept,
    )
    return app
