"""Probe time and round trips for 1, 100 and 1000 queues on one broker, and policy decisions per second.

    .venv/bin/python benchmarks/operator_probe.py

Starts its own redis-server on a free loopback port, fills the queues with real kombu-layout lists (every
priority list of every queue, 10 messages each, and some unacknowledged deliveries), then times the operator's
probe (`gpufleet.broker.RedisProbe.read`) against the naive way: one LLEN round trip per list. Prints a table.
"""

from __future__ import annotations

import json
import statistics
import time

import redis

from gpufleet.broker import Connection, Layout, RedisProbe, Request
from gpufleet.model import Depth, Observation
from gpufleet.policy import History, decide
from gpufleet.spec import ScalingSpec
from gpufleet_tools.devcluster.redisserver import RedisServer, WriteCounter

REPEATS = 30


def fill(client: redis.Redis, queues: list[str], layout: Layout) -> None:
    pipe = client.pipeline(transaction=False)
    for q in queues:
        for key in layout.list_keys(q):
            pipe.rpush(key, *[b'{"body": "x"}'] * 10)
    for i, q in enumerate(queues[:50]):
        pipe.hset(layout.unacked, f"tag-{i}", json.dumps([{"body": "x" * 200}, q, q]))
    pipe.execute()


def timed(fn, repeats: int = REPEATS) -> list[float]:
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def probe_rows(url: str) -> list[tuple]:
    rows = []
    layout = Layout()
    client = redis.Redis.from_url(url)
    for n in (1, 100, 1000):
        client.flushall()
        queues = [f"q{i}" for i in range(n)]
        fill(client, queues, layout)
        # One fleet per 10 queues, as a cluster with many GpuTaskQueues on one broker would have.
        requests = [Request(f"ns/f{i}", tuple(queues[i : i + 10])) for i in range(0, n, 10)] or [
            Request("ns/f", tuple(queues))
        ]
        probe = RedisProbe(Connection(url))
        counter = WriteCounter(probe._client)
        probe.read(requests)  # connect first
        before = counter.writes
        ours = timed(lambda probe=probe, requests=requests: probe.read(requests))
        trips = (counter.writes - before) / REPEATS
        keys = [k for q in queues for k in layout.list_keys(q)]
        naive = timed(lambda keys=keys: [client.llen(k) for k in keys], repeats=5 if n == 1000 else REPEATS)
        rows.append((n, statistics.median(ours) * 1e3, trips, statistics.median(naive) * 1e3, len(keys) + 1))
        probe.close()
    return rows


def policy_rate(measured: bool) -> float:
    """Decisions per second; `measured`: with a service time, start-up and arrival rate, so that the wait target
    sizes the fleet (its fluid model), else targetTasksPerReplica (nothing measured yet)."""
    spec = ScalingSpec(max_replicas=50, scale_down_stabilization_seconds=60)
    load = {"service_s": 12.0, "startup_s": 60.0, "arrival_rate": 0.8} if measured else {}
    history = History()
    n = 50_000
    current = 0
    t = time.perf_counter()
    for i in range(n):
        obs = Observation(float(i) * 0.5, Depth(i % 97, i % 13), current, ready=current, **load)
        d = decide(spec, obs, history)
        history, current = d.history, d.replicas
    return n / (time.perf_counter() - t)


def main() -> None:
    with RedisServer() as server:
        rows = probe_rows(server.url)
    print(
        "probe of one broker (median of 30; 4 priority lists per queue, 10 tasks each; redis-server on loopback)"
    )
    print(
        f"{'queues':>7} | {'gpufleet probe ms':>17} | {'round trips':>11} | {'LLEN per list ms':>16} | {'round trips':>11} | {'speed-up':>8}"
    )
    for n, ours, trips, naive, naive_trips in rows:
        print(
            f"{n:>7} | {ours:>17.2f} | {trips:>11.0f} | {naive:>16.2f} | {naive_trips:>11} | {naive / ours:>7.1f}x"
        )
    print("\npolicy decisions per second (one core, 60 s window history):")
    print(f"  by the wait target (measured): {policy_rate(True):,.0f}")
    print(f"  by targetTasksPerReplica:      {policy_rate(False):,.0f}")


if __name__ == "__main__":
    main()
