"""The e2e fixture itself, on the real cluster: version, GPU nodes and scheduling, garbage collection, and the
process-pod runner's kubelet behaviour (env, restarts, SIGTERM, grace period, SIGKILL)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from support import wait_for as _wait_for

GPU = "nvidia.com/gpu"
PROCESS_LABELS = {"app.kubernetes.io/managed-by": "gpufleet"}  # selected by the runner's default selectors

# A process pod's program. It records what it was started with, then waits. On SIGTERM it leaves a mark, and
# either exits, waits for the test's "release" file first (HOLD), or carries on (IGNORE_TERM). With FAIL_FIRST
# its first run exits 3 at once.
PROGRAM = r"""
import json, os, signal, sys, time
out, me = os.environ["OUT"], os.environ["POD"]
runs = len([f for f in os.listdir(out) if f.startswith(me + ".run")])
open(f"{out}/{me}.run{runs}", "w").close()
if os.environ.get("FAIL_FIRST") == "1" and runs == 0:
    sys.exit(3)
with open(f"{out}/{me}.tmp", "w") as f:
    json.dump({"env": dict(os.environ), "argv": sys.argv[1:], "pid": os.getpid(), "cwd": os.getcwd()}, f)
os.rename(f"{out}/{me}.tmp", f"{out}/{me}.json")
def term(*_):
    open(f"{out}/{me}.term", "w").close()
    if os.environ.get("IGNORE_TERM") == "1":
        return
    while os.environ.get("HOLD") == "1" and not os.path.exists(f"{out}/{me}.release"):
        time.sleep(0.05)
    sys.exit(0)
signal.signal(signal.SIGTERM, term)
while True:
    time.sleep(0.1)
"""


def wait_for(what: str, check: Callable[[], Any], timeout: float = 120.0) -> Any:
    """The shared wait, with this file's longer default: control plane processes start cold."""
    return _wait_for(what, check, timeout)


def get(cluster, *args: str) -> Any:
    return json.loads(cluster.kubectl("get", *args, "-o", "json").stdout)


def exists(cluster, namespace: str, kind: str, name: str) -> bool:
    done = cluster.kubectl(
        "get", kind, name, "-n", namespace, "--ignore-not-found", "-o", "name", check=False
    )
    return bool(done.stdout.strip())


def apply(cluster, namespace: str, obj: dict) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=json.dumps(obj))


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def gpu_deployment(name: str, replicas: int, node_selector: dict) -> dict:
    """Pods of one GPU each that only kwok sees: not selected by the process-pod runner."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "nodeSelector": node_selector,
                    "containers": [
                        {
                            "name": "main",
                            "image": "registry.invalid/never-pulled",
                            "resources": {"requests": {GPU: 1}, "limits": {GPU: 1}},
                        }
                    ],
                },
            },
        },
    }


def process_pod(name: str, out: Path, node_selector: dict, *, grace: int = 30, **env: str) -> dict:
    variables = [
        {"name": "OUT", "value": str(out)},
        {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        *({"name": k, "value": v} for k, v in env.items()),
    ]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": dict(PROCESS_LABELS)},
        "spec": {
            "nodeSelector": node_selector,
            "terminationGracePeriodSeconds": grace,
            "containers": [
                {"name": "main", "image": "ignored", "command": ["python", "-c", PROGRAM], "env": variables}
            ],
        },
    }


def started(out: Path, name: str) -> dict:
    """What the pod's process recorded at its start (waits for it)."""
    path = out / f"{name}.json"
    wait_for(f"process of pod {name} to start", path.exists)
    return json.loads(path.read_text())


def pods(cluster, namespace: str, label: str) -> list[dict]:
    return get(cluster, "pods", "-n", namespace, "-l", label)["items"]


def test_server_reports_the_pinned_release(cluster):
    if cluster.provider != "local":
        pytest.skip(
            f"the pinned release is the local control plane's; a {cluster.provider} cluster runs its own"
        )
    version = json.loads(cluster.kubectl("version", "-o", "json").stdout)
    assert version["serverVersion"]["gitVersion"] == os.environ.get("GPUFLEET_K8S_VERSION", "v1.35.4")


