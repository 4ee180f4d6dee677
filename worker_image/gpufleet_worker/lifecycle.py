"""What the worker does at start-up, in each pool process, and at shutdown (Celery signals).

Order in a worker: worker_init (main process: checks, before any pool process exists) ->
worker_process_init (each pool process, or the main one for solo: device, first heartbeat) ->
worker_ready (main: state keeper) -> ... -> worker_shutdown (main, after running tasks finished).
"""

from __future__ import annotations

import logging

from billiard.process import current_process
from celery import Celery, signals

from . import brokerclient, device, heartbeat, results
from .errors import DeviceError, SettingsError
from .settings import Settings, check_time_limit
from .state import Keeper, delivery_tag

logger = logging.getLogger(__name__)

_settings: Settings | None = None
_app: Celery | None = None
_keeper: Keeper | None = None


def connect(app: Celery, settings: Settings) -> None:
    """Attach the handlers for this app; a worker process runs one app, so the last configured one wins."""
    global _settings, _app
    _settings, _app = settings, app
    signals.worker_init.connect(_on_worker_init, dispatch_uid="gpufleet.worker_init", weak=False)
    signals.worker_process_init.connect(_on_process_init, dispatch_uid="gpufleet.process_init", weak=False)
    signals.worker_ready.connect(_on_worker_ready, dispatch_uid="gpufleet.worker_ready", weak=False)
    signals.worker_shutdown.connect(_on_worker_shutdown, dispatch_uid="gpufleet.worker_shutdown", weak=False)
    signals.task_received.connect(_on_task_received, dispatch_uid="gpufleet.task_received", weak=False)


def _refuse(message: str) -> None:
    # Celery logs and swallows exceptions raised by signal handlers; SystemExit is what stops a worker.
    logger.critical("gpufleet worker cannot start: %s", message)
    raise SystemExit(1)


def check_task_time_limits(app: Celery, settings: Settings) -> None:
    """A task may carry its own time limit; it must stay below the visibility timeout too."""
    for name, task in sorted(app.tasks.items()):
        if task.time_limit is not None:
            check_time_limit(settings.visibility_timeout, task.time_limit, f"the time_limit of task {name}")


def _on_worker_init(sender=None, **_):
    heartbeat.clear(_settings.heartbeat_file)
    try:
        check_task_time_limits(_app, _settings)
    except SettingsError as exc:
        _refuse(str(exc))
    if _settings.require_gpu:
        count, why = device.probe_gpu_count()
        if count == 0:
            _refuse(f"GPUFLEET_REQUIRE_GPU=1 but {why}")


def _on_process_init(**_):
    index = getattr(current_process(), "index", 0) or 0
    try:
        device.init(_settings, index)
    except DeviceError as exc:
        _refuse(str(exc))
    heartbeat.beat(_settings.heartbeat_file)


def _on_worker_ready(sender=None, **_):
    global _keeper
    hostname = sender.hostname if sender is not None else ""
    client = brokerclient.client(_settings) if _settings.fleet else None
    if client is None:
        logger.info("gpufleet: GPUFLEET_FLEET is unset, so this worker publishes no state")
    _keeper = Keeper(_settings, hostname, client)
    _keeper.start()


def _on_task_received(request=None, **_):
    results.mark(request)
    tag = delivery_tag(request)
    if _keeper is not None and tag is not None:
        _keeper.received(tag)


def _on_worker_shutdown(**_):
    global _keeper
    if _keeper is not None:
        _keeper.stop()
        _keeper = None
