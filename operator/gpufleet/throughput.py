"""Measured throughput of a fleet's workers, from the `done` counters they publish to the broker. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from gpufleet.model import WorkerState

SMOOTHING = 0.3  # weight of the newest sample in the moving average
MIN_SPAN_SECONDS = 5.0  # samples are taken over at least this long


@dataclass(frozen=True)
class Meter:
    """Counters seen at the start of the current sample, and the smoothed rate so far (tasks/s per worker)."""

    since: float | None = None
    counts: Mapping[str, int] = field(default_factory=dict)
    rate: float | None = None


def measure(meter: Meter, workers: Mapping[str, WorkerState], now: float) -> Meter:
    """Fold the workers' counters into the meter.

    A sample closes once it spans MIN_SPAN_SECONDS and its workers finished, on average, one task each: a
    window in which busy workers finish nothing yet says nothing about their speed (long tasks, or workers that
    just started), so it stays open rather than count as a rate of zero. Workers that came or went in between
    are left out; a window in which no worker was busy says nothing either and is dropped.
    """
    counts = {pod: w.done for pod, w in workers.items()}
    if meter.since is None:
        return Meter(now, counts, meter.rate)
    span = now - meter.since
    if span < MIN_SPAN_SECONDS:
        return meter
    common = [pod for pod in counts if pod in meter.counts and counts[pod] >= meter.counts[pod]]
    finished = sum(counts[p] - meter.counts[p] for p in common)
    if not common or (finished == 0 and not any(workers[p].busy for p in common)):
        return Meter(now, counts, meter.rate)
    if finished < len(common):
        return meter
    sample = finished / span / len(common)
    rate = sample if meter.rate is None else SMOOTHING * sample + (1 - SMOOTHING) * meter.rate
    return Meter(now, counts, rate)