def test_helm_reaches_the_cluster(cluster):
    assert cluster.helm("list", "--all-namespaces", "-o", "json").stdout.strip() == "[]"


def test_gpu_nodes_are_ready_with_gpu_capacity(cluster, gpu_nodes):
    gpu_nodes.add(2, gpus=2, product="NVIDIA-A100-SXM4-80GB")
    gpu_nodes.add(1, gpus=7, resource="nvidia.com/mig-1g.10gb")
    selector = ",".join(f"{k}={v}" for k, v in gpu_nodes.selector.items())
    nodes = {n["metadata"]["name"]: n for n in get(cluster, "nodes", "-l", selector)["items"]}
    assert sorted(nodes) == sorted(gpu_nodes.names)
    full, full2, mig = (nodes[name] for name in gpu_nodes.names)
    for node in (full, full2, mig):
        ready = [c for c in node["status"]["conditions"] if c["type"] == "Ready"]
        assert ready and ready[0]["status"] == "True"
        assert node["metadata"]["labels"]["type"] == "kwok"
    for node in (full, full2):
        assert node["status"]["allocatable"][GPU] == "2"
        assert node["metadata"]["labels"]["nvidia.com/gpu.product"] == "NVIDIA-A100-SXM4-80GB"
    assert mig["status"]["allocatable"]["nvidia.com/mig-1g.10gb"] == "7"
    assert GPU not in mig["status"]["allocatable"]
    # The session's shared pool is there too.
    assert get(cluster, "nodes", "-l", "gpufleet.dev/pool=default")["items"]


def test_gpus_bound_scheduling_and_a_new_node_takes_the_pending_pod(cluster, namespace, gpu_nodes):
    gpu_nodes.add(1, gpus=2)
    apply(cluster, namespace, gpu_deployment("three", 3, gpu_nodes.selector))

    def two_running_one_unschedulable():
        items = pods(cluster, namespace, "app=three")
        running = [p for p in items if p["status"].get("phase") == "Running"]
        pending = [
            c
            for p in items
            if p["status"].get("phase") == "Pending"
            for c in p["status"].get("conditions", [])
            if c["type"] == "PodScheduled" and c["status"] == "False" and c.get("reason") == "Unschedulable"
        ]
        return (len(running), len(pending)) == (2, 1) and pending[0]

    unschedulable = wait_for("2 pods Running and 1 Unschedulable", two_running_one_unschedulable)
    assert f"Insufficient {GPU}" in unschedulable["message"]

    new = gpu_nodes.add(1, gpus=1)[0]

    def all_running():
        items = pods(cluster, namespace, "app=three")
        return len(items) == 3 and all(p["status"].get("phase") == "Running" for p in items) and items

    placed = wait_for("the third pod to run on the new node", all_running)
    assert sorted(p["spec"]["nodeName"] for p in placed).count(new) == 1


def test_deleting_a_deployment_collects_its_replicaset_and_pods(cluster, namespace, gpu_nodes):
    gpu_nodes.add(1, gpus=2)
    apply(cluster, namespace, gpu_deployment("collected", 2, gpu_nodes.selector))
    wait_for("2 pods", lambda: len(pods(cluster, namespace, "app=collected")) == 2)
    assert get(cluster, "replicasets", "-n", namespace, "-l", "app=collected")["items"]

    cluster.kubectl("delete", "deployment", "collected", "-n", namespace, "--wait=false")

    wait_for(
        "the garbage collector to delete the ReplicaSet and its pods",
        lambda: (
            not get(cluster, "replicasets", "-n", namespace, "-l", "app=collected")["items"]
            and not pods(cluster, namespace, "app=collected")
        ),
    )


