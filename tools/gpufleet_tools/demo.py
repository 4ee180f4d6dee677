"""`gpufleet demo`: a burst of real tasks through a real fleet, watched live as it scales up and back to zero.

On this machine: a local control plane (Go-built binaries) with simulated GPU nodes, a redis-server, the
operator installed with the Helm chart, and its pods and the worker pods run as local processes by the
process-pod runner (NumPy stands in for CuPy without a GPU). With --kubeconfig: any cluster (the chart is
installed there), with a worker image and a broker that both it and this machine reach.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

QUEUE = "demo"
NAME = "demo"


@dataclass
class Sample:
    t: float
    queued: int
    running: int
    replicas: int
    desired: int
    ready: int
    pending: int
    done: int


@dataclass
class Run:
    samples: list[Sample] = field(default_factory=list)
    reasons: list[tuple[float, str]] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    reaction_s: float | None = None
    drained_s: float | None = None
    zero_s: float | None = None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tasks", type=int, default=120, help="tasks in the burst (default 120)")
    p.add_argument("--nodes", type=int, default=2, help="simulated GPU nodes (local cluster)")
    p.add_argument("--gpus-per-node", type=int, default=2, help="GPUs per simulated node")
    p.add_argument(
        "--max-replicas", type=int, default=5, help="the fleet's maxReplicas (above the GPUs: some wait)"
    )
    p.add_argument(
        "--plot", default="gpufleet-demo.png", help="where to write the PNG timeline ('' for none)"
    )
    p.add_argument(
        "--no-live", action="store_true", help="print one line per change instead of a live display"
    )
    p.add_argument("--timeout", type=float, default=600, help="give up after this many seconds")
    p.add_argument(
        "--kubeconfig", help="use this cluster instead of starting a local one (needs --broker, --image)"
    )
    p.add_argument(
        "--broker", help="with --kubeconfig: a Redis URL both the cluster's pods and this machine reach"
    )
    p.add_argument("--image", help="with --kubeconfig: the worker image")
    p.add_argument(
        "--operator-image",
        help="with --kubeconfig: the operator image repository (the chart's default otherwise)",
    )
    p.add_argument("--keep", action="store_true", help="leave the local cluster running at the end")


def queue_manifest(broker: str, image: str, max_replicas: int, local: bool) -> dict:
    worker: dict = {"image": image, "gpus": 1, "terminationGracePeriodSeconds": 60, "taskTimeLimitSeconds": 120,
                    "visibilityTimeoutSeconds": 600}  # fmt: skip
    if local:
        # Process pods run on this machine: no GPU (NumPy stands in), and one BLAS thread per worker.
        worker |= {"requireGpu": False, "env": [{"name": "OMP_NUM_THREADS", "value": "1"}]}
    return {
        "apiVersion": "gpufleet.dev/v1alpha1",
        "kind": "GpuTaskQueue",
        "metadata": {"name": NAME},
        "spec": {
            "broker": {"url": broker},
            "queues": [QUEUE],
            "worker": worker,
            "scaling": {
                "maxReplicas": max_replicas,
                "targetTasksPerReplica": 4,
                "pollIntervalSeconds": 0.5,
                "scaleDownStabilizationSeconds": 10,
                "idleSecondsBeforeZero": 10,
            },
        },
    }


class Burst(threading.Thread):
    """Sends the burst from a thread, so the live view shows the fleet waking while tasks arrive."""

    def __init__(self, broker: str, n: int) -> None:
        super().__init__(name="gpufleet-demo-burst", daemon=True)
        from celery import Celery

        from gpufleet_worker.app import configure

        self.app = Celery("gpufleet-demo")
        configure(self.app, {"GPUFLEET_BROKER_URL": broker, "GPUFLEET_QUEUES": QUEUE})
        self.n = n
        self.results: list = []
        self.error: BaseException | None = None

    def run(self) -> None:
        """Mostly blurs of image batches (compute-heavy, small payloads), and some matmuls."""
        rng = np.random.default_rng(7)
        kernel = np.outer(*(2 * [np.exp(-(np.linspace(-3, 3, 31) ** 2))])).astype(np.float32)
        kernel /= kernel.sum()
        try:
            for i in range(self.n):
                if i % 10 == 9:
                    a, b = rng.random((512, 512), dtype=np.float32), rng.random((512, 512), dtype=np.float32)
                    self.results.append(self.app.send_task("gpufleet.matmul", args=[a, b], queue=QUEUE))
                else:
                    images = rng.random((24, 128, 128), dtype=np.float32)
                    task = self.app.send_task("gpufleet.convolve_images", args=[images, kernel], queue=QUEUE)
                    self.results.append(task)
        except BaseException as exc:  # shown by the caller: the demo must not hang on a dead producer
            self.error = exc

    def done(self) -> int:
        return sum(1 for r in list(self.results) if r.ready())


class Kubectl:
    def __init__(self, env: dict[str, str]):
        self.env = env

    def __call__(self, *args: str, stdin: str | None = None) -> str:
        out = subprocess.run(
            ["kubectl", *args], env=self.env, input=stdin, capture_output=True, text=True, timeout=120
        )
        if out.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)}: {out.stderr.strip()}")
        return out.stdout

    def json(self, *args: str) -> dict:
        return json.loads(self("get", *args, "-o", "json"))


def sample(kubectl: Kubectl, burst: Burst, started: float) -> tuple[Sample, str]:
    status = (kubectl.json("gtq", NAME).get("status")) or {}
    done = burst.done()
    return (
        Sample(
            t=time.monotonic() - started,
            queued=status.get("queued", 0),
            running=status.get("reserved", 0),
            replicas=status.get("replicas", 0),
            desired=status.get("desiredReplicas", 0),
            ready=status.get("readyReplicas", 0),
            pending=status.get("pendingPods", 0),
            done=done,
        ),
        status.get("reason", ""),
    )


def watch(kubectl: Kubectl, burst: Burst, n: int, timeout: float, live: bool) -> Run:
    from rich.console import Console
    from rich.live import Live
    from rich.table import Table

    console = Console()
    run = Run()
    started = time.monotonic()
    burst.start()

    def table(s: Sample, reason: str) -> Table:
        t = Table(title=f"gpufleet demo: {n} tasks on GpuTaskQueue/{NAME}", title_justify="left")
        for col in ("time", "queued", "running", "replicas", "desired", "ready", "pending (no GPU)", "done"):
            t.add_column(col, justify="right")
        t.add_row(f"{s.t:5.1f}s", str(s.queued), str(s.running), str(s.replicas), str(s.desired), str(s.ready),
                  str(s.pending), f"{s.done}/{n}")  # fmt: skip
        t.caption = reason
        return t

    context = Live(console=console, refresh_per_second=4) if live else contextlib.nullcontext()
    with context as display:
        last_line = None
        while time.monotonic() - started < timeout:
            if burst.error is not None:
                raise RuntimeError(f"sending the tasks failed: {burst.error}")
            s, reason = sample(kubectl, burst, started)
            run.samples.append(s)
            if not run.reasons or run.reasons[-1][1] != reason:
                run.reasons.append((s.t, reason))
            if run.reaction_s is None and s.desired >= 1:
                run.reaction_s = s.t
            if run.drained_s is None and s.done == n:
                run.drained_s = s.t
            if run.drained_s is not None and s.desired == 0 and s.replicas == 0:
                run.zero_s = s.t
            if display is not None:
                display.update(table(s, reason))
            else:
                line = (s.queued, s.running, s.replicas, s.desired, s.pending, s.done)
                if line != last_line:
                    print(f"{s.t:6.1f}s queued={s.queued} running={s.running} replicas={s.replicas} "
                          f"desired={s.desired} pending={s.pending} done={s.done}/{n}  {reason}", flush=True)  # fmt: skip
                    last_line = line
            if run.zero_s is not None:
                break
            time.sleep(0.5)
    return run


def scaling_events(kubectl: Kubectl) -> list[str]:
    items = kubectl.json("events", "--field-selector", f"involvedObject.name={NAME}").get("items", [])
    items = [e for e in items if e.get("reason") in ("ScaledUp", "ScaledDown")]
    # Timestamps have whole seconds; etcd's revision orders events posted within one.
    items.sort(key=lambda e: int(e["metadata"]["resourceVersion"]))
    return [f"{e['reason']:<10} {e['message']}" for e in items]


def summary(run: Run, n: int) -> str:
    peak = max((s.replicas for s in run.samples), default=0)
    pod_seconds = sum(b.replicas * (b.t - a.t) for a, b in zip(run.samples, run.samples[1:], strict=False))
    done = run.samples[-1].done if run.samples else 0
    lines = [
        f"tasks done:                   {done}/{n}",
        f"first task to a scale-up:     {run.reaction_s:.1f}s"
        if run.reaction_s is not None
        else "no scale-up seen",
        f"burst drained after:          {run.drained_s:.1f}s"
        if run.drained_s is not None
        else "burst not drained",
        f"back to zero replicas after:  {run.zero_s:.1f}s" if run.zero_s is not None else "not back to zero",
        f"peak replicas:                {peak}",
        f"GPU-seconds held:             {pod_seconds:.0f}",
        "scaling events:",
        *[f"  {e}" for e in run.events],
    ]
    return "\n".join(lines)


def plot(run: Run, n: int, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s.t for s in run.samples]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 5.5), sharex=True, dpi=80)
    top.plot(t, [s.queued for s in run.samples], label="queued")
    top.plot(t, [s.running for s in run.samples], label="running")
    top.plot(t, [n - s.done for s in run.samples], label="not yet done", linestyle=":")
    top.set_ylabel("tasks")
    top.legend(loc="upper right")
    bottom.step(t, [s.desired for s in run.samples], where="post", label="desired")
    bottom.step(t, [s.replicas for s in run.samples], where="post", label="replicas")
    bottom.step(t, [s.pending for s in run.samples], where="post", label="pending (no GPU)")
    bottom.set_ylabel("worker pods")
    bottom.set_xlabel("seconds since the burst")
    bottom.legend(loc="upper right")
    top.set_title(f"gpufleet demo: {n} tasks")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


CHART = Path(__file__).resolve().parents[2] / "charts" / "gpufleet"
RELEASE, RELEASE_NAMESPACE = "gpufleet", "gpufleet-system"


def release_installed(env: dict[str, str]) -> bool:
    """Whether the cluster already has the release this demo would install."""
    out = subprocess.run(["helm", "status", RELEASE, "--namespace", RELEASE_NAMESPACE],
                         env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
    return out.returncode == 0


def install_operator(kubectl: Kubectl, env: dict[str, str], *values: str) -> None:
    """`helm install` of the chart (CRD, RBAC, the operator's Deployment), then wait until it serves."""
    out = subprocess.run(
        ["helm", "upgrade", "--install", RELEASE, str(CHART), "--namespace", RELEASE_NAMESPACE, "--create-namespace",
         "--wait", "--timeout", "180s", *values],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(f"helm install failed: {out.stderr.strip()}")
    wait_established(kubectl)


def wait_established(kubectl: Kubectl, timeout: float = 60) -> None:
    """Until the CRD is served. (`kubectl wait --for=condition=Established` fails outright, instead of waiting,
    while the new CRD has no status.conditions yet.)"""
    deadline = time.monotonic() + timeout
    while True:
        conditions = (kubectl.json("crd", "gputaskqueues.gpufleet.dev").get("status") or {}).get(
            "conditions"
        ) or []
        if any(c["type"] == "Established" and c["status"] == "True" for c in conditions):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the GpuTaskQueue CRD was not established in {timeout:.0f}s: {conditions}")
        time.sleep(0.2)


@contextlib.contextmanager
def local_cluster(nodes: int, gpus: int, keep: bool):
    """The dev cluster (control plane, GPU nodes, process pods) and a redis-server, all on loopback; the operator
    is installed into it with the Helm chart and runs as a process pod (this virtualenv plays its image)."""
    from gpufleet_tools.devcluster.binaries import bin_dir
    from gpufleet_tools.devcluster.cluster import DevCluster
    from gpufleet_tools.devcluster.redisserver import RedisServer, free_port

    print(
        "starting a local control plane (etcd, kube-apiserver, controller manager, scheduler, kwok) ...",
        flush=True,
    )
    cluster = DevCluster(bin_dir(build=True), gpu_nodes=nodes, gpus_per_node=gpus)
    with contextlib.ExitStack() as stack:
        cluster.start()
        stack.callback(cluster.stop if keep else cluster.close)
        redis_server = stack.enter_context(RedisServer())
        env = cluster.env()
        started = cluster.control_plane.startup_seconds
        print(
            f"cluster up in {started:.1f}s: {nodes} nodes x {gpus} GPUs; logs in {cluster.directory}",
            flush=True,
        )
        print("helm install gpufleet (CRD, RBAC, operator) ...", flush=True)
        install_operator(
            Kubectl(env),
            env,
            "--set", "command={python,-m,gpufleet}",
            "--set", f"metrics.port={free_port()}",
            "--set", f"livenessPort={free_port()}",
        )  # fmt: skip
        if keep:
            print(f"kept running: export KUBECONFIG={cluster.kubeconfig}")
        yield env, redis_server.url, "gpufleet-worker:local"


def run(args: argparse.Namespace) -> int:
    local = not args.kubeconfig
    if not local and not Path(args.kubeconfig).exists():
        print(f"gpufleet demo: --kubeconfig {args.kubeconfig}: no such file", file=sys.stderr)
        return 2
    if not local and not (args.broker and args.image):
        print(
            "gpufleet demo: --kubeconfig needs --broker (a Redis URL its pods reach) and --image",
            file=sys.stderr,
        )
        return 2
    if local:
        cluster = local_cluster(args.nodes, args.gpus_per_node, args.keep)
    else:
        env = {**os.environ, "KUBECONFIG": args.kubeconfig}
        if release_installed(env):
            # Never reset a release's values: use the operator as it is installed.
            print(
                f"gpufleet is installed (release {RELEASE} in {RELEASE_NAMESPACE}): using it as it is",
                flush=True,
            )
            wait_established(Kubectl(env))
        else:
            install_operator(
                Kubectl(env),
                env,
                *(["--set", f"image.repository={args.operator_image}"] if args.operator_image else []),
            )
        cluster = contextlib.nullcontext((env, args.broker, args.image))
    with cluster as (env, broker, image):
        kubectl = Kubectl(env)
        kubectl(
            "apply", "-f", "-", stdin=yaml.safe_dump(queue_manifest(broker, image, args.max_replicas, local))
        )
        deadline = time.monotonic() + 60
        while not (kubectl.json("gtq", NAME).get("status") or {}).get("deployment"):
            if time.monotonic() > deadline:
                print("gpufleet demo: the operator did not pick up the GpuTaskQueue in 60s", file=sys.stderr)
                return 1
            time.sleep(0.3)
        print(f"sending {args.tasks} tasks to queue '{QUEUE}' ...", flush=True)
        burst = Burst(broker, args.tasks)
        live = not args.no_live and sys.stdout.isatty()
        try:
            outcome = watch(kubectl, burst, args.tasks, args.timeout, live=live)
        finally:
            burst.join(30)
            burst.app.close()
        outcome.events = scaling_events(kubectl)
        print(summary(outcome, args.tasks))
        if args.plot:
            plot(outcome, args.tasks, args.plot)
            print(f"timeline: {args.plot}")
        if not local:
            kubectl("delete", "gtq", NAME, "--wait=false")
        ok = outcome.zero_s is not None and outcome.samples[-1].done == args.tasks
        return 0 if ok else 1
