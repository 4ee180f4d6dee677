"""kopf handlers: every decorator of the operator lives here, and each one only adapts and delegates."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Callable

import kopf

from gpufleet import metrics
from gpufleet.controller import Controller
from gpufleet.crd import GROUP, PLURAL, VERSION
from gpufleet.kube import Kube, load_config
from gpufleet.leader import Election, Elector, FencedKube, KubeLeases
from gpufleet.model import MANAGED_BY, MANAGED_BY_LABEL

log = logging.getLogger(__name__)
STOP_WITHIN = 10.0  # seconds a stopping operator waits for the tick under way
# Seconds a standby's ticker sleeps between looks at its Elector (which also wakes it when it comes to lead).
STANDBY_LOOK = 1.0


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_) -> None:
    # kopf keeps no state on the GpuTaskQueues (only event handlers below): a standby replica writes nothing.
    settings.posting.level = logging.WARNING
    settings.peering.standalone = True  # one writer is chosen by our Lease (leader.py), not by kopf's peering
    settings.execution.max_workers = 16
    # Long-lived watches. A watch whose network goes silent (a NAT or load balancer that drops an idle flow, an
    # API server gone without a FIN or RST) is a half-open TCP connection: no error ever comes, the stream just
    # delivers nothing more, and the operator scales from a cache that no longer changes. So:
    # - server_timeout: the API server ends each watch after 5 minutes; kopf watches again from the last
    #   resourceVersion (nothing missed), so no stream outlives a change of path (new LB backend, API restart);
    # - client_timeout: our own ceiling on a watch request, a little above the server's, for a server or proxy
    #   that never ends the stream (kopf's inactivity_timeout, 70 s without even a bookmark, comes first);
    # - connect_timeout: a (re)connection to an unreachable address fails in 10 s and is retried, instead of
    #   waiting out the kernel's SYN retries (about 2 minutes) with no watch at all.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 10
    # kopf's other requests (lists, the CRD scan): a bound, and a fast failure to connect, for the same reason.
    settings.networking.request_timeout = 60
    settings.networking.connect_timeout = 10
    load_config()
    budget = os.environ.get("GPUFLEET_GPU_BUDGET")
    election: Election | None = memo.get("election")
    if election is None:
        memo.active, kube = (lambda: True), Kube()
        metrics.leader.set(1)
    else:
        memo.elector = Elector(
            KubeLeases(election.namespace, election.name, timeout=election.timing.renew_deadline / 2),
            election.name,
            election.identity,
            election.timing,
            on_lead=lambda: memo.controller.wake.set(),  # tick at once: the fleets waited for this
        )
        memo.active, kube = memo.elector.active, FencedKube(memo.elector.active)
        memo.elector.start()
    memo.controller = Controller(kube, gpu_budget=int(budget) if budget else None)
    metrics.serve(int(os.environ.get("GPUFLEET_METRICS_PORT", "8080")))
    memo.stopping = threading.Event()
    memo.ticker = asyncio.create_task(_tick_forever(memo.controller, memo.active, memo.stopping))


async def _tick_forever(
    controller: Controller, active: Callable[[], bool], stopping: threading.Event
) -> None:
    while not stopping.is_set():
        if not active():
            # A standby only watches (its caches stay warm); the tick writes, so it waits for the Lease. What it
            # carried from ticks of an earlier lead is stale: leading again, it continues from the status, as a
            # restarted operator does.
            controller.stand_by()
            await asyncio.to_thread(controller.wake.wait, STANDBY_LOOK)
            controller.wake.clear()
            continue
        try:
            wait = await asyncio.to_thread(controller.tick)
        except Exception:  # a tick that fails (API hiccup) must not stop the scaling of every other fleet
            log.exception("tick failed; retrying")
            wait = 1.0
        # Until the next fleet is due, or a queue changes (a new or edited GpuTaskQueue is acted on at once).
        if wait > 0:  # 0: fleets are still due (a tick takes at most FLEETS_PER_TICK)
            await asyncio.to_thread(controller.wake.wait, wait)
        controller.wake.clear()


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_) -> None:
    # The tick under way finishes its writes (cancelling the task would not stop its thread, only orphan it);
    # then, the Lease released, nothing more is written.
    memo.stopping.set()
    memo.controller.wake.set()
    try:
        await asyncio.wait_for(memo.ticker, timeout=STOP_WITHIN)
    except TimeoutError:
        log.warning("the last tick did not end within %s s; its writes are refused from now on", STOP_WITHIN)
    if "elector" in memo:
        # Released: a standby leads at its next look, not a lease later.
        await asyncio.to_thread(memo.elector.stop)
    memo.controller.close()


@kopf.on.event(GROUP, VERSION, PLURAL)
def queue_event(event: kopf.RawEvent, memo: kopf.Memo, **_) -> None:
    # Event handlers only, no on.create/update/resume: those keep kopf's progress in annotations of every queue,
    # a write each replica would make, the standby too. An event comes for every change (and for each queue
    # listed at start), so the controller always holds the latest spec and status: a standby that takes over
    # continues from the status its predecessor last wrote.
    # No finalizer: the Deployment goes with the GpuTaskQueue through its ownerReference, and the operator forgets
    # the queue when the watch says it is gone.
    if event.get("type") == "DELETED":
        meta = event["object"]["metadata"]
        memo.controller.forget(meta["namespace"], meta["name"])
    else:
        memo.controller.reconcile(dict(event["object"]))


@kopf.on.event("apps", "v1", "deployments", labels={MANAGED_BY_LABEL: MANAGED_BY})
def deployment_event(event: kopf.RawEvent, memo: kopf.Memo, **_) -> None:
    memo.controller.cache.deployment_event(event.get("type"), event["object"])


@kopf.on.event("", "v1", "pods", labels={MANAGED_BY_LABEL: MANAGED_BY})
def pod_event(event: kopf.RawEvent, memo: kopf.Memo, **_) -> None:
    memo.controller.cache.pod_event(event.get("type"), event["object"])


@kopf.on.probe(id="fleets")
def fleets(memo: kopf.Memo, **_) -> int:
    return memo.controller.fleets
