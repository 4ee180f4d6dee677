"""The whole operator at scale: 1 (the baseline), 10, 100, 1,000 and 5,000 GpuTaskQueues, side by side.

    .venv/bin/python benchmarks/operator_scale.py [--sizes 10,100,1000,5000] [--nodes 200] [--tries 8]
                                                  [--steady-seconds 60] [--settle-seconds 240] [--phase-timeout 900]

For each size, on a fresh local control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
kwok) with `--nodes` fake GPU nodes, real `redis-server` brokers on loopback (1 to 10: one per 50 queues) and
several namespaces (up to 10: one per 10 queues), it starts the operator (`python -m gpufleet run`, cluster-wide,
as a process), creates every GpuTaskQueue at once and measures:
- apply: the time to create them all (8 client threads), and to all Deployments existing, from the first create;
- settle: until the writes stop, the operator's (a Deployment, PDB and status per queue) and every client's on the
  operator's resources (the controllers' ReplicaSets, PDB statuses and Events catch up later), and no sooner than
  --settle-seconds after the apply (each status gains its measured arrival rate once, about 150 to 210 s on);
- steady state, over `--steady-seconds` with nothing queued: the tick time (p50, p99, from the operator's
  gpufleet_tick_seconds histogram), the operator's CPU (% of one core) and resident memory (/proc; its peak
  too), the API requests per minute on what the operator reads and writes, from every client (the apiserver's
  apiserver_request_total by verb, watches left out), the operator's own (gpufleet_api_reads/writes_total),
  and broker round trips per tick (gpufleet_probe_seconds_count: one pipelined round trip per broker probed);
- reaction: from one task pushed on one queue among all the others to `spec.replicas >= 1` on its Deployment
  (seen through a watch), p50 and max over `--tries`, each try at a random phase of the 1 s poll.
Size 1 always runs first: its reaction is the baseline of the ratio. Every phase is bounded by --phase-timeout.
Figures are wall-clock on a shared machine: compare the columns of one run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import redis
from kubernetes import client, watch

from gpufleet_tools.devcluster.binaries import bin_dir
from gpufleet_tools.devcluster.controlplane import ControlPlane
from gpufleet_tools.devcluster.nodes import add_gpu_node, is_ready
from gpufleet_tools.devcluster.redisserver import RedisServer, free_port

ROOT = Path(__file__).resolve().parents[1]
CRD = ROOT / "charts" / "gpufleet" / "files" / "gputaskqueues.crd.yaml"
GROUP, VERSION, PLURAL = "gpufleet.dev", "v1alpha1", "gputaskqueues"
PROBE_NS, PROBE_NAME, PROBE_QUEUE = "bench-0", "probe", "probe"
# What the operator reads and writes; the controllers' and kwok's own traffic (nodes, leases) is left out.
RESOURCES = {"gputaskqueues", "deployments", "poddisruptionbudgets", "events", "pods", "secrets"}
WRITES = {"POST", "PUT", "PATCH", "APPLY", "DELETE"}
READS = {"GET", "LIST"}


def layout(n: int) -> tuple[int, int]:
    """(brokers, namespaces) for `n` queues."""
    return max(1, min(10, n // 50)), max(1, min(10, n // 10))


def queue_body(name: str, namespace: str, broker: str, queue: str) -> dict:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "GpuTaskQueue",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "broker": {"url": broker},
            "queues": [queue],
            "worker": {"image": "gpufleet-worker:bench", "gpus": 1},
            # Back to zero soon after the task goes, so the next try starts from zero again.
            "scaling": {
                "maxReplicas": 2,
                "pollIntervalSeconds": 1,
                "scaleDownStabilizationSeconds": 0,
                "idleSecondsBeforeZero": 1,
            },
        },  # fmt: skip
    }


# ---- reading metrics --------------------------------------------------------------------------------------------

_SAMPLE = re.compile(r"^([a-zA-Z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
Samples = list[tuple[str, dict[str, str], float]]


def parse(text: str) -> Samples:
    out = []
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m and not line.startswith("#"):
            out.append((m[1], dict(_LABEL.findall(m[2] or "")), float(m[3])))
    return out


def total(samples: Samples, name: str, keep: Callable[[dict[str, str]], bool] = lambda _: True) -> float:
    return sum(v for n, labels, v in samples if n == name and keep(labels))


def buckets(samples: Samples, name: str) -> dict[float, float]:
    return {float(labels["le"]): v for n, labels, v in samples if n == f"{name}_bucket"}


def quantile(q: float, before: dict[float, float], after: dict[float, float]) -> float | None:
    """Prometheus' histogram_quantile over the observations made between two scrapes."""
    counts = sorted((le, after[le] - before.get(le, 0.0)) for le in after)
    if not counts or counts[-1][1] <= 0:
        return None
    rank, low, below = q * counts[-1][1], 0.0, 0.0
    for le, n in counts:
        if n >= rank:
            if le == float("inf"):
                return low
            return low + (le - low) * ((rank - below) / (n - below) if n > below else 1.0)
        low, below = le, n
    return low


