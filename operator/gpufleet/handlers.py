"""kopf handlers: every decorator of the operator lives here, and each one only adapts and delegates."""

from __future__ import annotations

import asyncio
import logging
import os

import kopf

from gpufleet import metrics
from gpufleet.controller import Controller
from gpufleet.crd import GROUP, PLURAL, VERSION
from gpufleet.kube import Kube, load_config
from gpufleet.resources import MANAGED_BY

log = logging.getLogger(__name__)


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_) -> None:
    # Our status has a strict schema (kopf's own status fields would be pruned): keep kopf's state in annotations.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=GROUP)
    settings.posting.level = logging.WARNING
    settings.peering.standalone = True
    settings.execution.max_workers = 16
    load_config()
    budget = os.environ.get("GPUFLEET_GPU_BUDGET")
    memo.controller = Controller(Kube(), gpu_budget=int(budget) if budget else None)
    metrics.serve(int(os.environ.get("GPUFLEET_METRICS_PORT", "8080")))
    memo.ticker = asyncio.create_task(_tick_forever(memo.controller))


async def _tick_forever(controller: Controller) -> None:
    while True:
        try:
            wait = await asyncio.to_thread(controller.tick)
        except Exception:  # a tick that fails (API hiccup) must not stop the scaling of every other fleet
            log.exception("tick failed; retrying")
            wait = 1.0
        # Until the next fleet is due, or a queue changes (a new or edited GpuTaskQueue is acted on at once).
        await asyncio.to_thread(controller.wake.wait, wait)
        controller.wake.clear()


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_) -> None:
    memo.ticker.cancel()
    memo.controller.close()


@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL)
@kopf.on.resume(GROUP, VERSION, PLURAL)
def reconcile(body: kopf.Body, memo: kopf.Memo, **_) -> None:
    memo.controller.reconcile(dict(body))


@kopf.on.event(GROUP, VERSION, PLURAL)
def queue_event(event: kopf.RawEvent, memo: kopf.Memo, **_) -> None:
    # No finalizer: the Deployment goes with the GpuTaskQueue through its ownerReference, and the operator forgets
    # the queue when the watch says it is gone (an optional on.delete handler would run only while some finalizer
    # held the deletion, so a queue deleted outright would be written again by the next tick).
    if event.get("type") == "DELETED":
        meta = event["object"]["metadata"]
        memo.controller.forget(meta["namespace"], meta["name"])


@kopf.on.event("apps", "v1", "deployments", labels={"app.kubernetes.io/managed-by": MANAGED_BY})
def deployment_event(event: kopf.RawEvent, memo: kopf.Memo, **_) -> None:
    memo.controller.cache.deployment_event(event.get("type"), event["object"])


@kopf.on.event("", "v1", "pods", labels={"app.kubernetes.io/managed-by": MANAGED_BY})
def pod_event(event: kopf.RawEvent, memo: kopf.Memo, **_) -> None:
    memo.controller.cache.pod_event(event.get("type"), event["object"])


@kopf.on.probe(id="fleets")
def fleets(memo: kopf.Memo, **_) -> int:
    return memo.controller.fleets
