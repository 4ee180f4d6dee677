"""Both installs on the real control plane: `helm install` of charts/gpufleet and `kubectl apply -f manifests/`.

The operator pod runs as a process pod (the runner selects it by app.kubernetes.io/name=gpufleet and
app.kubernetes.io/component=operator) from this virtualenv, and with a token of the chart's own ServiceAccount:
whatever it does here, it does with exactly the RBAC the chart grants. A 403 anywhere fails the test.
"""

from __future__ import annotations

import contextlib
import json
import stat
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml

from support import free_port, wait_for

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "gpufleet"
MANIFESTS = ROOT / "manifests"
CRD = "customresourcedefinition/gputaskqueues.gpufleet.dev"
OPERATOR = "app.kubernetes.io/name=gpufleet,app.kubernetes.io/component=operator"
# Not a bare "403": log timestamps carry milliseconds.
FORBIDDEN = ("(403)", "Forbidden", "forbidden", "Not enough permissions")


def http_get(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.read().decode()
    except OSError:
        return None


def objects(cluster, *args) -> list[dict]:
    return json.loads(cluster.kubectl("get", *args, "-o", "json").stdout)["items"]


def service_account_kubeconfig(cluster, namespace: str, name: str, path: Path) -> Path:
    """A kubeconfig that authenticates as the ServiceAccount: the operator's in-cluster identity, out of cluster."""
    token = cluster.kubectl("create", "token", name, "-n", namespace, "--duration=2h").stdout.strip()
    admin = json.loads(cluster.kubectl("config", "view", "--raw", "--minify", "-o", "json").stdout)
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": admin["clusters"],
        "users": [{"name": name, "user": {"token": token}}],
        "contexts": [{"name": name, "context": {"cluster": admin["clusters"][0]["name"], "user": name}}],
        "current-context": name,
    }
    path.write_text(yaml.safe_dump(config))
    return path


@contextlib.contextmanager
def as_its_service_account(cluster, namespace: str, directory: Path, extra: dict[str, str] | None = None):
    """The operator pods the runner starts in `namespace` reach the API with a token of their pod's
    ServiceAccount (as in a cluster), not the admin's kubeconfig; `extra` is added to their environment."""
    original = cluster.runner.env_overlay

    def overlay(pod):
        base = dict(original(pod) if callable(original) else original)
        labels = pod["metadata"].get("labels") or {}
        if (
            pod["metadata"]["namespace"] != namespace
            or labels.get("app.kubernetes.io/component") != "operator"
        ):
            return base
        account = pod["spec"]["serviceAccountName"]
        kubeconfig = service_account_kubeconfig(
            cluster, namespace, account, directory / f"{account}.kubeconfig"
        )
        env = {**base, "KUBECONFIG": str(kubeconfig)}
        for key, value in (extra or {}).items():
            env[key] = value.replace("$PATH", base.get("PATH", ""))
        return env

    cluster.runner.env_overlay = overlay
    try:
        yield
    finally:
        cluster.runner.env_overlay = original


def restricted(cluster, namespace: str) -> None:
    """Enforce the restricted Pod Security Standard in the namespace, and check that the API server does."""
    cluster.kubectl(
        "label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted", "--overwrite"
    )
    probe = cluster.kubectl(
        "run", "privileged", "-n", namespace, "--image=busybox", "--dry-run=server",
        "--overrides", '{"spec": {"containers": [{"name": "privileged", "image": "busybox", '
        '"securityContext": {"privileged": true}}]}}',
        check=False,
    )  # fmt: skip
    assert probe.returncode != 0 and "violates PodSecurity" in probe.stderr, probe.stderr


def adopt_crd(cluster, release: str, namespace: str) -> None:
    """Let `release` take over the CRD if an earlier install left it (it is kept on uninstall, by design), the
    way a user would: Helm adopts an object that carries its release's annotations."""
    if cluster.kubectl("get", CRD, check=False).returncode != 0:
        return
    cluster.kubectl(
        "annotate", CRD, "--overwrite",
        f"meta.helm.sh/release-name={release}", f"meta.helm.sh/release-namespace={namespace}",
    )  # fmt: skip
    cluster.kubectl("label", CRD, "--overwrite", "app.kubernetes.io/managed-by=Helm")


