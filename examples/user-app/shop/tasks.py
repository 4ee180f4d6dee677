"""The shop's Celery app, as a gpufleet fleet runs it (spec.worker.celeryApp: shop.tasks:app).

`configure(app)` gives the app what every fleet worker needs, from the GPUFLEET_* environment the operator sets on
its pods: the fleet's broker and result backend, late acks and prefetch 1, the device layer, the heartbeat and the
state the operator reads to scale in safely. The tasks take and return plain JSON (lists and numbers), so any
Celery producer calls them with Celery's defaults, without gpufleet installed.
"""

from __future__ import annotations

from celery import Celery

from gpufleet_worker import gpu_task
from gpufleet_worker.app import configure

app = Celery("shop")
configure(app)


@gpu_task(name="shop.total")
def total(xp, prices: list[int], quantities: list[int]) -> int:
    """What a basket costs, in cents: the sum of price x quantity over its lines.

    `xp` is CuPy on a GPU worker and NumPy elsewhere; the same code runs on both.
    """
    if len(prices) != len(quantities):
        raise ValueError(
            f"prices has {len(prices)} lines and quantities {len(quantities)}: give one of each per line"
        )
    return int(xp.dot(xp.asarray(prices, dtype=xp.int64), xp.asarray(quantities, dtype=xp.int64)))


@app.task(name="shop.grand_total")
def grand_total(totals: list[int]) -> dict:
    """A chord's fan-in: how many baskets, and what they cost together."""
    return {"baskets": len(totals), "cents": sum(totals)}
