"""A user's own Celery app on a fleet, end to end on kind, and the chart's first steps as its NOTES write them.

examples/user-app (the shop) is built as its README says, FROM the CPU worker image, and loaded into the nodes;
its GpuTaskQueue is applied as the example writes it, with this cluster's broker and image and `gpus: 0` (the
example's CPU trial). Its producer runs as a user runs it: plain Celery with Celery's defaults, on this machine
through a NodePort to the chart's Redis, in an interpreter where neither gpufleet nor msgpack can be imported,
so every result it reads came back as JSON. Each test checks every result and watches the fleet return to zero.

The chart is installed with the shop's image as `workerImage`; the NOTES' first queue, the pod that sends it a
task, and the command that shows its result then run as the NOTES print them.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
import time
import uuid

import pytest
import yaml

import providers
from fleet import ROOT
from kindfleet import Install, pods, restricted_namespace
from support import wait_for

pytestmark = pytest.mark.kind

EXAMPLE = ROOT / "examples" / "user-app"
# The tag ends in "-cpu", the CPU variant's suffix: the NOTES' first queue, given this image, asks for no GPU.
IMAGE = "gpufleet-shop:e2e-cpu"
# The producer as a user without gpufleet runs it: neither gpufleet's packages nor msgpack can be imported.
PLAIN_PYTHON = """
import faulthandler, runpy, sys
faulthandler.dump_traceback_later(270, exit=True)  # where it waits, should it wait too long
sys.modules.update(dict.fromkeys(["gpufleet", "gpufleet_worker", "gpufleet_tools", "msgpack"], None))
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.fixture(scope="module")
def image(cluster):
    cluster.require(
        "has_project_images", "builds an image on the project's worker image and loads it into the nodes"
    )
    started = time.monotonic()
    base = providers.SOURCE_IMAGES["worker"]
    run("docker", "build", "-q", "-t", IMAGE, "--build-arg", f"WORKER_IMAGE={base}", str(EXAMPLE))
    kind_bin = run(str(ROOT / "hack" / "build-k8s.sh"), "--kind", "--print").strip()
    run(f"{kind_bin}/kind", "load", "docker-image", "--name", providers.KIND_NAME, IMAGE)
    print(f"{IMAGE} built FROM {base} and loaded in {time.monotonic() - started:.1f}s")
    return IMAGE


@pytest.fixture(scope="module")
def release(cluster, crd, image):
    """The chart in a restricted namespace, with its Redis, its first queue's image the shop's (CPU) image; the
    NOTES helm printed."""
    suffix = uuid.uuid4().hex[:5]
    namespace = restricted_namespace(cluster, f"kind-shop-{suffix}")
    install = Install(cluster, namespace, release=f"gf-{suffix}")
    try:
        notes = install.install("--set", "crds.install=false", "--set", f"workerImage={image}")
        yield install, notes
    finally:
        install.uninstall()
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


@pytest.fixture(scope="module")
def shop(release, cluster, image):
    """The example's GpuTaskQueue, as written but for this cluster's broker and image, and `gpus: 0`."""
    install, _ = release
    queue = yaml.safe_load((EXAMPLE / "gputaskqueue.yaml").read_text())
    spec = queue["spec"]
    assert spec["worker"]["celeryApp"] == "shop.tasks:app" and spec["queues"] == ["shop"], spec
    spec["broker"] = install.broker()
    spec["worker"] |= {"image": image, "imagePullPolicy": "Never", "gpus": 0}
    # Back to zero soon after a burst, so that the test sees it.
    spec["scaling"] |= {"maxReplicas": 2, "idleSecondsBeforeZero": 5, "scaleDownStabilizationSeconds": 5}
    install.kubectl.apply(yaml.safe_dump(queue))
    wait_for("the shop's Deployment", lambda: install.kubectl.get("deployment", "shop-workers"))
    return install


def run(*argv: str, timeout: float = 600) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(argv)} exited {done.returncode}:\n{done.stderr[-4000:]}"
    return done.stdout


def produce(install: Install, *args: str) -> tuple[dict, int]:
    """Run the example's producer (--json) to its end; return what it printed and the most shop workers seen
    while it ran."""
    env = {k: v for k, v in os.environ.items() if k not in ("RESULT_BACKEND", "SHOP_QUEUE")}
    env["BROKER_URL"] = install.host_redis_url()
    producer = [str(EXAMPLE / "producer.py"), *args, "--json", "--timeout", "240"]
    argv = [sys.executable, "-c", PLAIN_PYTHON, *producer]
    most = 0
    with subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        deadline = time.monotonic() + 300
        while proc.poll() is None and time.monotonic() < deadline:
            most = max(most, install.kubectl.replicas("shop-workers") or 0)
            time.sleep(0.5)
        if proc.poll() is None:
            proc.kill()
        out, err = proc.communicate()
    shown = err if len(err) < 8000 else f"{err[:4000]}\n...\n{err[-4000:]}"
    assert proc.returncode == 0, f"the producer exited {proc.returncode}:\n{shown}"
    return json.loads(out.splitlines()[-1]), most


