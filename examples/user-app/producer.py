"""A producer of the shop's tasks that knows nothing of gpufleet: plain Celery (`pip install celery[redis]`), with
Celery's defaults (JSON). It needs the broker's URL and the fleet's queue name, nothing else.

  export BROKER_URL=redis://:PASSWORD@HOST:6379/0
  python producer.py                 # one basket, its total
  python producer.py --burst 50      # 50 baskets at once, every total
  python producer.py --fan-out 200   # 200 baskets as a group, then as a chord that adds them up
  python producer.py --burst 50 --json   # the same, as one JSON document

The results come back through the broker's Redis (the fleet's default result backend); RESULT_BACKEND names
another one.
"""

from __future__ import annotations

import argparse
import json
import os
import random

from celery import Celery, chord, group

# The fleet's queue: spec.queues of examples/user-app/gputaskqueue.yaml.
QUEUE = os.environ.get("SHOP_QUEUE", "shop")


def make_app(broker_url: str, backend_url: str | None = None) -> Celery:
    app = Celery("shop-producer", broker=broker_url, backend=backend_url or broker_url)
    # Every shop task goes to the fleet's queue; other tasks of this app would stay on Celery's default, "celery".
    app.conf.task_routes = {"shop.*": {"queue": QUEUE}}
    return app


def random_basket(rng: random.Random) -> list[list[int]]:
    """[prices in cents, quantities], one of each per line."""
    lines = rng.randint(1, 6)
    return [[rng.randint(99, 9999) for _ in range(lines)], [rng.randint(1, 5) for _ in range(lines)]]


def burst(app: Celery, baskets: list, timeout: float) -> list[int]:
    """Send every basket first, then read every total: the fleet sees the whole burst waiting at once."""
    pending = [app.send_task("shop.total", args=basket) for basket in baskets]
    return [result.get(timeout=timeout) for result in pending]


def fan_out(app: Celery, baskets: list, timeout: float) -> tuple[list[int], list[int], dict]:
    """A group (fan-out, the totals read here), then a chord (fan-out, and the fan-in on a worker)."""
    totals = group(app.signature("shop.total", args=b) for b in baskets).apply_async().get(timeout=timeout)
    header = [app.signature("shop.total", args=b) for b in baskets]
    joined = chord(header)(app.signature("shop.grand_total"))
    summary = joined.get(timeout=timeout)
    # The chord's own parts too: Celery keeps waiting on a result nobody read, up to the producer's exit.
    parts = joined.parent.get(timeout=timeout)
    return totals, parts, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--burst", type=int, default=1, metavar="N", help="send N baskets at once")
    parser.add_argument("--fan-out", type=int, metavar="N", help="N baskets as a group, then as a chord")
    parser.add_argument("--seed", type=int, default=None, help="the baskets' random seed")
    parser.add_argument("--timeout", type=float, default=600, help="seconds to wait for each result")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args()

    app = make_app(os.environ["BROKER_URL"], os.environ.get("RESULT_BACKEND"))
    rng = random.Random(args.seed)
    baskets = [random_basket(rng) for _ in range(args.fan_out or args.burst)]
    out: dict = {"baskets": baskets}
    if args.fan_out:
        out["totals"], out["chord_totals"], out["summary"] = fan_out(app, baskets, args.timeout)
    else:
        out["totals"] = burst(app, baskets, args.timeout)
    if args.json:
        print(json.dumps(out))
        return
    for (prices, quantities), cents in zip(baskets, out["totals"], strict=True):
        print(f"shop.total({prices}, {quantities}) = {cents} cents")
    if "summary" in out:
        print(f"shop.grand_total: {out['summary']['baskets']} baskets, {out['summary']['cents']} cents")


if __name__ == "__main__":
    main()