def operator_pod(cluster, namespace: str) -> dict:
    def running():
        pods = [
            p
            for p in objects(cluster, "pods", "-n", namespace, "-l", OPERATOR)
            if "deletionTimestamp" not in p["metadata"]
        ]
        if len(pods) == 1 and f"{namespace}/{pods[0]['metadata']['name']}" in cluster.runner.pids():
            return pods[0]
        return None

    return wait_for("the operator pod running as a process", running, timeout=120)


def operator_log(cluster, pod: dict) -> str:
    return cluster.runner.pod_log(pod["metadata"]["namespace"], pod["metadata"]["name"])


def assert_no_forbidden(cluster, pod: dict) -> None:
    log = operator_log(cluster, pod)
    denied = [line for line in log.splitlines() if any(word in line for word in FORBIDDEN)]
    assert denied == [], "the operator was refused something it needs:\n" + "\n".join(denied[:20])


def queue(name: str, namespace: str, *, broker: dict | None = None) -> str:
    """A GpuTaskQueue that needs no worker pod: minReplicas 0 and an unreachable broker hold it at zero."""
    return yaml.safe_dump(
        {
            "apiVersion": "gpufleet.dev/v1alpha1",
            "kind": "GpuTaskQueue",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "broker": broker or {"url": "redis://127.0.0.1:1/0"},
                "queues": [name],
                "worker": {"image": "gpufleet-worker:e2e", "gpus": 1},
                "scaling": {"minReplicas": 0, "maxReplicas": 2},
            },
        }
    )


def reconciled(cluster, namespace: str, name: str, timeout: float = 60) -> dict:
    """The worker Deployment of a GpuTaskQueue, once the operator has applied it and written the status."""

    def done():
        deployments = objects(cluster, "deployments", "-n", namespace, "-l", f"gpufleet.dev/fleet={name}")
        status = json.loads(cluster.kubectl("get", "gtq", name, "-n", namespace, "-o", "json").stdout).get(
            "status"
        )
        return deployments[0] if deployments and status and status.get("conditions") else None

    deployment = wait_for(f"the operator to reconcile {namespace}/{name}", done, timeout=timeout)
    (owner,) = deployment["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"]) == ("GpuTaskQueue", name)
    return deployment


def notes_queue(helm_output: str) -> str:
    """The first GpuTaskQueue that NOTES.txt tells the user to apply."""
    start = helm_output.index("<<'YAML'\n") + len("<<'YAML'\n")
    body = helm_output[start : helm_output.index("  YAML\n", start)]
    return "\n".join(line[2:] for line in body.splitlines())


# ---- kubectl auth can-i, as the operator's ServiceAccount ------------------------------------------------------

