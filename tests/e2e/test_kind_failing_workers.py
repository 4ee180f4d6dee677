"""Worker pods that cannot start, on real nodes: three fleets of the chart's operator, one whose image cannot be
pulled, one whose celeryApp does not import (CrashLoopBackOff), one with an env var from a Secret key that does
not exist (CreateContainerConfigError). Each shows its cause on its GpuTaskQueue, holds its replicas while tasks
keep arriving, and once the cause is fixed (the image there, the app mended, the Secret created) runs every task.

Figures printed (run with -s or -rA): the seconds from a fleet's first task to its condition, and the replicas
each fleet held.
"""

from __future__ import annotations

import json
import time

import pytest
import redis
import yaml

import providers
from fleet import Tasks, queue_manifest
from kindfleet import installed, worker
from support import wait_for

pytestmark = pytest.mark.kind
FIRST_TASKS, MORE_TASKS = 1, 6
# A registry that does not exist (the .invalid domain never resolves): the kubelet's pull fails, as for an image
# never pushed. The fix puts the image into the nodes' containerd under that name, as a push or `kind load` would.
MISSING_REGISTRY = "registry.invalid/gpufleet"
TOKEN = {"name": "E2E_TOKEN", "valueFrom": {"secretKeyRef": {"name": "e2e-token", "key": "token"}}}
CAUSES = {"badimage": "ImagePullFailed", "badapp": "CrashLoopBackOff", "nosecret": "ContainerConfigError"}


@pytest.fixture(scope="module")
def gpufleet(cluster, crd):
    cluster.require(
        "has_project_images",
        "needs real containers: images pulled, apps that crash, Secrets the kubelet reads",
    )
    with installed(cluster, "kind-failing") as install:
        yield install


def apply_queue(install, name: str, queue: str, **overrides) -> None:
    scaling = {"targetWaitSeconds": 0, "maxReplicas": 4, "scaleDownStabilizationSeconds": 5,
               "idleSecondsBeforeZero": 5}  # fmt: skip
    manifest = yaml.safe_load(queue_manifest(name, "redis://unused", [queue], scaling=scaling))
    manifest["spec"]["broker"] = install.broker()
    manifest["spec"]["worker"] |= overrides
    install.kubectl.apply(yaml.safe_dump(manifest))


def warnings(kubectl, name: str, reason: str) -> list[dict]:
    return [e for e in kubectl.events(name) if e["type"] == "Warning" and e["reason"] == reason]


