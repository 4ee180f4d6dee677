"""Workers that cannot start, on the local control plane: what it can produce.

Its pods are kwok's, reported Running and Ready whatever their process does; the process-pod runner restarts a
process that exits and reports no container state. So here:
- pods that no node can take (Unschedulable): the WorkersFailing condition, one Warning, and recovery when a node
  comes;
- a worker process that exits at start: no container state to read, but the queue's WORKERS column and the
  metrics the alert reads (gpufleet_desired_replicas > 0, gpufleet_ready_workers == 0) say that no worker runs,
  and mending the celeryApp brings the fleet back with every task done.
The container states themselves (image pulls, CrashLoopBackOff, CreateContainerConfigError) are read on kind
(test_kind_failing_workers.py) and in tests/operator/test_failing_workers.py.
"""

from __future__ import annotations

import json
import re
import urllib.request

import pytest

from fleet import Operator, Tasks, queue_manifest
from support import free_port, wait_for

pytestmark = pytest.mark.cluster


def warnings(kubectl, name: str, reason: str) -> list[dict]:
    return [e for e in kubectl.events(name) if e["type"] == "Warning" and e["reason"] == reason]


def test_pods_waiting_for_a_node_show_on_the_queue_and_clear_when_one_comes(
    kubectl, operator, redis_url, gpu_nodes
):
    tasks = Tasks(redis_url, "gpu")
    kubectl.apply(queue_manifest("nodeless", redis_url, ["gpu"], scaling={"targetWaitSeconds": 0},
                                 worker={"nodeSelector": gpu_nodes.selector}))  # fmt: skip
    wait_for("the worker Deployment", lambda: kubectl.get("deployment", "nodeless-workers"))
    tasks.send(2, seconds=0.5)
    wait_for("WorkersFailing=Unschedulable",
             lambda: kubectl.condition("nodeless", "WorkersFailing").get("reason") == "Unschedulable", timeout=60,
             show=lambda: kubectl.condition("nodeless", "WorkersFailing"))  # fmt: skip
    message = kubectl.condition("nodeless", "WorkersFailing")["message"]
    assert "wait for a node" in message and "nodeless-workers-" in message and "To fix:" in message
    # Capacity may come (a cluster autoscaler): the queue stays Ready and the capacity limit holds the fleet.
    assert kubectl.condition("nodeless", "Ready")["status"] == "True"
    assert kubectl.status("nodeless")["workers"].startswith("0/")
    assert len(warnings(kubectl, "nodeless", "Unschedulable")) == 1

    gpu_nodes.add(1, gpus=4)
    wait_for("WorkersFailing cleared",
             lambda: kubectl.condition("nodeless", "WorkersFailing").get("status") == "False", timeout=90)  # fmt: skip
    wait_for("every task done", tasks.all_done, timeout=120)
    assert tasks.duplicates() == {}
    assert any(e["reason"] == "WorkersStarted" for e in kubectl.events("nodeless"))
    assert len(warnings(kubectl, "nodeless", "Unschedulable")) == 1  # one episode, one Warning
    tasks.close()


def _gauge(port: int, name: str, fleet: str) -> float | None:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    found = re.search(rf'^{name}\{{[^}}]*gputaskqueue="{fleet}"[^}}]*\}} (\S+)$', text, re.MULTILINE)
    return float(found.group(1)) if found else None


def test_a_worker_that_exits_at_start_shows_no_worker_ready_and_recovers_when_mended(
    cluster, cluster_env, namespace, crd, kubectl, redis_url, tmp_path
):
    port = free_port()
    op = Operator(cluster_env, namespace, tmp_path)
    op.env["GPUFLEET_METRICS_PORT"] = str(port)
    op.start()
    tasks = Tasks(redis_url, "gpu")
    try:
        kubectl.apply(queue_manifest("broken", redis_url, ["gpu"], scaling={"targetWaitSeconds": 0, "maxReplicas": 2},
                                     worker={"celeryApp": "e2e_app_nowhere:app"}))  # fmt: skip
        wait_for("the worker Deployment", lambda: kubectl.get("deployment", "broken-workers"))
        tasks.send(3, seconds=0.5)
        pod = wait_for("a worker pod", lambda: kubectl.pods("gpufleet.dev/fleet=broken"))[0]["metadata"][
            "name"
        ]
        wait_for(f"{pod}'s process to exit", lambda: re.search(
            rf"{namespace}/{pod}: exited with [1-9]", cluster.runner.log_path.read_text()), timeout=60)  # fmt: skip
        assert "e2e_app_nowhere" in cluster.runner.pod_log(namespace, pod)

        # No worker runs: the WORKERS column says 0 of what the fleet asks for, and so do the alert's metrics.
        def no_worker_ready():
            desired, ready = (
                _gauge(port, m, "broken") for m in ("gpufleet_desired_replicas", "gpufleet_ready_workers")
            )
            workers = kubectl.status("broken").get("workers", "")
            return (
                desired
                and desired > 0
                and ready == 0
                and workers == f"0/{int(desired)}"
                and (desired, workers)
            )

        desired, workers = wait_for("desired > 0 and ready = 0", no_worker_ready, timeout=60)
        table = kubectl.run("get", "gtq", "broken").stdout
        assert "WORKERS" in table and workers in table, table

        kubectl.run("patch", "gtq", "broken", "--type=merge", "-p",
                    json.dumps({"spec": {"worker": {"celeryApp": "e2e_app:app"}}}))  # fmt: skip
        wait_for("every task done", tasks.all_done, timeout=180)
        assert tasks.duplicates() == {}
        wait_for(
            "a worker ready", lambda: (_gauge(port, "gpufleet_ready_workers", "broken") or 0) >= 1, timeout=60
        )
        print(f"\nno worker ready: desired {desired:.0f}, WORKERS {workers}; mended: every task done")
    finally:
        tasks.close()
        op.stop()
        print(f"--- operator log ({namespace}) ---\n{op.log()[-6000:]}")
    op.assert_no_traceback()
