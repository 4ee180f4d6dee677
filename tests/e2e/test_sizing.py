"""The default sizing rule on the real control plane (issue 13): real workers, the rates the operator measures
from them, and decisions that name those rates and follow from them."""

from __future__ import annotations

import threading
import time

import pytest

from fleet import Tasks, queue_manifest
from support import wait_for

# slow: the arrival rate is measured once the meter has watched half its 5-minute window (started first under xdist)
pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def test_the_wait_target_sizes_by_the_measured_arrival_rate_service_time_and_start_up(
    kubectl, operator, redis_url
):
    tasks = Tasks(redis_url, "gpu")
    kubectl.apply(
        queue_manifest(
            "sized",
            redis_url,
            ["gpu"],
            scaling={"maxReplicas": 8, "scaleDownStabilizationSeconds": 4, "idleSecondsBeforeZero": 120},
        )
    )
    wait_for("the worker Deployment", lambda: kubectl.get("deployment", "sized-workers"))

    # Nothing measured yet: one pod per task, as targetTasksPerReplica 1 asks.
    tasks.send(3, seconds=1, prefix="first")
    wait_for("3 replicas", lambda: kubectl.replicas("sized-workers") == 3, timeout=30)
    measured = wait_for(
        "the start-up and service time measured from the workers",
        lambda: (s := kubectl.status("sized")).get("startupSeconds") and s.get("serviceSeconds") and s,
        timeout=120,
    )
    assert 0 < float(measured["startupSeconds"]) < 120, measured
    assert 0.8 < float(measured["serviceSeconds"]) < 10, measured  # a 1 s sleep, and Celery's own time

    # A steady stream, one 1 s task every 2 s: the meter gives an arrival rate once it has watched half its
    # 5-minute window.
    stop = threading.Event()

    def stream():
        while not stop.wait(2.0):
            tasks.send(1, seconds=1, prefix="stream")

    producer = threading.Thread(target=stream, daemon=True)
    producer.start()
    try:
        status = wait_for(
            "a measured arrival rate",
            lambda: (s := kubectl.status("sized")).get("arrivalRate") and s,
            timeout=300,
            every=1.0,
        )
        rate = float(status["arrivalRate"])
        assert 0.25 < rate < 1.0, status  # 0.5 tasks/s, and the first three
        # The decision names what it was sized by, with the figures the status shows.
        reason = wait_for(
            "a decision sized by the measured rates",
            lambda: "tasks/s arriving" in (r := kubectl.status("sized").get("reason", "")) and r,
            timeout=30,
        )
        for words in ("s per task", "s start-up", "start them within"):
            assert words in reason, reason

        # A burst of 8 one-second tasks: the workers there start them about as soon as a new pod could be
        # ready, so at most a pod or two more are asked for, where one pod per task would ask for 8.
        wait_for("the stream's fleet settled", lambda: kubectl.replicas("sized-workers") <= 3, timeout=60)
        before = kubectl.replicas("sized-workers")
        tasks.send(8, seconds=1, prefix="burst")
        seen, reasons, deadline = [], [], time.monotonic() + 25
        while time.monotonic() < deadline:
            seen.append(kubectl.replicas("sized-workers"))
            s = kubectl.status("sized")
            if s.get("queued"):
                reasons.append(s.get("reason", ""))
            time.sleep(0.5)
        assert max(seen) <= before + 2, (before, seen, reasons)
        assert any("queued" in r and "tasks/s arriving" in r for r in reasons), reasons
        figures = {k: status[k] for k in ("arrivalRate", "serviceSeconds", "startupSeconds")}
        print(f"measured {figures}; {before} replicas before the burst, during it {seen}; {reasons[-1]!r}")
    finally:
        stop.set()
        producer.join(10)
    wait_for("every task done", tasks.all_done, timeout=180)
    assert tasks.duplicates() == {}
    tasks.close()