def test_process_pod_runs_its_command_with_the_kubelets_env(cluster, namespace, gpu_nodes, tmp_path):
    gpu_nodes.add(1)
    cluster.kubectl(
        "create",
        "secret",
        "generic",
        "broker",
        "-n",
        namespace,
        "--from-literal=url=redis://from-secret:6379/0",
    )
    pod = process_pod("envy", tmp_path, gpu_nodes.selector, GREETING="hello-$(POD)", ESCAPED="$$(POD)")
    container = pod["spec"]["containers"][0]
    container["env"].append(
        {"name": "BROKER", "valueFrom": {"secretKeyRef": {"name": "broker", "key": "url"}}}
    )
    container["args"] = ["--hostname", "$(POD)@gpufleet", "$(UNDEFINED)"]
    apply(cluster, namespace, pod)

    record = started(tmp_path, "envy")
    env = record["env"]
    assert env["BROKER"] == "redis://from-secret:6379/0"
    assert env["GREETING"] == "hello-envy"
    assert env["ESCAPED"] == "$(POD)"
    assert record["argv"] == ["--hostname", "envy@gpufleet", "$(UNDEFINED)"]
    assert env["HOSTNAME"] == "envy"
    assert cluster.runner.pids()[f"{namespace}/envy"] == record["pid"]
    # kwok reports it Running on its node; its output is kept.
    wait_for(
        "pod Running",
        lambda: get(cluster, "pod", "envy", "-n", namespace)["status"].get("phase") == "Running",
    )
    assert "started pid" in cluster.runner.logs()["podrunner"]


def test_a_process_that_exits_is_restarted(cluster, namespace, gpu_nodes, tmp_path):
    gpu_nodes.add(1)
    apply(cluster, namespace, process_pod("phoenix", tmp_path, gpu_nodes.selector, FAIL_FIRST="1"))
    started(tmp_path, "phoenix")
    assert (tmp_path / "phoenix.run0").exists() and (tmp_path / "phoenix.run1").exists()
    assert "exited with 3 (restartPolicy Always)" in cluster.runner.logs()["podrunner"]


def test_deleting_a_process_pod_sends_sigterm_and_waits_for_the_process(
    cluster, namespace, gpu_nodes, tmp_path
):
    gpu_nodes.add(1)
    apply(cluster, namespace, process_pod("graceful", tmp_path, gpu_nodes.selector, HOLD="1"))
    pid = started(tmp_path, "graceful")["pid"]

    cluster.kubectl("delete", "pod", "graceful", "-n", namespace, "--wait=false")
    wait_for("SIGTERM", (tmp_path / "graceful.term").exists)
    # The process has not finished: the pod stays, Terminating, as on a kubelet's node.
    assert alive(pid)
    pod = get(cluster, "pod", "graceful", "-n", namespace)
    assert pod["metadata"]["deletionTimestamp"]

    (tmp_path / "graceful.release").touch()
    wait_for(
        "the pod object to go once its process ended",
        lambda: not exists(cluster, namespace, "pod", "graceful"),
    )
    assert not alive(pid)


def test_a_process_ignoring_sigterm_is_killed_after_the_grace_period(cluster, namespace, gpu_nodes, tmp_path):
    grace = 3
    gpu_nodes.add(1)
    apply(
        cluster,
        namespace,
        process_pod("stubborn", tmp_path, gpu_nodes.selector, grace=grace, IGNORE_TERM="1"),
    )
    pid = started(tmp_path, "stubborn")["pid"]

    cluster.kubectl("delete", "pod", "stubborn", "-n", namespace, "--wait=false")
    wait_for("SIGTERM", (tmp_path / "stubborn.term").exists)
    term_at = time.monotonic()
    wait_for("the pod object to go", lambda: not exists(cluster, namespace, "pod", "stubborn"))
    # A lower bound only: the kill may come late on a loaded machine, never early.
    assert time.monotonic() - term_at >= grace - 0.5
    assert not alive(pid)
    assert (
        f"{namespace}/stubborn: still running after {grace}s: SIGKILL" in cluster.runner.logs()["podrunner"]
    )


def test_a_force_deleted_pods_process_still_gets_sigterm(cluster, namespace, gpu_nodes, tmp_path):
    gpu_nodes.add(1)
    apply(cluster, namespace, process_pod("forced", tmp_path, gpu_nodes.selector, grace=5))
    pid = started(tmp_path, "forced")["pid"]

    cluster.kubectl("delete", "pod", "forced", "-n", namespace, "--force", "--grace-period=0")
    assert not exists(cluster, namespace, "pod", "forced")
    wait_for("SIGTERM", (tmp_path / "forced.term").exists)
    wait_for("the process to end", lambda: not alive(pid))
