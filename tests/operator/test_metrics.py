"""A fleet's metric series go with it, whatever their other labels: none lingers at its last value."""

from __future__ import annotations

from prometheus_client import REGISTRY

from gpufleet import metrics


def series(namespace: str, name: str) -> list[tuple[str, dict]]:
    return [(s.name, s.labels) for m in REGISTRY.collect() for s in m.samples
            if s.labels.get("namespace") == namespace and s.labels.get("gputaskqueue") == name]  # fmt: skip


def test_forgetting_a_fleet_drops_every_series_it_had():
    metrics.queued.labels("gone-ns", "q", "gpu").set(3)
    metrics.reserved.labels("gone-ns", "q", "gpu").set(1)
    metrics.desired.labels("gone-ns", "q").set(2)
    metrics.decisions.labels("gone-ns", "q", "up", "none").inc()
    metrics.decisions.labels("gone-ns", "q", "hold", "maxReplicas").inc()
    metrics.probe_errors.labels("gone-ns", "q").inc()
    metrics.restored.labels("gone-ns", "q").inc(2)
    metrics.set_failing("gone-ns", "q", {"OOMKilled": 1})
    metrics.desired.labels("gone-ns", "kept").set(1)
    assert len(series("gone-ns", "q")) >= 8
    metrics.forget("gone-ns", "q")
    assert series("gone-ns", "q") == []
    assert series("gone-ns", "kept") != []


def test_a_queue_dropped_from_a_fleet_loses_its_series():
    for queue in ("gpu", "old"):
        metrics.queued.labels("ns", "fleet", queue).set(1)
    metrics.forget_queues("ns", "fleet", ("old",))
    queues = {labels["queue"] for name, labels in series("ns", "fleet") if name == "gpufleet_queue_queued"}
    assert queues == {"gpu"}
