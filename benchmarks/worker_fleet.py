"""A gpufleet worker through a real Redis: against plain Celery, per-task overhead, and the subprocess+pickle recipe.

    python benchmarks/worker_fleet.py [--quick] [--rounds N] [--no-recipe]

Starts its own redis-server and one solo worker at a time (what one pod runs), on this machine. The empty
task goes through gpufleet's worker (a user's app that called configure(app), late acks, prefetch 1, its state
published as in a fleet) and through plain Celery's (the same Celery settings, JSON, nothing of gpufleet; and
Celery's defaults), from the same plain Celery producer; the three run side by side on queues of their own and
take turns for N rounds, and each figure is the median of the rounds.
Figures are wall-clock on a shared machine: compare the columns of one run, not runs with each other.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import redis
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


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process so far (Linux /proc): what a worker spends, whatever the load."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def redis_commands(client: redis.Redis) -> int:
    return client.info("stats")["total_commands_processed"]


def pct(samples: list[float], q: float) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[q - 1] * 1000


def against_plain_celery(url: str, tmp: Path, env: dict, rounds: int, n, before: bool) -> None:
    """The three workers run side by side, each on its own queue, and take turns: a round is p50 of one-at-a-time
    round trips and a burst's tasks/s on each. An idle worker waits in BRPOP and costs nothing meanwhile."""
    plain_env = {**env, "BENCH_BROKER": url}
    workers = {
        "gpufleet": Worker(env, tmp / "gpufleet.log", app="worker_bench_app:app"),
        "plain Celery": Worker({**plain_env, "GPUFLEET_QUEUES": "plain", "GPUFLEET_POD_NAME": "plain-0",
                                "BENCH_FLEET_SAFE": "1"}, tmp / "plain.log", app="worker_plain_app:app"),
        "plain Celery, its defaults": Worker({**plain_env, "GPUFLEET_QUEUES": "plain-defaults",
                                              "GPUFLEET_POD_NAME": "plain-defaults-0"},
                                             tmp / "plain-defaults.log", app="worker_plain_app:app"),
    }  # fmt: skip
    if before:
        workers["gpufleet before"] = Worker({**env, "GPUFLEET_QUEUES": "before", "GPUFLEET_POD_NAME": "before-0",
                                             "BENCH_STATE_THREAD": "1"}, tmp / "before.log",
                                            app="worker_bench_app:app")  # fmt: skip
    producer = Celery("bench-plain-producer", broker=url, backend=url)
    sends = {
        name: (lambda queue=worker.env["GPUFLEET_QUEUES"]: producer.send_task("bench.noop", queue=queue))
        for name, worker in workers.items()
    }
    figures = {name: ([], []) for name in workers}
    costs = {name: ([], []) for name in workers}  # worker CPU seconds and Redis commands per task of a burst
    client = redis.Redis.from_url(url)
    with contextlib.ExitStack() as stack:
        for worker in workers.values():
            stack.enter_context(worker)
        for send in sends.values():
            latencies(send, 20)  # warm-up: connections, imports
        for i in range(rounds):
            names = list(workers)
            for name in names[i % len(names) :] + names[: i % len(names)]:
                p50 = pct(latencies(sends[name], n(300)), 50)
                cpu, commands = cpu_seconds(workers[name].proc.pid), redis_commands(client)
                rate = throughput(sends[name], n(1000))
                costs[name][0].append((cpu_seconds(workers[name].proc.pid) - cpu) / n(1000))
                costs[name][1].append((redis_commands(client) - commands) / n(1000))
                figures[name][0].append(p50)
                figures[name][1].append(rate)
                print(f"  round {i + 1}: {name}: p50 {p50:.2f} ms, {rate:.0f} tasks/s, "
                      f"{costs[name][0][-1] * 1e6:.0f} us CPU per task", flush=True)  # fmt: skip
    median = {name: (statistics.median(p), statistics.median(r)) for name, (p, r) in figures.items()}
    ours_p50, ours_rate = median["gpufleet"]
    print(f"empty task, one solo worker each, {n(1000)} tasks per burst, {n(300)} round trips one at a time, "
          f"median of {rounds} rounds taken in turn")  # fmt: skip
    print(f"{'worker':<50} {'p50 (ms)':>9} {'tasks/s':>8} {'gpufleet p50':>13} {'gpufleet burst':>15} "
          f"{'CPU/task (us)':>14} {'Redis cmds/task':>16}")  # fmt: skip
    for name, label in (
        ("gpufleet", "gpufleet (late acks, prefetch 1, state published)"),
        ("plain Celery", "plain Celery (late acks, prefetch 1)"),
        ("plain Celery, its defaults", "plain Celery (its defaults: early ack, prefetch 4)"),
        ("gpufleet before", "gpufleet before 2026-12-06 (state thread per task)"),
    ):
        if name not in workers:
            continue
        p50, rate = median[name]
        cpu, commands = (statistics.median(c) for c in costs[name])
        print(f"{label:<50} {p50:9.2f} {rate:8.0f} {ours_p50 / p50:12.2f}x {ours_rate / rate:14.2f}x "
              f"{cpu * 1e6:14.0f} {commands:16.1f}")  # fmt: skip
    print("gpufleet p50: gpufleet's p50 over this row's (lower is better); gpufleet burst: gpufleet's tasks/s "
          "over this row's (higher is better); CPU/task: the worker process's CPU time per task of a burst; Redis "
          "cmds/task: commands Redis ran per task of a burst, the producer's included")  # fmt: skip
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer tasks")
    parser.add_argument("--rounds", type=int, default=9, help="turns of each worker against plain Celery")
    parser.add_argument("--no-recipe", action="store_true", help="only the comparison with plain Celery")
    parser.add_argument("--before", action="store_true",
                        help="also the worker as it named deliveries before 2026-12-06 (a state-thread write per task)")  # fmt: skip
    args = parser.parse_args()
    scale = 0.2 if args.quick else 1.0
    n = lambda count: max(10, int(count * scale))  # noqa: E731

    a = np.random.default_rng(0).standard_normal((64, 64))
    with RedisServer() as redis_server, tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        env = worker_env(redis_server.url, tmp, GPUFLEET_STATE_INTERVAL="5",
                         PYTHONPATH=os.pathsep.join([str(ROOT / "benchmarks"), str(ROOT / "worker_image")]))  # fmt: skip
        against_plain_celery(redis_server.url, tmp, env, args.rounds, n, args.before)
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
