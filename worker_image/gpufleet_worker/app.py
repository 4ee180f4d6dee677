"""The Celery app of every gpufleet worker pod, and `configure(app)` for users' own apps.

`celery -A gpufleet_worker.app:app worker` runs the task library; a user's app that calls `configure(app)`
gets the same broker, codec, fleet-safe defaults, device layer, heartbeat and worker state.

Results go back in the format of the task's message (results.py): JSON for a plain Celery producer, the binary
codec for one that sent its task in it. The messages this app sends itself (retries, chord callbacks, fan-out,
or a producer that imports this app) are JSON unless their arguments hold arrays (`gpufleet-auto`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from celery import Celery

from . import codec, lifecycle, results, transport
from .settings import Settings, from_env


def configure(app: Celery, env: Mapping[str, str] | None = None) -> Settings:
    settings = from_env(os.environ if env is None else env)
    codec.register(settings.max_payload_bytes)
    accept = ["json", codec.NAME]
    app.conf.update(
        broker_url=settings.broker_url,
        # kombu's Redis transport, naming each delivery in this worker's state entry as it arrives.
        broker_transport=transport.for_url(settings.broker_url),
        broker_use_ssl=settings.broker_use_ssl,
        broker_transport_options=settings.transport_options,
        broker_connection_retry_on_startup=True,
        result_backend=results.backend_url(settings.result_backend),
        redis_backend_use_ssl=settings.broker_use_ssl
        if settings.result_backend == settings.broker_url
        else None,
        result_backend_transport_options=settings.result_transport_options,
        result_expires=settings.result_expires,
        task_serializer=codec.AUTO_NAME,
        # What this app reads results with: the codec's decoder reads JSON results too.
        result_serializer=codec.NAME,
        accept_content=accept,
        result_accept_content=accept,
        # A producer that imports this app sends to a queue the fleet consumes.
        task_default_queue=settings.queues[0],
        # At-least-once: the message stays in Redis until the task ends, and comes back if the worker dies.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # One task in hand per process: a busy GPU worker must not hold work another pod could run.
        worker_prefetch_multiplier=1,
        task_time_limit=settings.task_time_limit,
        # Library tasks are pure: finishing one whose connection blipped beats throwing the GPU work away.
        worker_cancel_long_running_tasks_on_connection_loss=False,
        worker_consumer="gpufleet_worker.consumer:Consumer",
    )
    if settings.pool:
        app.conf.worker_pool = settings.pool
    if settings.concurrency:
        app.conf.worker_concurrency = settings.concurrency
    if settings.soft_shutdown_timeout is not None:
        app.conf.worker_soft_shutdown_timeout = settings.soft_shutdown_timeout
    app.conf.include = list(
        dict.fromkeys([*app.conf.include, "gpufleet_worker.tasks", "gpufleet_worker.fanout"])
    )
    lifecycle.connect(app, settings)
    return settings


def __getattr__(name):
    # The default app is built on first use, so that importing `configure` for a user's own app neither
    # reads the environment twice nor makes a second app Celery's current one.
    if name == "app":
        global app
        app = Celery("gpufleet_worker")
        configure(app)
        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
