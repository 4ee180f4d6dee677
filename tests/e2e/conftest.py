"""Fixtures of the e2e suite: one real cluster per session (see providers.py), a namespace per test, GPU nodes
per test, and the cluster's logs printed under any test that fails.

Every test collected under tests/e2e is marked `cluster`: `pytest -m "not cluster"` leaves them out. A test that
only makes sense on one provider is skipped on the other, with the reason (see SKIPS_ON_KIND and `kind`).
"""

from __future__ import annotations

import re
import time
import uuid
from pathlib import Path

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

import providers
from fleet import Operator, apply_crd
from support import Kubectl

HERE = Path(__file__).resolve().parent


# On kind, pods are containers in the kind nodes' network: what these fixtures give a test is not there.
SKIPS_ON_KIND = {
    "gpu_nodes": "adds kwok GPU nodes of its own; kind's nodes are real: runs on the local control plane",
    "redis_url": "its fleets' Redis is on this machine's loopback, out of reach of pods in kind's nodes: runs on "
    "the local control plane (tests/e2e/test_kind_*.py run the chart's Redis in the cluster)",
    "operator": "runs the operator as a process on this machine: runs on the local control plane "
    "(tests/e2e/test_kind_*.py run the operator's image)",
}
KIND_ONLY = "needs pods that run containers (images, probes, signals): runs on kind (make e2e-kind)"
# What kube-apiserver alone decides: kind's control-plane node runs the very kube-apiserver binary the local control
# plane runs (hack/kind-node-image.sh makes its image from it), so running it again there proves nothing more.
APISERVER_ONLY = (
    "checks what kube-apiserver alone decides; kind's node runs the same binary: runs on the local provider"
)


def pytest_collection_modifyitems(config, items):
    provider = providers.selected()
    for item in items:
        if HERE not in Path(str(item.path)).resolve().parents:
            continue
        item.add_marker(pytest.mark.cluster)
        if not providers.CAPABILITIES[provider].runs_containers and item.get_closest_marker("kind"):
            item.add_marker(pytest.mark.skip(reason=KIND_ONLY))
        if provider != "kind":
            continue
        if "cluster" not in item.fixturenames:
            item.add_marker(
                pytest.mark.skip(reason="starts a local cluster of its own: runs in the local session")
            )
        if item.get_closest_marker("apiserver"):
            item.add_marker(pytest.mark.skip(reason=APISERVER_ONLY))
            continue
        for fixture, reason in SKIPS_ON_KIND.items():
            if fixture in item.fixturenames:
                item.add_marker(pytest.mark.skip(reason=reason))
                break


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    # Read by _logs_on_failure: whether this test's setup or call failed.
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture(scope="session")
def cluster():
    """The session's cluster (providers.Cluster): kubeconfig, env, kubectl(), helm(), api, add_gpu_node(),
    remove_node(), runner, logs()."""
    started = time.monotonic()
    cluster = providers.start()
    print(f"e2e cluster ({cluster.provider}) ready in {time.monotonic() - started:.1f}s")
    yield cluster
    cluster.close()


@pytest.fixture(autouse=True)
def _logs_on_failure(request):
    yield
    if "cluster" not in request.fixturenames:
        return
    reports = [getattr(request.node, f"report_{when}", None) for when in ("setup", "call")]
    if any(r is not None and r.failed for r in reports):
        # Printed in teardown: pytest shows it under the failed test's report.
        print(request.getfixturevalue("cluster").logs())


@pytest.fixture
def cluster_env(cluster):
    """The environment for a subprocess that must reach the test cluster and only it."""
    return dict(cluster.env)


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")[:40].strip("-")


@pytest.fixture
def namespace(cluster, request):
    """A fresh namespace for one test, with its default ServiceAccount (pods are refused without it); deleted
    after the test, once its pods (and their processes) are gone."""
    name = f"{_slug(request.node.name)}-{uuid.uuid4().hex[:5]}"
    core = client.CoreV1Api(cluster.api)
    core.create_namespace({"metadata": {"name": name, "labels": {"gpufleet.dev/e2e": "true"}}})
    deadline = time.monotonic() + 60
    while True:
        try:
            core.read_namespaced_service_account("default", name)
            break
        except ApiException as exc:
            if exc.status != 404 or time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    yield name
    core.delete_namespace(name)
    # Wait for its pods (and so their processes) to be gone, not for the namespace itself: the namespace
    # controller keeps every namespace at least 5 s more, for its caches' sake.
    deadline = time.monotonic() + 180
    while core.list_namespaced_pod(name).items:
        if time.monotonic() > deadline:
            print(f"namespace {name}: pods still there 180 s after its deletion")
            return
        time.sleep(0.2)


class NodePool:
    """Fake GPU nodes of one test's own pool: `selector` is a nodeSelector matching them and nothing else."""

    def __init__(self, cluster: providers.Cluster, name: str):
        self.cluster = cluster
        self.selector = {"gpufleet.dev/pool": name}
        self.names: list[str] = []

    def add(self, count: int = 1, **options) -> list[str]:
        """`count` more nodes, each Ready when this returns; options as Cluster.add_gpu_node (gpus=, ...)."""
        labels = {**options.pop("labels", {}), **self.selector}
        names = [self.cluster.add_gpu_node(labels=labels, **options) for _ in range(count)]
        self.names += names
        return names

    def remove(self, name: str, *, drain: bool = True) -> None:
        self.cluster.remove_node(name, drain=drain)
        self.names.remove(name)


@pytest.fixture
def gpu_nodes(cluster, request):
    """An empty NodePool for this test; its nodes are removed after it (their pods drained first)."""
    pool = NodePool(cluster, f"{_slug(request.node.name)[:40]}-{uuid.uuid4().hex[:5]}")
    yield pool
    for name in list(pool.names):
        pool.remove(name)


# ---- gpufleet's own: the CRD, kubectl in the test's namespace, the operator as a process ----------------------


@pytest.fixture(scope="session")
def crd(cluster):
    apply_crd(cluster.env)


@pytest.fixture
def kubectl(cluster_env, namespace, crd):
    return Kubectl("kubectl", cluster_env, namespace)


@pytest.fixture
def operator(cluster_env, namespace, crd, tmp_path):
    """`python -m gpufleet run` watching this test's namespace; its log is printed after the test."""
    op = Operator(cluster_env, namespace, tmp_path).start()
    yield op
    op.stop()
    print(f"--- operator log ({namespace}) ---\n{op.log()[-6000:]}")
    op.assert_no_traceback()
