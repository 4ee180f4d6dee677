"""A gpufleet worker through a real Redis: against plain Celery, per-task overhead, and the subprocess+pickle recipe.

    python benchmarks/worker_fleet.py [--quick] [--rounds N] [--no-recipe]

Starts its own redis-server and one solo worker at a time (what one pod runs), on this machine. The empty
task goes through gpufleet's worker (a user's app that called configure(app), late acks, prefetch 1, its state
published as in a fleet) and through plain Celery's (the same Celery settings, JSON, nothing of gpufleet),
from the same plain Celery producer; the workers take turns for N rounds and each figure is the median.
Figures are wall-clock on a shared machine: compare the columns of one run, not runs with each other.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from celery import Celery

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "worker")]

from workerproc import Worker, worker_env  # noqa: E402

from gpufleet_worker.app import configure  # noqa: E402
from redis_server import RedisServer  # noqa: E402

TIMEOUT = 300


def latencies(send, count: int) -> list[float]:
    """Seconds from send to result, one task at a time."""
    out = []
    for _ in range(count):
        start = time.perf_counter()
        send().get(timeout=TIMEOUT)
        out.append(time.perf_counter() - start)
    return out


def throughput(send, count: int) -> float:
    """Tasks per second with `count` tasks queued at once."""
    start = time.perf_counter()
    results = [send() for _ in range(count)]
    for result in results:
        result.get(timeout=TIMEOUT)
    return count / (time.perf_counter() - start)


def pct(samples: list[float], q: float) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[q - 1] * 1000


def empty_tasks(worker: Worker, url: str, queue: str, latency_count: int, burst: int) -> tuple[float, float]:
    """p50 round trip (ms) one at a time, and tasks/s of a burst, from a plain Celery producer."""
    producer = Celery("bench-plain-producer", broker=url, backend=url)
    noop = lambda: producer.send_task("bench.noop", queue=queue)  # noqa: E731
    with worker:
        latencies(noop, 20)  # warm-up: connections, imports
        p50 = pct(latencies(noop, latency_count), 50)
        rate = throughput(noop, burst)
    return p50, rate


def against_plain_celery(url: str, tmp: Path, env: dict, rounds: int, n) -> None:
    plain_env = {**env, "BENCH_BROKER": url, "GPUFLEET_QUEUES": "plain"}
    workers = {
        "gpufleet": lambda: Worker(env, tmp / "gpufleet.log", app="worker_bench_app:app"),
        "plain Celery": lambda: Worker(
            {**plain_env, "BENCH_FLEET_SAFE": "1"}, tmp / "plain.log", app="worker_plain_app:app"
        ),  # fmt: skip
        "plain Celery, its defaults": lambda: Worker(
            plain_env, tmp / "plain-defaults.log", app="worker_plain_app:app"
        ),  # fmt: skip
    }
    queues = {
        "gpufleet": env["GPUFLEET_QUEUES"],
        "plain Celery": "plain",
        "plain Celery, its defaults": "plain",
    }
    figures = {name: ([], []) for name in workers}
    for _ in range(rounds):
        for name, make in workers.items():
            p50, rate = empty_tasks(make(), url, queues[name], n(300), n(1000))
            figures[name][0].append(p50)
            figures[name][1].append(rate)
            print(
                f"  round {len(figures[name][0])}: {name}: p50 {p50:.2f} ms, {rate:.0f} tasks/s", flush=True
            )
    median = {name: (statistics.median(p), statistics.median(r)) for name, (p, r) in figures.items()}
    ours_p50, ours_rate = median["gpufleet"]
    print(f"empty task, one solo worker each, {n(1000)} tasks per burst, {n(300)} round trips one at a time, "
          f"median of {rounds} rounds taken in turn")  # fmt: skip
    print(f"{'worker':<50} {'p50 (ms)':>9} {'tasks/s':>8} {'gpufleet p50':>13} {'gpufleet burst':>15}")
    for name, label in (
        ("gpufleet", "gpufleet (late acks, prefetch 1, state published)"),
        ("plain Celery", "plain Celery (late acks, prefetch 1)"),
        ("plain Celery, its defaults", "plain Celery (its defaults: early ack, prefetch 4)"),
    ):
        p50, rate = median[name]
        print(f"{label:<50} {p50:9.2f} {rate:8.0f} {ours_p50 / p50:12.2f}x {ours_rate / rate:14.2f}x")
    print("gpufleet p50: gpufleet's p50 over this row's (lower is better); gpufleet burst: gpufleet's tasks/s "
          "over this row's (higher is better)")  # fmt: skip
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer tasks")
    parser.add_argument("--rounds", type=int, default=3, help="turns of each worker against plain Celery")
    parser.add_argument("--no-recipe", action="store_true", help="only the comparison with plain Celery")
    args = parser.parse_args()
    scale = 0.2 if args.quick else 1.0
    n = lambda count: max(10, int(count * scale))  # noqa: E731

    a = np.random.default_rng(0).standard_normal((64, 64))
    with RedisServer() as redis_server, tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        env = worker_env(redis_server.url, tmp, GPUFLEET_STATE_INTERVAL="5",
                         PYTHONPATH=os.pathsep.join([str(ROOT / "benchmarks"), str(ROOT / "worker_image")]))  # fmt: skip
        against_plain_celery(redis_server.url, tmp, env, args.rounds, n)
        if args.no_recipe:
            return
        producer = Celery("bench-producer")
        configure(producer, env)
        with Worker(env, tmp / "gpufleet.log", app="worker_bench_app:app"):
            noop = lambda: producer.send_task("bench.noop")  # noqa: E731
            small = lambda: producer.send_task("gpufleet.matmul", args=(a, a))  # noqa: E731
            latencies(noop, 20)  # warm-up: connections, imports
            empty = latencies(noop, n(500))
            empty_rate = throughput(noop, n(2000))
            ours = latencies(small, n(200))
            ours_rate = throughput(small, n(500))

        # C_FORCE_ROOT: Celery refuses pickle as root, and benchmark machines often run as root.
        recipe_env = {
            **env,
            "BENCH_BROKER": redis_server.url,
            "GPUFLEET_QUEUES": "recipe",
            "C_FORCE_ROOT": "1",
        }
        recipe = Celery("recipe-producer", broker=redis_server.url, backend=redis_server.url)
        recipe.conf.update(task_serializer="pickle", result_serializer="pickle", accept_content=["pickle"],
                           result_accept_content=["pickle"], task_default_queue="recipe")  # fmt: skip
        with Worker(recipe_env, tmp / "recipe.log", app="worker_recipe_app:app"):
            small_recipe = lambda: recipe.send_task("recipe.matmul", args=(a, a))  # noqa: E731
            latencies(small_recipe, 3)
            theirs = latencies(small_recipe, n(60))
            theirs_rate = throughput(small_recipe, n(60))

    print(f"one solo worker, one producer, redis-server on loopback; {os.cpu_count()} CPU cores shared")
    print(f"empty task round trip:   p50 {pct(empty, 50):7.2f} ms   p95 {pct(empty, 95):7.2f} ms   "
          f"({len(empty)} tasks one at a time)")  # fmt: skip
    print(f"empty tasks per second:  {empty_rate:7.0f} /s per worker   ({n(2000)} queued at once)")
    print()
    rows = [
        ("64x64 matmul p50 (ms)", pct(ours, 50), pct(theirs, 50)),
        ("64x64 matmul p95 (ms)", pct(ours, 95), pct(theirs, 95)),
        ("64x64 matmuls per second", ours_rate, theirs_rate),
    ]
    print(f"{'same small task':<28} {'gpufleet':>10} {'subprocess+pickle':>18} {'ratio':>8}")
    for name, mine, other in rows:
        ratio = other / mine if "ms" in name else mine / other
        print(f"{name:<28} {mine:10.2f} {other:18.2f} {ratio:7.1f}x")
    print("ratio: how many times better gpufleet is (lower latency, higher rate)")


if __name__ == "__main__":
    main()
