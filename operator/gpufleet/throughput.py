"""What a fleet's own work measures, from what the operator reads anyway: the workers' `done` and `active`
counters in the broker, the depth of the queues over time, and the worker pods' creation times. Pure.

- throughput: tasks per second per worker, for drainWithinSeconds;
- the arrival rate: tasks per second into the queues: the tasks finished plus the change of queued + reserved
  between two readings (a task leaves the queues only when a worker acknowledges it);
- the service time: slot-seconds busy per task finished (Little's law: the mean number of tasks running over
  the rate they finish at), which needs no result backend and no per-task timing;
- the start-up time: from a pod's creation to its worker taking tasks (its first entry in the state hash).

The arrival rate and the service time are ratios of exponentially decayed sums over a window of
LOAD_WINDOW_SECONDS, or WINDOW_SERVICES service times when that is longer: long enough to see several tasks
finish, so that a single arrival of a long task does not read as a new level of load. The service time and the
start-up time change only when a task finishes or a pod starts: an idle fleet forgets neither. The start-up is
the mean over the pods started within STARTUP_WINDOW_SECONDS, not a moving average of the latest ones: the pods
of one scale-up report in the order they finish starting, the slowest last.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from gpufleet.model import WorkerState

SMOOTHING = 0.3  # weight of the newest sample in the throughput's moving average
MIN_SPAN_SECONDS = 5.0  # throughput samples are taken over at least this long
LOAD_WINDOW_SECONDS = 300.0  # the arrival rate and service time average over about this long...
WINDOW_SERVICES = 4.0  # ...or over this many service times, if that is longer
STARTUP_WINDOW_SECONDS = 3600.0  # the start-up is the mean over the pods started within about this long


@dataclass(frozen=True)
class Meter:
    """Everything measured so far, and what the next reading is compared with."""

    # throughput (drainWithinSeconds): counters at the start of the current sample, and the smoothed rate
    since: float | None = None
    counts: Mapping[str, int] = field(default_factory=dict)
    rate: float | None = None
    # the load: the previous reading, and decayed sums since the meter started
    at: float | None = None  # time of the previous reading
    done: Mapping[str, int] = field(default_factory=dict)  # each worker's counter then
    running: int = 0  # tasks running then (the workers' `active`, summed)
    depth: int | None = None  # queued + reserved then
    watched: float = 0.0  # decayed seconds watched
    arrived: float = 0.0  # decayed tasks arrived
    finished: float = 0.0  # decayed tasks finished
    busy: float = 0.0  # decayed slot-seconds running tasks
    service_s: float | None = None  # busy / finished, as of the last task finished; None before any
    # the start-up time: decayed sums over the pods seen starting, their mean, and the pods already counted (or
    # not countable)
    startup_at: float | None = None  # when the last one was counted
    startups: float = 0.0
    startup_total: float = 0.0
    startup_s: float | None = None
    started: frozenset[str] = frozenset()

    @property
    def arrival_rate(self) -> float | None:
        """Tasks per second into the queues; None until the meter has watched for half its window."""
        if self.watched < self.window_s / 2:
            return None
        return max(0.0, self.arrived / self.watched)

    @property
    def window_s(self) -> float:
        service = self.service_s
        return max(LOAD_WINDOW_SECONDS, WINDOW_SERVICES * service) if service else LOAD_WINDOW_SECONDS


def measure(
    meter: Meter,
    workers: Mapping[str, WorkerState],
    now: float,
    depth: int | None = None,
    created: Mapping[str, float] | None = None,
) -> Meter:
    """Fold one reading into the meter: the workers' entries of the state hash, the fleet's queued + reserved
    (`depth`, None when not read), and the creation time of each worker pod that is not being deleted."""
    meter = _throughput(meter, workers, now)
    meter = _load(meter, workers, now, depth)
    return _startup(meter, workers, created or {}, now)


def resumed(meter: Meter, written: str | None) -> Meter:
    """A meter with no start-up measured yet takes the one its fleet's status kept (`status.startupSeconds`),
    so that a restarted operator sizes by its wait target before a new pod has started."""
    if meter.startup_s is not None or not written:
        return meter
    try:
        startup = float(written)
    except ValueError:
        return meter
    if not (math.isfinite(startup) and startup >= 0):
        return meter
    return _with(meter, startup_s=startup, startups=1.0, startup_total=startup)


def _throughput(meter: Meter, workers: Mapping[str, WorkerState], now: float) -> Meter:
    """Tasks per second per worker.

    A sample closes once it spans MIN_SPAN_SECONDS and its workers finished, on average, one task each: a
    window in which busy workers finish nothing yet says nothing about their speed (long tasks, or workers that
    just started), so it stays open rather than count as a rate of zero. Workers that came or went in between
    are left out; a window in which no worker was busy says nothing either and is dropped.
    """
    counts = {pod: w.done for pod, w in workers.items()}
    if meter.since is None:
        return _with(meter, since=now, counts=counts)
    span = now - meter.since
    if span < MIN_SPAN_SECONDS:
        return meter
    common = [pod for pod in counts if pod in meter.counts and counts[pod] >= meter.counts[pod]]
    finished = sum(counts[p] - meter.counts[p] for p in common)
    if not common or (finished == 0 and not any(workers[p].busy for p in common)):
        return _with(meter, since=now, counts=counts)
    if finished < len(common):
        return meter
    sample = finished / span / len(common)
    rate = sample if meter.rate is None else SMOOTHING * sample + (1 - SMOOTHING) * meter.rate
    return _with(meter, since=now, counts=counts, rate=rate)


def _load(meter: Meter, workers: Mapping[str, WorkerState], now: float, depth: int | None) -> Meter:
    """The decayed sums behind the arrival rate and the service time.

    Between two readings: the tasks finished are the growth of each worker's `done` (a worker first seen
    counts from zero: it started since the last reading; one whose counter fell restarted and counts from
    zero too); the slot-seconds busy are the tasks running at the earlier reading times the time between; the
    tasks arrived are those finished plus the growth of queued + reserved. A reading without a depth (the
    broker could not be read) starts over from the next one.
    """
    done = {pod: w.done for pod, w in workers.items()}
    running = sum(w.active for w in workers.values())
    if meter.at is None or depth is None or meter.depth is None or now <= meter.at:
        return _with(meter, at=now, done=done, running=running, depth=depth)
    dt = now - meter.at
    finished = sum(
        n - meter.done.get(pod, 0) if n >= meter.done.get(pod, 0) else n for pod, n in done.items()
    )
    keep = math.exp(-dt / meter.window_s)
    total, busy = meter.finished * keep + finished, meter.busy * keep + meter.running * dt
    return _with(
        meter,
        at=now,
        done=done,
        running=running,
        depth=depth,
        watched=meter.watched * keep + dt,
        arrived=meter.arrived * keep + finished + depth - meter.depth,
        finished=total,
        busy=busy,
        service_s=busy / total if finished and busy > 0 else meter.service_s,
    )


def _startup(
    meter: Meter, workers: Mapping[str, WorkerState], created: Mapping[str, float], now: float
) -> Meter:
    """Seconds from a pod's creation to its worker taking tasks, for each pod whose worker appeared.

    A worker's first entry says when it began (`since`, the moment it went idle-and-ready or, if it took a
    task at once, the moment it started that task) as long as it has finished nothing yet; a worker first seen
    with tasks done (the operator started after it) tells nothing, and is not counted.
    """
    started = set(meter.started & created.keys())
    samples = []
    for pod, born in created.items():
        worker = workers.get(pod)
        if pod in started or worker is None:
            continue
        started.add(pod)
        if worker.done == 0 and worker.since >= born:
            samples.append(worker.since - born)
    if not samples:
        return _with(meter, started=frozenset(started))
    keep = math.exp(-(now - meter.startup_at) / STARTUP_WINDOW_SECONDS) if meter.startup_at is not None else 0
    count, total = meter.startups * keep + len(samples), meter.startup_total * keep + sum(samples)
    return _with(
        meter,
        started=frozenset(started),
        startup_at=now,
        startups=count,
        startup_total=total,
        startup_s=total / count,
    )


def _with(meter: Meter, **changes) -> Meter:
    return Meter(**{**meter.__dict__, **changes})