# (verb, resource, namespace key, subresource): "watched" is a namespace the operator serves, "other" one it
# does not, None the whole cluster.
NEEDED = [
    *[(v, "customresourcedefinitions.apiextensions.k8s.io", None, "") for v in ("list", "watch")],
    *[(v, "gputaskqueues.gpufleet.dev", "watched", "") for v in ("get", "list", "watch", "patch")],
    *[(v, "gputaskqueues.gpufleet.dev", "watched", "status") for v in ("get", "patch", "update")],
    ("update", "gputaskqueues.gpufleet.dev", "watched", "finalizers"),
    *[(v, "deployments.apps", "watched", "") for v in ("get", "list", "watch", "create", "patch", "update")],
    *[(v, "pods", "watched", "") for v in ("get", "list", "watch", "patch")],
    *[(v, "poddisruptionbudgets.policy", "watched", "") for v in ("get", "create", "patch")],
    ("get", "secrets/broker", "watched", ""),
    *[(v, "events", "watched", "") for v in ("create", "patch")],
]
NEVER = [
    ("delete", "nodes", None, ""),
    ("get", "nodes", None, ""),
    ("create", "customresourcedefinitions.apiextensions.k8s.io", None, ""),
    ("delete", "customresourcedefinitions.apiextensions.k8s.io", None, ""),
    ("create", "clusterroles.rbac.authorization.k8s.io", None, ""),
    ("create", "rolebindings.rbac.authorization.k8s.io", "watched", ""),
    ("impersonate", "serviceaccounts", "watched", ""),
    ("create", "serviceaccounts", "watched", "token"),
    ("create", "gputaskqueues.gpufleet.dev", "watched", ""),
    ("delete", "gputaskqueues.gpufleet.dev", "watched", ""),
    ("delete", "deployments.apps", "watched", ""),
    ("delete", "poddisruptionbudgets.policy", "watched", ""),
    ("create", "pods", "watched", ""),
    ("delete", "pods", "watched", ""),
    ("create", "pods", "watched", "exec"),
    ("list", "secrets", "watched", ""),
    ("watch", "secrets", "watched", ""),
    ("create", "secrets", "watched", ""),
    ("get", "configmaps", "watched", ""),
]
# Only where the operator serves a list of namespaces.
NAMESPACED_ONLY = {
    "allowed": [(v, "namespaces", None, "") for v in ("list", "watch")],
    "denied": [
        ("get", "secrets/broker", "other", ""),
        ("get", "secrets/other", "watched", ""),
        ("list", "gputaskqueues.gpufleet.dev", "other", ""),
        ("patch", "deployments.apps", "other", ""),
        ("list", "pods", "other", ""),
        ("create", "events", "other", ""),
        ("list", "gputaskqueues.gpufleet.dev", "--all-namespaces", ""),
    ],
}
CLUSTER_WIDE_ONLY = {
    "allowed": [
        ("get", "secrets/broker", "other", ""),
        ("list", "gputaskqueues.gpufleet.dev", "--all-namespaces", ""),
    ],
    "denied": [(v, "namespaces", None, "") for v in ("list", "watch")],
}


def can_i(cluster, subject: str, verb: str, resource: str, namespace: str | None, subresource: str) -> bool:
    args = ["auth", "can-i", verb, resource, f"--as={subject}"]
    if namespace == "--all-namespaces":
        args.append(namespace)
    elif namespace:
        args += ["-n", namespace]
    if subresource:
        args.append(f"--subresource={subresource}")
    done = cluster.kubectl(*args, check=False)
    assert done.stdout.strip() in ("yes", "no"), done.stdout + done.stderr
    return done.stdout.strip() == "yes"


def assert_rbac(cluster, subject: str, namespaces: dict[str, str], extra: dict) -> None:
    """Every needed right granted, every other one refused; a failure lists the whole wrong part of the table."""
    wrong = []
    for expected, rows in ((True, NEEDED + extra["allowed"]), (False, NEVER + extra["denied"])):
        for verb, resource, where, subresource in rows:
            namespace = namespaces.get(where, where)
            if can_i(cluster, subject, verb, resource, namespace, subresource) != expected:
                wrong.append(f"{'allowed' if not expected else 'denied'}: {verb} {resource}"
                             f"{'/' + subresource if subresource else ''} in {namespace or 'the cluster'}")  # fmt: skip
    assert wrong == [], "RBAC differs from the table:\n" + "\n".join(wrong)


# ---- helm ------------------------------------------------------------------------------------------------------


