"""The figures of one run: what it cost in GPUs and what it did to the tasks."""

from __future__ import annotations

from typing import Any

import numpy as np

from gpufleet_tools.simulate.engine import Run

KEYS = (
    "gpu_hours",
    "floor_gpu_hours",
    "busy_share",
    "wait_p50_s",
    "wait_p95_s",
    "wait_p99_s",
    "interrupted",
    "scale_events",
    "scale_events_per_hour",
    "drain_s",
)


def floor_gpu_hours(run: Run) -> float:
    """The GPU-hours of the tasks themselves: each task's service time on the GPUs of the slot it runs in.
    No policy can use less (a pod of `slots` slots runs that many tasks on its GPUs at once)."""
    work = sum(t.service_s for t in run.trace.tasks)
    return work * run.setup.gpus / run.setup.slots / 3600


def summarize(run: Run) -> dict[str, Any]:
    """The report's figures, rounded for reading (milliseconds, and GPU-hours to 1/1000).

    - gpu_hours: the pods' whole lives (start-up and idle time included) times the GPUs per pod.
    - floor_gpu_hours: what the tasks themselves take (`floor_gpu_hours`), the same for every policy.
    - busy_share: the share of the pods' slot-seconds spent running tasks (killed runs included).
    - wait_*: per completed task, what it spent beyond its own service time: from its arrival to the start
      of the run that completed it, so a killed run's lost work and its wait for redelivery count as waiting.
    - interrupted: runs killed mid-task (one task may be killed more than once).
    - scale_events: changes of the Deployment's replicas; scale_events_per_hour over the run's length.
    - drain_s: from the first arrival to the last completion; None when some task never completed.
    """
    tasks = run.trace.tasks
    waits = [
        s - t.arrival_s for t, s, f in zip(tasks, run.started, run.finished, strict=True) if f is not None
    ]
    p50, p95, p99 = np.percentile(waits, [50, 95, 99]) if waits else (None, None, None)
    done = [f for f in run.finished if f is not None]
    unfinished = len(tasks) - len(done)
    work = sum(t.service_s for t, f in zip(tasks, run.finished, strict=True) if f is not None)
    slot_seconds = run.pod_seconds * run.setup.slots

    def ms(x: float | None) -> float | None:
        return None if x is None else round(float(x), 3)

    return {
        "gpu_hours": round(run.pod_seconds * run.setup.gpus / 3600, 3),
        "floor_gpu_hours": round(floor_gpu_hours(run), 3),
        "wait_p50_s": ms(p50),
        "wait_p95_s": ms(p95),
        "wait_p99_s": ms(p99),
        "interrupted": run.interrupted,
        "scale_events": run.scale_events,
        "scale_events_per_hour": round(run.scale_events / (run.end_s / 3600), 2) if run.end_s else 0.0,
        "drain_s": ms(max(done) - tasks[0].arrival_s) if not unfinished else None,
        "tasks": len(tasks),
        "unfinished": unfinished,
        "lost_work_s": ms(run.lost_work_s),
        "peak_replicas": max(replicas for _, _, replicas in run.timeline),
        "busy_share": round((work + run.lost_work_s) / slot_seconds, 3) if slot_seconds else None,
    }
