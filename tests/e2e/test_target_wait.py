"""targetWaitSeconds on the real control plane: two fleets, the same burst at the same moment, and the one with
the lower target starts its tasks sooner, because it asks for more pods."""

from __future__ import annotations

import statistics
import time

import pytest

from fleet import Tasks, queue_manifest, wait_for

pytestmark = [pytest.mark.cluster]

BURST, SECONDS = 12, 3.0


def _waits(tasks: Tasks, sent_at: float, prefix: str) -> list[float]:
    """From the send to each run's start, for the tasks whose marker starts with `prefix`."""
    return sorted(r["start"] - sent_at for r in tasks.runs() if r["marker"].startswith(prefix))


def test_a_lower_target_wait_gives_shorter_waits_on_the_same_burst(kubectl, operator, redis_url):
    fleets = {"eager": 1, "patient": 600}  # targetWaitSeconds: under a start-up, and ten minutes
    tasks = {name: Tasks(redis_url, name) for name in fleets}
    for name, target in fleets.items():
        scaling = {"maxReplicas": 4, "targetWaitSeconds": target, "idleSecondsBeforeZero": 6}
        kubectl.apply(queue_manifest(name, redis_url, [name], scaling=scaling))
    for name in fleets:
        wait_for(f"{name}'s Deployment", lambda name=name: kubectl.get("deployment", f"{name}-workers"))

    # The wait target sizes a fleet once its start-up and service time are measured: one task each, first.
    for name in fleets:
        tasks[name].send(1, seconds=1, prefix=f"{name}-warm")
    for name in fleets:
        wait_for(
            f"{name}'s start-up and service time measured",
            lambda name=name: (s := kubectl.status(name)).get("startupSeconds") and s.get("serviceSeconds"),
            timeout=120,
        )
    for name in fleets:
        wait_for(
            f"{name} back at zero", lambda name=name: kubectl.replicas(f"{name}-workers") == 0, timeout=120
        )

    # The same burst to both at once.
    sent_at = time.time()
    for name in fleets:
        tasks[name].send(BURST, seconds=SECONDS, prefix=f"{name}-burst")
    peak = dict.fromkeys(fleets, 0)
    deadline = time.monotonic() + 180
    while not all(t.all_done() for t in tasks.values()) and time.monotonic() < deadline:
        for name in fleets:
            peak[name] = max(peak[name], kubectl.replicas(f"{name}-workers") or 0)
        time.sleep(0.5)
    for name in fleets:
        wait_for(f"every task of {name} done", tasks[name].all_done, timeout=60)
    assert tasks["eager"].duplicates() == {}  # both fleets' runs are in one list, named apart by their prefix

    eager, patient = (_waits(tasks[name], sent_at, f"{name}-burst") for name in ("eager", "patient"))
    assert len(eager) == len(patient) == BURST
    print(
        f"peak replicas {peak}; waits (s) eager mean {statistics.mean(eager):.1f} max {eager[-1]:.1f}, "
        f"patient mean {statistics.mean(patient):.1f} max {patient[-1]:.1f}"
    )
    # The patient fleet starts the burst with a pod or two (12 x 3 s of work is well within 600 s); the eager one
    # asks for a pod for every task it cannot start at once, up to maxReplicas.
    assert peak["eager"] > peak["patient"], peak
    assert statistics.mean(eager) < statistics.mean(patient), (eager, patient)
    assert eager[-1] < patient[-1], (eager, patient)
    # The eager fleet learned the idle gap before the burst, and shows it.
    assert kubectl.status("eager").get("idleGaps"), kubectl.status("eager")
    for t in tasks.values():
        t.close()