class Release:
    def __init__(self, cluster, namespace: str):
        self.cluster = cluster
        self.namespace = namespace
        self.name = f"gf-{uuid.uuid4().hex[:6]}"
        self.fullname = f"{self.name}-gpufleet"
        self.subject = f"system:serviceaccount:{namespace}:{self.fullname}"
        self.metrics_port, self.liveness_port = free_port(), free_port()
        # The image is not run here: this virtualenv's python (first on the runner's PATH) plays it.
        self.args = [
            "--namespace", namespace, "--wait", "--timeout", "180s",
            "--set", "command={python,-m,gpufleet}",
            "--set", f"metrics.port={self.metrics_port}",
            "--set", f"livenessPort={self.liveness_port}",
        ]  # fmt: skip

    def helm(self, *args: str, check: bool = True):
        return self.cluster.helm(*args, check=check)

    def install(self, *args: str) -> str:
        return self.helm("install", self.name, str(CHART), *self.args, *args).stdout

    def uninstall(self) -> None:
        self.helm("uninstall", self.name, "--namespace", self.namespace, "--wait", check=False)

    def leftovers(self) -> list[str]:
        selector = f"app.kubernetes.io/instance={self.name}"
        found = objects(
            self.cluster,
            "all,configmaps,secrets,serviceaccounts,roles,rolebindings,networkpolicies",
            "-A",
            "-l",
            selector,
        )
        found += objects(self.cluster, "clusterroles,clusterrolebindings", "-l", selector)
        return [f"{o['kind']} {o['metadata'].get('namespace', '')}/{o['metadata']['name']}" for o in found]


@pytest.fixture
def release(cluster, namespace, tmp_path):
    restricted(cluster, namespace)
    rel = Release(cluster, namespace)
    with as_its_service_account(cluster, namespace, tmp_path):
        yield rel
        rel.uninstall()


def test_helm_install_upgrade_uninstall(cluster, release, namespace):
    """Cluster-wide: install, the NOTES' first queue reconciled, RBAC as the table, upgrade, uninstall."""
    adopt_crd(cluster, release.name, namespace)
    output = release.install()

    crd = json.loads(cluster.kubectl("get", CRD, "-o", "json").stdout)
    assert crd["metadata"]["annotations"]["meta.helm.sh/release-name"] == release.name
    assert any(c["type"] == "Established" and c["status"] == "True" for c in crd["status"]["conditions"])
    pod = operator_pod(cluster, namespace)
    assert pod["spec"]["serviceAccountName"] == release.fullname
    metrics = wait_for(
        "the operator's metrics", lambda: http_get(f"http://127.0.0.1:{release.metrics_port}/metrics")
    )
    assert "gpufleet_probe_seconds_count" in metrics
    wait_for("kopf's /healthz", lambda: http_get(f"http://127.0.0.1:{release.liveness_port}/healthz"))

    # What NOTES.txt tells the user to do works as written.
    first = yaml.safe_load(notes_queue(output))
    assert first["metadata"]["namespace"] == namespace
    cluster.kubectl("apply", "-f", "-", stdin=notes_queue(output))
    deployment = reconciled(cluster, namespace, "first")
    assert deployment["spec"]["replicas"] == 0

    assert_rbac(cluster, release.subject, {"watched": namespace, "other": "kube-system"}, CLUSTER_WIDE_ONLY)

    # Upgrade to namespaced RBAC with the bundled Redis: the ClusterRoles it no longer needs go, the operator is
    # replaced (Recreate) and serves its namespace with the Roles alone.
    before = pod["metadata"]["uid"]
    release.helm(
        "upgrade", release.name, str(CHART), *release.args, "--reuse-values",
        "--set", f"rbac.namespaces={{{namespace}}}", "--set", "redis.enabled=true",
    )  # fmt: skip
    pod = operator_pod(cluster, namespace)
    assert pod["metadata"]["uid"] != before
    assert f"--namespace={namespace}" in pod["spec"]["containers"][0]["args"]
    kinds = {
        (o["kind"], o["metadata"]["name"])
        for o in objects(cluster, "clusterroles", "-l", f"app.kubernetes.io/instance={release.name}")
    }
    assert kinds == {("ClusterRole", f"{release.fullname}-kopf")}
    assert objects(cluster, "roles", "-n", namespace, "-l", f"app.kubernetes.io/instance={release.name}")
    cluster.kubectl("apply", "-f", "-", stdin=queue("second", namespace))
    reconciled(cluster, namespace, "second")
    assert_no_forbidden(cluster, pod)

    release.uninstall()
    wait_for("no object of the release left", lambda: release.leftovers() == [], timeout=60)
    wait_for(
        "the operator's process to end",
        lambda: not any(k.startswith(f"{namespace}/") for k in cluster.runner.pids()),
    )
    # Kept by design: deleting the CRD would delete every GpuTaskQueue of the cluster.
    cluster.kubectl("get", CRD)
    # The queues stay the user's, and nothing the operator left on them (no finalizer) blocks their deletion.
    cluster.kubectl("delete", "gtq", "first", "second", "-n", namespace, "--wait", "--timeout=30s")