def test_workers_that_cannot_start_show_on_the_queue_hold_the_fleet_and_recover(cluster, gpufleet):
    kubectl = gpufleet.kubectl
    url = gpufleet.host_redis_url()
    redis.Redis.from_url(url).flushdb()
    image = cluster.images["worker"]
    missing = f"{MISSING_REGISTRY}/{image}"
    good = worker(cluster)
    overrides = {
        "badimage": {**good, "image": missing, "imagePullPolicy": "IfNotPresent"},
        "badapp": {**good, "celeryApp": "e2e_app_nowhere:app"},
        "nosecret": {**good, "env": [*good["env"], TOKEN]},
    }
    tasks = {name: Tasks(url, f"gpu-{name}") for name in CAUSES}
    try:
        for name, worker_spec in overrides.items():
            apply_queue(gpufleet, name, tasks[name].queue, **worker_spec)
        for name in CAUSES:
            wait_for(f"the {name} Deployment", lambda n=name: kubectl.get("deployment", f"{n}-workers"))

        # The first tasks: each fleet scales up, its pods fail, and the queue says why.
        first: dict[str, float] = {}
        for name in CAUSES:
            tasks[name].send(FIRST_TASKS, seconds=0.5, prefix=f"{name}-")
            first[name] = time.monotonic()
        shown: dict[str, float] = {}
        held: dict[str, int] = {}

        def conditions_shown():
            for name, reason in CAUSES.items():
                if name not in shown and kubectl.condition(name, "WorkersFailing").get("reason") == reason:
                    shown[name] = time.monotonic() - first[name]
                    held[name] = kubectl.replicas(f"{name}-workers")
            return len(shown) == len(CAUSES)

        wait_for("each fleet's WorkersFailing condition", conditions_shown, timeout=90, every=0.5,
                 show=lambda: {n: kubectl.condition(n, "WorkersFailing") for n in CAUSES})  # fmt: skip
        for name, reason in CAUSES.items():
            ready = kubectl.condition(name, "Ready")
            assert (ready["status"], ready["reason"]) == ("False", reason), ready
            message = kubectl.condition(name, "WorkersFailing")["message"]
            assert f"{name}-workers-" in message and "To fix:" in message, message
            assert held[name] >= 1
        assert "e2e_app_nowhere" in kubectl.condition("badapp", "WorkersFailing")["message"]
        assert "e2e-token" in kubectl.condition("nosecret", "WorkersFailing")["message"]
        assert missing in kubectl.condition("badimage", "WorkersFailing")["message"]

        # More tasks arrive: no fleet asks for more pods than it held when its cause showed.
        for name in CAUSES:
            tasks[name].send(MORE_TASKS, seconds=0.5, prefix=f"{name}-more-")
        wait_for("the new tasks seen", lambda: all(
            kubectl.status(n).get("queued", 0) >= FIRST_TASKS + MORE_TASKS for n in CAUSES), timeout=60)  # fmt: skip
        seen = {name: set() for name in CAUSES}
        deadline = time.monotonic() + 15  # a few dozen polls of each fleet
        while time.monotonic() < deadline:
            for name in CAUSES:
                seen[name].add(kubectl.replicas(f"{name}-workers"))
            time.sleep(0.5)
        assert seen == {name: {held[name]} for name in CAUSES}, (seen, held)
        for name, reason in CAUSES.items():
            assert kubectl.condition(name, "ScalingLimited")["reason"] == "WorkersFailing"
            assert kubectl.status(name)["workers"] == f"0/{held[name]}"
            # One Warning for the episode, naming a pod and its state, however many polls saw it.
            (event,) = warnings(kubectl, name, reason)
            assert event.get("count", 1) == 1 and f"{name}-workers-" in event["message"], event
        table = kubectl.run("get", "gtq").stdout
        assert "WORKERS" in table.splitlines()[0], table
        print(f"\n{table}")
        print(kubectl.run("describe", "gtq", "badapp").stdout)

        # The causes fixed, each the way a user would.
        fixed = time.monotonic()
        nodes = providers._run(str(providers._kind_program()), "get", "nodes", "--name", providers.KIND_NAME)
        for node in nodes.split():
            providers._run("docker", "exec", node, "ctr", "-n", "k8s.io", "images", "tag", "--force",
                           providers._qualified(image), missing)  # fmt: skip
        kubectl.run("create", "secret", "generic", "e2e-token", "--from-literal=token=t0ken")
        kubectl.run("patch", "gtq", "badapp", "--type=merge", "-p",
                    json.dumps({"spec": {"worker": {"celeryApp": "e2e_app:app"}}}))  # fmt: skip

        back: dict[str, float] = {}

        def all_done():
            for name in CAUSES:
                if name not in back and tasks[name].all_done():
                    back[name] = time.monotonic() - fixed
            return len(back) == len(CAUSES)

        wait_for("every task done once the causes are fixed", all_done, timeout=420, every=1,
                 show=lambda: {n: (kubectl.status(n).get("workers"), kubectl.condition(n, "WorkersFailing"))
                               for n in CAUSES})  # fmt: skip
        # The three fleets' workers leave their traces in one list: every task of each, each run once.
        sent = sorted(marker for t in tasks.values() for marker in t.sent)
        assert tasks["badapp"].duplicates() == {}, "a task ran twice"
        assert sorted(tasks["badapp"].done()) == sent, "a task was lost"
        for name in CAUSES:
            wait_for(f"{name}: WorkersFailing cleared", lambda n=name: (
                kubectl.condition(n, "WorkersFailing").get("status") == "False"
                and kubectl.condition(n, "Ready").get("status") == "True"), timeout=300)  # fmt: skip
        print("\ncause             first task -> condition   replicas held   fix -> all tasks done")
        for name, reason in CAUSES.items():
            print(f"{reason:<20} {shown[name]:>8.1f} s {held[name]:>16} {back[name]:>18.1f} s")
    finally:
        for t in tasks.values():
            t.close()
        to_zero = json.dumps({"spec": {"scaling": {"minReplicas": 0, "idleSecondsBeforeZero": 0}}})
        for name in CAUSES:
            kubectl.run("patch", "gtq", name, "--type=merge", "-p", to_zero, check=False)
    gpufleet.wait_workers_gone(timeout=240)
    gpufleet.assert_healthy()