def operator_metrics(port: int) -> Samples:
    return parse(urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode())


def apiserver_metrics(api: client.ApiClient) -> Samples:
    method, url, headers, body, post = api.param_serialize("GET", "/metrics", auth_settings=[])
    resp = api.call_api(method, url, headers, body, post)
    return parse(resp.read().decode())


def by_request(before: Samples, after: Samples, minutes: float) -> dict[str, float]:
    """Requests per minute on the operator's resources between two scrapes, by verb and resource."""
    out: dict[str, float] = {}
    for samples, sign in ((after, 1), (before, -1)):
        for name, labels, v in samples:
            if name == "apiserver_request_total" and labels.get("resource") in RESOURCES:
                what = f"{labels['verb']} {labels['resource']}{'/' + labels['subresource'] if labels.get('subresource') else ''}"
                out[what] = out.get(what, 0.0) + sign * v / minutes
    return {k: v for k, v in sorted(out.items()) if v >= 0.05}


def api_requests(samples: Samples, verbs: set[str]) -> float:
    return total(samples, "apiserver_request_total", lambda lb: lb.get("verb") in verbs and lb.get("resource") in RESOURCES)  # fmt: skip


@dataclass
class Proc:
    pid: int

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def memory_mib(self) -> tuple[float, float]:
        """(resident now, peak resident) in MiB."""
        status = dict(
            line.split(":", 1) for line in Path(f"/proc/{self.pid}/status").read_text().splitlines()
        )
        return int(status["VmRSS"].split()[0]) / 1024, int(status["VmHWM"].split()[0]) / 1024


# ---- one size ---------------------------------------------------------------------------------------------------


@dataclass
class Row:
    queues: int
    brokers: int
    namespaces: int
    nodes: int
    figures: dict[str, float | None] = field(default_factory=dict)
    reactions: list[float] = field(default_factory=list)
    requests: dict[str, float] = field(
        default_factory=dict
    )  # per minute at steady state, by verb and resource
    note: str = ""