def test_helm_namespaced_rbac_serves_only_its_namespaces(cluster, release, namespace):
    other = f"{namespace[:50]}-other"
    cluster.kubectl("create", "namespace", other)
    try:
        adopt_crd(cluster, release.name, namespace)
        cluster.kubectl(
            "create", "secret", "generic", "broker", "-n", namespace, "--from-literal=password=pw"
        )
        cluster.kubectl("create", "secret", "generic", "other", "-n", namespace, "--from-literal=password=pw")
        release.install("--set", f"rbac.namespaces={{{namespace}}}", "--set", "rbac.secretNames={broker}")
        pod = operator_pod(cluster, namespace)

        password = {
            "url": "redis://127.0.0.1:1/0",
            "passwordSecretRef": {"name": "broker", "key": "password"},
        }
        cluster.kubectl("apply", "-f", "-", stdin=queue("served", namespace, broker=password))
        reconciled(cluster, namespace, "served")
        assert_no_forbidden(cluster, pod)

        # A queue elsewhere is not the operator's; one naming a Secret not in rbac.secretNames cannot be read.
        cluster.kubectl("apply", "-f", "-", stdin=queue("ignored", other))
        hidden = {"url": "redis://127.0.0.1:1/0", "passwordSecretRef": {"name": "other", "key": "password"}}
        cluster.kubectl("apply", "-f", "-", stdin=queue("unreadable", namespace, broker=hidden))

        def condition(name: str, type_: str) -> dict:
            obj = json.loads(cluster.kubectl("get", "gtq", name, "-n", namespace, "-o", "json").stdout)
            return next(
                (c for c in (obj.get("status") or {}).get("conditions", []) if c["type"] == type_), {}
            )

        # The refusal is that queue's problem alone: it says so, and the other queue is still probed.
        wait_for("Ready=False/SecretForbidden on the unreadable queue",
                 lambda: condition("unreadable", "Ready").get("reason") == "SecretForbidden", timeout=60)  # fmt: skip
        assert "rbac.secretNames" in condition("unreadable", "Ready")["message"]
        wait_for("the other queue probed (its URL answers nothing)",
                 lambda: condition("served", "BrokerReachable").get("reason") == "ConnectionFailed", timeout=60)  # fmt: skip
        time.sleep(3)  # what the operator would need to act on the other namespace, were it wrong
        assert objects(cluster, "deployments", "-n", other) == []
        assert_rbac(cluster, release.subject, {"watched": namespace, "other": other}, NAMESPACED_ONLY)
    finally:
        # Gone before the next test: a cluster-wide operator there would see its queue in a terminating namespace.
        cluster.kubectl("delete", "gtq", "--all", "-n", other, "--wait=true", check=False)
        cluster.kubectl("delete", "namespace", other, "--wait=true", "--timeout=120s", check=False)


