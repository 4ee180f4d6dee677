"""The operator's Prometheus metrics. Labels name the GpuTaskQueue, never the broker's credentials."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from gpufleet.model import TROUBLES

FLEET = ("namespace", "gputaskqueue")

queued = Gauge("gpufleet_queue_queued", "Tasks waiting in the broker, per Celery queue.", (*FLEET, "queue"))
reserved = Gauge(
    "gpufleet_queue_reserved",
    "Tasks delivered and not acknowledged (running), per Celery queue.",
    (*FLEET, "queue"),
)
desired = Gauge("gpufleet_desired_replicas", "Worker pods the last decision asked for.", FLEET)
replicas = Gauge("gpufleet_replicas", "Worker pods the Deployment has.", FLEET)
ready_workers = Gauge(
    "gpufleet_ready_workers",
    "Workers taking tasks: worker pods whose worker reports to the broker. With gpufleet_desired_replicas > 0, "
    "0 for minutes means no worker can start.",
    FLEET,
)
failing_pods = Gauge(
    "gpufleet_failing_pods",
    "Worker pods that cannot start, by reason (ImagePullFailed, ContainerConfigError, OOMKilled, "
    "CrashLoopBackOff, Unschedulable).",
    (*FLEET, "reason"),
)
busy_workers = Gauge(
    "gpufleet_busy_workers", "Workers running a task, as they report it to the broker.", FLEET
)
decisions = Counter(
    "gpufleet_decisions_total",
    "Scaling decisions, by direction and what limited them.",
    (*FLEET, "direction", "limited_by"),
)
probe_seconds = Histogram(
    "gpufleet_probe_seconds",
    "Time of one pipelined probe of a broker (all its fleets' queues at once).",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
restored = Counter(
    "gpufleet_tasks_restored_total",
    "Messages of dead workers put back in their queues by the operator.",
    FLEET,
)
tick_seconds = Histogram(
    "gpufleet_tick_seconds",
    "Time of one tick over every due fleet: observe, plan and apply.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
api_reads = Counter(
    "gpufleet_api_reads_total",
    "Reads the operator sent to the Kubernetes API outside its watches, by what they read.",
    ("kind",),
)
api_writes = Counter(
    "gpufleet_api_writes_total",
    "Writes the operator sent to the Kubernetes API, by what they wrote.",
    ("kind",),
)
leader = Gauge(
    "gpufleet_leader",
    "1 while this replica leads and writes (it holds the Lease, or runs without leader election); 0: standby.",
)
probe_errors = Counter("gpufleet_probe_errors_total", "Probes of a broker that failed, per fleet.", FLEET)

# Every series labelled with a fleet: all of them go with it.
_PER_FLEET = (queued, reserved, desired, replicas, ready_workers, failing_pods, busy_workers, decisions, restored,
              probe_errors)  # fmt: skip


def set_failing(namespace: str, name: str, counts: dict[str, int]) -> None:
    """One series per reason that holds pods now; the others go (not thousands of fleets times five zeros)."""
    for reason in TROUBLES:
        if counts.get(reason):
            failing_pods.labels(namespace, name, reason).set(counts[reason])
        else:
            _remove(failing_pods, namespace, name, reason)


def forget_queues(namespace: str, name: str, queues: tuple[str, ...]) -> None:
    """Drop the series of Celery queues the fleet no longer consumes."""
    for queue in queues:
        _remove(queued, namespace, name, queue)
        _remove(reserved, namespace, name, queue)


def forget(namespace: str, name: str) -> None:
    """Drop a deleted fleet's series, whatever their other labels, so they do not linger at their last value."""
    for metric in _PER_FLEET:
        metric.remove_by_labels({"namespace": namespace, "gputaskqueue": name})


def _remove(metric, *labels: str) -> None:
    try:
        metric.remove(*labels)
    except KeyError:
        pass


def serve(port: int) -> None:
    if port:
        start_http_server(port)