def wait_until(what: str, check: Callable[[], object], timeout: float, every: float = 0.5) -> float:
    """Seconds until `check()` is truthy; raises TimeoutError naming `what`."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"{what}: not after {timeout:.0f}s")
        time.sleep(every)
    return time.monotonic() - start


def deployments(apps: client.AppsV1Api) -> int:
    """How many Deployments the cluster has, in one cheap request (a page of one and the count of the rest)."""
    page = apps.list_deployment_for_all_namespaces(limit=1)
    return len(page.items) + (page.metadata.remaining_item_count or 0)


def start_nodes(api: client.ApiClient, count: int, timeout: float) -> None:
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: add_gpu_node(api, f"gpu-{i}", wait=False, gpus=8), range(count)))
    core = client.CoreV1Api(api)

    def ready() -> bool:
        items = api.sanitize_for_serialization(core.list_node())["items"]
        return sum(is_ready(n) for n in items) >= count

    wait_until(f"{count} nodes Ready", ready, timeout, every=1)


def reaction(apps: client.AppsV1Api, broker: redis.Redis, tries: int, timeout: float) -> list[float]:
    name = f"{PROBE_NAME}-workers"
    out = []
    for _ in range(tries):
        wait_until("the probe fleet back at zero",
                   lambda: apps.read_namespaced_deployment(name, PROBE_NS).spec.replicas == 0, timeout)  # fmt: skip
        time.sleep(random.uniform(1.0, 2.0))  # a random phase of the poll
        # The list's version, not the object's: an object untouched for long has a version older than the watch
        # cache keeps (410 Expired).
        listed = apps.list_namespaced_deployment(PROBE_NS, field_selector=f"metadata.name={name}")
        version = listed.metadata.resource_version
        w = watch.Watch()
        stream = w.stream(apps.list_namespaced_deployment, PROBE_NS, field_selector=f"metadata.name={name}",
                          resource_version=version, timeout_seconds=int(timeout))  # fmt: skip
        pushed = time.monotonic()
        broker.lpush(PROBE_QUEUE, json.dumps({"body": "", "headers": {"task": "bench"}}))
        for event in stream:
            if (event["object"].spec.replicas or 0) >= 1:
                out.append(time.monotonic() - pushed)
                w.stop()
        broker.delete(PROBE_QUEUE)
    return out


def run_size(row: Row, args: argparse.Namespace, binaries: Path, work: Path) -> Row:
    """Measure one size into `row`: what was measured before a failure stays in it."""
    n, n_brokers, n_namespaces = row.queues, row.brokers, row.namespaces
    fig = row.figures
    with contextlib.ExitStack() as stack:
        brokers = [stack.enter_context(RedisServer()) for _ in range(n_brokers)]
        plane = ControlPlane(binaries, work / f"cluster-{n}")
        plane.start()
        stack.callback(plane.stop)
        api = plane.api_client()
        apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
        custom = client.CustomObjectsApi(api)
        env = plane.env()
        subprocess.run(
            [str(binaries / "kubectl"), "apply", "-f", str(CRD)], env=env, check=True, capture_output=True
        )
        start_nodes(api, args.nodes, args.phase_timeout)
        for i in range(n_namespaces):
            core.create_namespace({"metadata": {"name": f"bench-{i}"}})
        wait_until("the CRD served", lambda: subprocess.run([str(binaries / "kubectl"), "get", "gtq", "-A"], env=env,
                   capture_output=True).returncode == 0, 60)  # fmt: skip

        port = free_port()
        log = (work / f"operator-{n}.log").open("w")
        stack.callback(log.close)
        operator = subprocess.Popen(
            [sys.executable, "-m", "gpufleet", "run", "--liveness", ""],
            env={**env, "GPUFLEET_METRICS_PORT": str(port), "PYTHONUNBUFFERED": "1"},
            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
        )  # fmt: skip
        stack.callback(lambda: (operator.terminate(), operator.wait(60)))
        proc = Proc(operator.pid)
        wait_until("the operator's metrics", lambda: _answers(port), 120)
        time.sleep(2)  # its watches started

        bodies = [queue_body(PROBE_NAME, PROBE_NS, brokers[0].url, PROBE_QUEUE)] + [
            queue_body(f"q{i}", f"bench-{i % n_namespaces}", brokers[i % n_brokers].url, f"q{i}")
            for i in range(1, n)
        ]
        started = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda b: custom.create_namespaced_custom_object(
                GROUP, VERSION, b["metadata"]["namespace"], PLURAL, b), bodies))  # fmt: skip
        fig["apply s"] = time.monotonic() - started
        wait_until(f"{n} Deployments", lambda: deployments(apps) >= n, args.phase_timeout)
        fig["all Deployments s"] = time.monotonic() - started

        def writes() -> tuple[float, float]:
            """The operator's writes, and every client's on the operator's resources: the controllers (ReplicaSets,
            PodDisruptionBudgets, their Events) catch up with a mass apply after the operator is done."""
            return total(operator_metrics(port), "gpufleet_api_writes_total"), api_requests(
                apiserver_metrics(api), WRITES
            )

        quiet, last = time.monotonic(), writes()
        # Each status gains its arrival rate half a load window (150 s) after its fleet's first reading, seen at
        # the fleet's next plan (at rest: within 30 s): one write per fleet, after which it stays quiet.
        while time.monotonic() - quiet < 10 or time.monotonic() - started < args.settle_seconds:
            if time.monotonic() - started > args.phase_timeout:
                row.note = f"writes still going {args.phase_timeout:.0f} s after the apply; measured anyway"
                break
            time.sleep(2)
            now = writes()
            if now != last:
                quiet, last = time.monotonic(), now
        fig["settled s"] = quiet - started

        before_op, before_api = operator_metrics(port), apiserver_metrics(api)
        cpu, t0 = proc.cpu_seconds(), time.monotonic()
        time.sleep(args.steady_seconds)
        after_op, after_api = operator_metrics(port), apiserver_metrics(api)
        minutes = (time.monotonic() - t0) / 60
        fig["CPU %"] = 100 * (proc.cpu_seconds() - cpu) / (minutes * 60)
        fig["RSS MiB"], fig["peak RSS MiB"] = proc.memory_mib()
        for q in (0.5, 0.99):
            tick = quantile(
                q, buckets(before_op, "gpufleet_tick_seconds"), buckets(after_op, "gpufleet_tick_seconds")
            )
            fig[f"tick p{q * 100:.0f} ms"] = tick * 1e3 if tick is not None else None  # fmt: skip

        def delta(samples_before, samples_after, *spec) -> float:
            return total(samples_after, *spec) - total(samples_before, *spec)

        ticks = delta(before_op, after_op, "gpufleet_tick_seconds_count")
        probes = delta(before_op, after_op, "gpufleet_probe_seconds_count")
        fig["ticks/s"] = ticks / (minutes * 60)
        fig["broker trips/tick"] = probes / ticks if ticks else None
        fig["API reads/min (all clients)"] = (
            api_requests(after_api, READS) - api_requests(before_api, READS)
        ) / minutes
        fig["API writes/min (all clients)"] = (
            api_requests(after_api, WRITES) - api_requests(before_api, WRITES)
        ) / minutes
        fig["operator writes/min"] = delta(before_op, after_op, "gpufleet_api_writes_total") / minutes
        fig["operator reads/min"] = delta(before_op, after_op, "gpufleet_api_reads_total") / minutes
        row.requests = by_request(before_api, after_api, minutes)

        probe_broker = redis.Redis.from_url(brokers[0].url)
        row.reactions = reaction(apps, probe_broker, args.tries, args.phase_timeout)
        fig["reaction p50 s"] = statistics.median(row.reactions)
        fig["reaction max s"] = max(row.reactions)
        probe_broker.close()
        if operator.poll() is not None:
            row.note = f"the operator exited {operator.returncode}: see {log.name}"
    return row


def _answers(port: int) -> bool:
    try:
        operator_metrics(port)
        return True
    except OSError:
        return False


# ---- the table --------------------------------------------------------------------------------------------------

COLUMNS = ["apply s", "all Deployments s", "settled s", "tick p50 ms", "tick p99 ms", "ticks/s", "CPU %",
           "RSS MiB", "peak RSS MiB", "API reads/min (all clients)", "API writes/min (all clients)", "operator reads/min", "operator writes/min",
           "broker trips/tick", "reaction p50 s", "reaction max s", "reaction p50 / 1 queue"]  # fmt: skip


def table(rows: list[Row]) -> str:
    rows = sorted(rows, key=lambda r: r.queues)
    base = rows[0].figures.get("reaction p50 s") if rows and rows[0].queues == 1 else None
    for row in rows:
        p50 = row.figures.get("reaction p50 s")
        row.figures["reaction p50 / 1 queue"] = p50 / base if base and p50 is not None else None
    head = "| | " + " | ".join(f"{r.queues:,} queues" for r in rows) + " |"
    lines = [head, "| --- |" + " ---: |" * len(rows)]
    lines.append("| brokers / namespaces / GPU nodes | " + " | ".join(
        f"{r.brokers} / {r.namespaces} / {r.nodes}" for r in rows) + " |")  # fmt: skip
    for col in COLUMNS:
        cells = [_cell(r.figures.get(col)) for r in rows]
        lines.append(f"| {col} | " + " | ".join(cells) + " |")
    for r in rows:
        if r.requests:
            lines.append(f"\n{r.queues:,} queues, requests/min at steady state: " + ", ".join(
                f"{k} {v:.1f}" for k, v in r.requests.items()))  # fmt: skip
        if r.note:
            lines.append(f"\n{r.queues:,} queues: {r.note}")
    return "\n".join(lines)


def _cell(v: float | None) -> str:
    if v is None:
        return "–"
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.2f}" if abs(v) < 10 else f"{v:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes", default="10,100,1000,5000", help="comma-separated queue counts (1 is added)"
    )
    parser.add_argument("--nodes", type=int, default=200, help="fake GPU nodes (kwok), 8 GPUs each")
    parser.add_argument("--tries", type=int, default=8, help="reaction measurements per size")
    parser.add_argument("--steady-seconds", type=float, default=60.0)
    parser.add_argument(
        "--settle-seconds", type=float, default=240.0, help="steady state no sooner after the apply"
    )
    parser.add_argument("--phase-timeout", type=float, default=900.0, help="bound of each phase, seconds")
    args = parser.parse_args()
    # Stopped (`timeout`, kill): unwind, so that every cluster, broker and operator this started stops too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sizes = [1] + [int(s) for s in args.sizes.split(",") if s.strip() and int(s) != 1]  # run in this order
    binaries = bin_dir(build=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="gpufleet-scale-") as tmp:
        for n in sizes:
            began = time.monotonic()
            row = Row(n, *layout(n), args.nodes)
            rows.append(row)
            try:
                run_size(row, args, binaries, Path(tmp))
            except Exception as exc:  # a size that does not finish in its bounds is reported, not hidden
                row.note = f"not finished: {type(exc).__name__}: {str(exc).splitlines()[0]}"
                log = Path(tmp) / f"operator-{n}.log"
                if log.exists():
                    print(f"--- operator log, {n} queues (tail) ---\n{log.read_text()[-3000:]}")
            print(f"\n{n:,} queues: {time.monotonic() - began:.0f} s in all\n{table(rows)}\n", flush=True)


if __name__ == "__main__":
    main()