def expected(baskets: list) -> list[int]:
    return [sum(p * q for p, q in zip(prices, quantities, strict=True)) for prices, quantities in baskets]


def back_to_zero(cluster, install: Install) -> None:
    kubectl = install.kubectl
    wait_for("the shop's fleet at zero replicas", lambda: kubectl.replicas("shop-workers") == 0, timeout=120)
    wait_for("no shop worker pod", lambda: not pods(cluster, install.namespace, "shop"), timeout=120)
    reasons = {e["reason"] for e in kubectl.events("shop")}
    assert {"ScaledUp", "ScaledDown"} <= reasons, reasons
    install.assert_healthy()


def test_a_burst_from_a_plain_producer_runs_the_users_tasks_and_the_fleet_returns_to_zero(cluster, shop):
    assert shop.kubectl.replicas("shop-workers") == 0
    out, most = produce(shop, "--burst", "60", "--seed", "1")
    assert len(out["baskets"]) == 60
    assert out["totals"] == expected(out["baskets"])
    back_to_zero(cluster, shop)
    print(f"burst: 60 baskets, every total right, at most {most} shop workers")


def test_a_group_of_200_then_a_chord_through_the_users_app(cluster, shop):
    wait_for("the shop's fleet at zero", lambda: shop.kubectl.replicas("shop-workers") == 0, timeout=120)
    out, most = produce(shop, "--fan-out", "200", "--seed", "2")
    want = expected(out["baskets"])
    assert len(want) == 200
    assert out["totals"] == want, "the group's results"
    assert out["chord_totals"] == want, "the chord's parts"
    assert out["summary"] == {"baskets": 200, "cents": sum(want)}, "the chord's fan-in"
    back_to_zero(cluster, shop)
    print(f"fan-out: a group of 200 and a chord of 200, every result right, at most {most} shop workers")


def notes_heredoc(notes: str, kind: str) -> str:
    """The NOTES' `kubectl apply -f - <<'YAML'` command whose manifest is of `kind`, dedented as pasted."""
    opener = "  kubectl apply -f - <<'YAML'\n"
    at = 0
    while (at := notes.find(opener, at)) >= 0:
        end = notes.index("\n  YAML\n", at) + len("\n  YAML\n")
        command = notes[at:end]
        if f"\n  kind: {kind}\n" in command:
            return textwrap.dedent(command)
        at = end
    raise AssertionError(f"no {kind} in the NOTES")


def notes_line(notes: str, words: str) -> str:
    return next(line.strip() for line in notes.splitlines() if words in line)


def test_the_notes_first_queue_and_first_task_work_as_written(cluster, release, image):
    install, notes = release

    def shell(command: str, timeout: float = 120) -> str:
        done = subprocess.run(["bash", "-c", command], env=cluster.env, capture_output=True, text=True,
                              timeout=timeout)  # fmt: skip
        assert done.returncode == 0, f"{command}\nexited {done.returncode}:\n{done.stdout}\n{done.stderr}"
        return done.stdout

    queue = notes_heredoc(notes, "GpuTaskQueue")
    first = yaml.safe_load(queue.split("\n", 1)[1].rsplit("YAML", 1)[0])
    assert first["spec"]["queues"] == ["celery"], "Celery's default queue, where a plain app sends"
    assert first["spec"]["worker"]["gpus"] == 0 and first["spec"]["worker"]["image"] == image
    shell(queue)
    shell(notes_heredoc(notes, "Pod"))
    # The result's command, as written: it waits for the pod, which waits for the fleet's first worker.
    log = shell(notes_line(notes, "logs first-task"), timeout=400)
    result = next(line.split(" ", 1)[1] for line in log.splitlines() if line.startswith("result "))
    assert ast.literal_eval(result) == [[19, 22], [43, 50]], log
    install.kubectl.run("delete", "pod/first-task", "gtq/first", "--wait=true")
    wait_for(
        "the first queue's workers gone", lambda: not pods(cluster, install.namespace, "first"), timeout=120
    )
    install.assert_healthy()