@pytest.mark.kind
def test_helm_test_hook(cluster, namespace):
    """`helm test` runs its pod: only where pods run containers (kind, a real cluster), not on kwok nodes."""
    cluster.require("runs_containers", "helm test runs the chart's test pod")
    repository, _, tag = cluster.images["operator"].rpartition(":")
    name = f"gf-{uuid.uuid4().hex[:6]}"
    adopt_crd(cluster, name, namespace)
    # Off the fake GPU nodes, for the operator and the test pod alike: the images run on a real node.
    not_fake = {
        "nodeSelectorTerms": [
            {"matchExpressions": [{"key": "type", "operator": "NotIn", "values": ["kwok"]}]}
        ]
    }
    values = {
        "image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": not_fake}},
    }
    try:
        cluster.helm(
            "install",
            name,
            str(CHART),
            "-n",
            namespace,
            "--wait",
            "--timeout",
            "180s",
            "-f",
            "-",
            stdin=yaml.safe_dump(values),
        )
        # No --logs: the hook's pod is deleted once it succeeds, and helm then fails to read its log.
        done = cluster.helm("test", name, "-n", namespace, "--timeout", "180s")
        assert "Phase:          Succeeded" in done.stdout, done.stdout
    finally:
        cluster.helm("uninstall", name, "-n", namespace, "--wait", check=False)


# ---- kubectl apply -f manifests/ -------------------------------------------------------------------------------


@pytest.fixture
def manifests_install(cluster, tmp_path):
    """manifests/ applied as a user would; the image's tini is played by a shim that runs what follows `--`."""
    cluster.require("started_here", "applies manifests/ to the gpufleet-system namespace")
    if http_get("http://127.0.0.1:8081/healthz") is not None:
        pytest.skip("port 8081, the operator's liveness port in manifests/, is taken on this machine")
    shim = tmp_path / "bin" / "tini"
    shim.parent.mkdir()
    shim.write_text('#!/bin/sh\n[ "$1" = "--" ] && shift\nexec "$@"\n')
    shim.chmod(shim.stat().st_mode | stat.S_IXUSR)
    metrics_port = free_port()
    env = {"PATH": f"{shim.parent}:$PATH", "GPUFLEET_METRICS_PORT": str(metrics_port)}
    with as_its_service_account(cluster, "gpufleet-system", tmp_path, env):
        yield metrics_port
        # Everything but the CRD, which the rest of the session uses.
        cluster.kubectl("delete", "namespace", "gpufleet-system", "--wait", "--timeout=120s", check=False)
        cluster.kubectl(
            "delete",
            "clusterroles,clusterrolebindings",
            "-l",
            "app.kubernetes.io/instance=gpufleet",
            check=False,
        )


def test_kubectl_apply_manifests_gives_the_same_working_operator(cluster, manifests_install, namespace):
    metrics_port = manifests_install
    applied = cluster.kubectl("apply", "-f", str(MANIFESTS)).stdout
    assert "namespace/gpufleet-system" in applied and "deployment.apps/gpufleet" in applied
    # Not `kubectl wait --for=condition=Established`: it fails outright while a new CRD has no conditions yet.
    wait_for("the CRD established", lambda: "Established=True" in cluster.kubectl(
        "get", CRD, "-o", "jsonpath={range .status.conditions[*]}{.type}={.status} {end}", check=False).stdout)  # fmt: skip
    cluster.kubectl("rollout", "status", "deployment/gpufleet", "-n", "gpufleet-system", "--timeout=120s")
    pod = operator_pod(cluster, "gpufleet-system")
    # The same objects through kustomize: nothing to change.
    again = cluster.kubectl("apply", "-k", str(MANIFESTS)).stdout.splitlines()
    assert again and all(line.endswith("unchanged") for line in again), again

    metrics = wait_for("the operator's metrics", lambda: http_get(f"http://127.0.0.1:{metrics_port}/metrics"))
    assert "gpufleet_probe_seconds_count" in metrics
    wait_for("kopf's /healthz", lambda: http_get("http://127.0.0.1:8081/healthz"))
    cluster.kubectl("apply", "-f", "-", stdin=queue("from-manifests", namespace))
    reconciled(cluster, namespace, "from-manifests")
    assert_no_forbidden(cluster, pod)
    subject = "system:serviceaccount:gpufleet-system:gpufleet"
    assert_rbac(cluster, subject, {"watched": namespace, "other": "kube-system"}, CLUSTER_WIDE_ONLY)
