"""How long a dead worker's task waits before it runs again, and what protecting busy workers costs in API writes.

    python benchmarks/no_lost_time.py [--rounds N] [--stream-seconds S]

1. Workers only (a redis-server and two solo workers, default settings): SIGKILL the worker holding a task; the
   other one finds its entry expired and puts the task back. Then the same pod's next container (an OOM kill).
2. With the operator, on the local control plane (process pods): SIGKILL a busy worker and force-delete its pod;
   the operator puts the task back the tick after it sees the pod go. Then a steady stream of short tasks through
   two workers, and the operator's API writes per minute meanwhile (gpufleet_api_writes_total).
Without gpufleet, Celery on Redis brings such a task back after the visibility timeout (7200 s by default here)
plus kombu's sweep. Figures are wall-clock on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import redis
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "worker"), str(ROOT / "tests" / "e2e")]

from workerproc import Worker, worker_env  # noqa: E402

from fleet import Operator, Tasks, queue_manifest  # noqa: E402
from gpufleet_tools.devcluster.binaries import bin_dir  # noqa: E402
from gpufleet_tools.devcluster.cluster import DevCluster  # noqa: E402
from gpufleet_tools.devcluster.redisserver import RedisServer, free_port  # noqa: E402
from support import Kubectl, wait_for  # noqa: E402

CRD = ROOT / "charts" / "gpufleet" / "files" / "gputaskqueues.crd.yaml"
VISIBILITY_TIMEOUT = 7200


def summary(delays: list[float]) -> str:
    return f"p50 {statistics.median(delays):6.2f} s   max {max(delays):6.2f} s   (n={len(delays)})"


def started_again(tasks: Tasks, marker: str, not_on: str, timeout: float = 120) -> float:
    runs = wait_for(f"{marker} again", lambda: [r for r in tasks.runs() if r["marker"] == marker and r["pod"] != not_on],
                    timeout=timeout, every=0.05)  # fmt: skip
    return runs[0]["start"]


def workers_only(rounds: int) -> tuple[list[float], list[float]]:
    others, restarts = [], []
    with RedisServer() as server, tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)

        def env(pod: str) -> dict[str, str]:
            return worker_env(server.url, base, GPUFLEET_POD_NAME=pod, GPUFLEET_STATE_INTERVAL="5",
                              GPUFLEET_QUEUES="gpu", PYTHONPATH=f"{ROOT / 'tests' / 'e2e'}")  # fmt: skip

        tasks = Tasks(server.url, "gpu")
        for i in range(rounds):
            for second_pod in (
                f"other-{i}",
                f"held-{i}",
            ):  # another worker; then the same pod's next container
                pod = f"held-{i}"
                first = Worker(env(pod), base / f"{pod}.log", app="e2e_app:app").start()
                marker = f"{second_pod}-task"
                tasks.send(1, seconds=3, prefix=marker)
                marker = tasks.sent[-1]
                wait_for(
                    "the task started",
                    lambda m=marker: any(r["marker"] == m for r in tasks.runs()),
                    every=0.02,
                )
                os.killpg(first.proc.pid, signal.SIGKILL)
                killed = time.time()
                first.wait_exit()
                with Worker(env(second_pod), base / f"{second_pod}.log", app="e2e_app:app"):
                    runs = wait_for(
                        "again",
                        lambda m=marker: [r for r in tasks.runs() if r["marker"] == m][1:],
                        every=0.05,
                    )
                    (restarts if second_pod == pod else others).append(runs[0]["start"] - killed)
                    wait_for("done", tasks.all_done)
        tasks.close()
    return others, restarts


def writes_by_kind(port: int) -> dict[str, float]:
    """gpufleet_api_writes_total of the operator, by kind."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("gpufleet_api_writes_total{"):
            labels, value = line.rsplit(" ", 1)
            out[labels.split('kind="', 1)[1].split('"', 1)[0]] = float(value)
    return out


def with_operator(rounds: int, stream_seconds: float) -> tuple[list[float], dict[str, float]]:
    cluster = DevCluster(bin_dir(build=True), gpu_nodes=1, gpus_per_node=2)
    delays: list[float] = []
    with RedisServer() as server, tempfile.TemporaryDirectory() as tmp:
        cluster.start()
        try:
            env = cluster.env()
            Kubectl("kubectl", env).run("apply", "-f", str(CRD))
            time.sleep(2)
            kubectl = Kubectl("kubectl", env, "default")
            port = free_port()
            op = Operator({**env}, "default", Path(tmp))
            op.env["GPUFLEET_METRICS_PORT"] = str(port)
            op.start()
            manifest = yaml.safe_load(
                queue_manifest("bench", server.url, ["gpu"], scaling={"minReplicas": 2, "maxReplicas": 2})
            )
            kubectl.apply(yaml.safe_dump(manifest))
            fleet_key = "gpufleet:workers:default/bench"
            client = redis.Redis.from_url(server.url)
            tasks = Tasks(server.url, "gpu")
            for i in range(rounds):
                wait_for("two workers", lambda: client.hlen(fleet_key) == 2, timeout=180)
                tasks.send(1, seconds=5, prefix=f"kill{i}-")
                marker = tasks.sent[-1]
                run = wait_for(
                    "started",
                    lambda m=marker: next((r for r in tasks.runs() if r["marker"] == m), None),
                    every=0.02,
                )
                wait_for(
                    "named",
                    lambda p=run["pod"]: json.loads(client.hget(fleet_key, p) or "{}").get("tags"),
                    every=0.02,
                )
                os.killpg(cluster.runner.pids()[f"default/{run['pod']}"], signal.SIGKILL)
                killed = time.time()
                kubectl.run("delete", "pod", run["pod"], "--grace-period=0", "--force", "--wait=false")
                delays.append(started_again(tasks, marker, run["pod"]) - killed)
                wait_for("done", tasks.all_done, timeout=120)
            wait_for("two workers", lambda: client.hlen(fleet_key) == 2, timeout=180)
            time.sleep(12)  # past the release delay of the last busy worker: start from a quiet fleet
            before = writes_by_kind(port)
            start, sent = time.monotonic(), 0
            while time.monotonic() - start < stream_seconds:  # two workers, ~80 % busy with 0.2 s tasks
                tasks.send(8, seconds=0.2, prefix="stream-")
                sent += 8
                time.sleep(1.0)
            minutes = (time.monotonic() - start) / 60
            after = writes_by_kind(port)
            writes = {
                f"API writes per minute: {k}": (n - before.get(k, 0)) / minutes for k, n in after.items()
            }
            wait_for("the stream done", tasks.all_done, timeout=180)
            op.stop()
            tasks.close()
            return delays, {"tasks per minute": sent / minutes, **writes}
        finally:
            cluster.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--stream-seconds", type=float, default=60.0)
    args = parser.parse_args()
    others, restarts = workers_only(args.rounds)
    delays, stream = with_operator(args.rounds, args.stream_seconds)
    print("\nA SIGKILLed worker's task, from the kill to its start on another worker:")
    print(f"  workers only, another worker finds the entry expired  {summary(others)}")
    print(f"  workers only, the pod's next container                 {summary(restarts)}")
    print(f"  with the operator, the pod deleted                     {summary(delays)}")
    print(
        f"  Celery on Redis alone                                  >= {VISIBILITY_TIMEOUT} s (the visibility timeout)"
    )
    print("\nA steady stream of short tasks through two workers, with busy-pod protection:")
    for name, value in stream.items():
        print(f"  {name:44} {value:8.1f}")


if __name__ == "__main__":
    main()
