"""The clusters the e2e suite runs on. Same tests, same assertions, whichever provider made the cluster.

- `local` (default): the control plane built from Go modules (gpufleet_tools.devcluster), on loopback; kwok's
  fake GPU nodes, and the process-pod runner running the pods gpufleet cares about as local processes.
- `kind`: a kind cluster of real nodes (a kubelet and containerd in Docker containers) running the project's real
  images. Offline, its node image is made here by hack/kind-node-image.sh; GPUFLEET_KIND_NODE_IMAGE names
  another one (`kind-default`: kind's public image, where it can be pulled); GPUFLEET_KIND_KEEP=1 keeps the
  cluster after the session, to look at. Each node advertises fake
  `nvidia.com/gpu` capacity (GPUFLEET_E2E_GPUS_PER_NODE, default 2 there), so GPU-requesting pods run. The
  images (operator, worker, and a Debian Redis with curl standing in for the chart's redis and `helm test`
  images) are built locally and loaded with `kind load docker-image`.
- an existing cluster, only when GPUFLEET_E2E_KUBECONFIG names its kubeconfig: the suite never touches a cluster
  it did not start otherwise. kwok and the process-pod runner are started against it, for fake nodes only.

Choose with GPUFLEET_E2E_PROVIDER=local|kind. The session's GPU nodes on local: GPUFLEET_E2E_GPU_NODES (default 2)
nodes of GPUFLEET_E2E_GPUS_PER_NODE (default 4) `nvidia.com/gpu`, labelled `gpufleet.dev/pool=default` (kind's
nodes carry that label too).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import config as kube_config

from gpufleet_tools.devcluster.binaries import REPO, BinariesMissing, bin_dir
from gpufleet_tools.devcluster.cluster import DevCluster, GpuNodes, process_env
from gpufleet_tools.devcluster.controlplane import kwok
from gpufleet_tools.devcluster.podrunner import PodRunner
from support.kube import Kubectl, run

KIND_CONFIG = Path(__file__).with_name("kind-config.yaml")
# GPUFLEET_KIND_NAME: another name lets two kind sessions run side by side on one machine.
KIND_NAME = os.environ.get("GPUFLEET_KIND_NAME", "gpufleet-e2e")
# The names tests put in manifests. On kind these images are built here and loaded into the nodes; on the local
# control plane no image is ever pulled or run.
IMAGES = {"operator": "gpufleet-operator:e2e", "worker": "gpufleet-worker:e2e"}
DEFAULT_POOL = {"gpufleet.dev/pool": "default"}
GPU = "nvidia.com/gpu"


@dataclass(frozen=True)
class Capabilities:
    """What a provider's cluster can do: a test asks for what it needs (`cluster.require`), never for a name."""

    runs_containers: bool  # pods are containers on real nodes (probes, signals, security contexts)
    loopback_reachable: bool  # pods reach this machine's loopback (a Redis, an operator process started here)
    can_add_nodes: bool  # a test may add fake GPU nodes (kwok) of its own
    has_project_images: bool  # the project's images are built and loaded into its nodes
    started_here: bool  # this session made the cluster (and removes it): cluster-wide changes are safe


CAPABILITIES = {
    "local": Capabilities(runs_containers=False, loopback_reachable=True, can_add_nodes=True,
                          has_project_images=False, started_here=True),
    "kind": Capabilities(runs_containers=True, loopback_reachable=False, can_add_nodes=False,
                         has_project_images=True, started_here=True),
    # Someone else's cluster: kwok's fake nodes and the process-pod runner are started against it from here.
    "existing": Capabilities(runs_containers=True, loopback_reachable=True, can_add_nodes=True,
                             has_project_images=False, started_here=False),
}  # fmt: skip


class Cluster:
    """What a test gets from the `cluster` fixture.

    kubeconfig   the admin kubeconfig of this cluster (and only this one)
    env          os.environ with KUBECONFIG set to it and the built kubectl/helm first on PATH: give it to every
                 subprocess (kubectl, helm, the operator)
    api          a kubernetes.client.ApiClient on it
    runner       the process-pod runner (runner.env_overlay, runner.pod_log(ns, name), runner.pids()); a test that
                 uses it is skipped on kind, where pods are containers
    images       the image names to put in manifests: operator, worker (and on kind: tools, a Debian image with
                 redis-server and curl)
    provider     "local", "kind" or "existing": for messages; tests ask `can` (its Capabilities) or `require()`
    node_ips     (kind) the nodes' addresses, which this machine reaches: a NodePort answers on each
    """

    def __init__(
        self,
        provider: str,
        kubeconfig: Path,
        bin_dir: Path,
        api: Any,
        nodes: GpuNodes | None,
        runner: PodRunner | None,
        logs: Callable[[int], dict[str, str]],
        close: Callable[[], None],
        images: dict[str, str] | None = None,
    ):
        self.provider = provider
        self.can = CAPABILITIES[provider]
        self.kubeconfig = kubeconfig
        self.bin_dir = bin_dir
        self.api = api
        self._runner = runner
        self.images = dict(images or IMAGES)
        self.node_ips: list[str] = []
        self.env = {
            **os.environ,
            "KUBECONFIG": str(kubeconfig),
            "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        self.nodes = nodes
        self._logs = logs
        self._close = close

    def require(self, capability: str, why: str) -> None:
        """Skip the test unless this cluster has `capability` (a field of Capabilities); `why` says what needs it."""
        if not getattr(self.can, capability):
            pytest.skip(
                f"{why}: needs {capability.replace('_', ' ')}, which the {self.provider} cluster lacks"
            )

    def kubectl(self, *args, stdin: str | None = None, check: bool = True, timeout: float = 120):
        """Run the built kubectl against this cluster, `stdin` fed to it; returns the CompletedProcess (text).
        With `check`, a non-zero exit fails the test with kubectl's stderr."""
        return run(
            str(self.bin_dir / "kubectl"), *args, env=self.env, stdin=stdin, check=check, timeout=timeout
        )

    def helm(self, *args, stdin: str | None = None, check: bool = True, timeout: float = 300):
        return run(str(self.bin_dir / "helm"), *args, env=self.env, stdin=stdin, check=check, timeout=timeout)

    @property
    def runner(self) -> PodRunner:
        if self._runner is None:
            pytest.skip(
                f"needs the process-pod runner, which runs pods as local processes on the local control plane; "
                f"on {self.provider} pods are containers"
            )
        return self._runner

    def add_gpu_node(self, name: str | None = None, **options) -> str:
        """Add a fake GPU node and wait until it is Ready; options as gpufleet_tools.devcluster.nodes.gpu_node
        (gpus, resource, product, labels, taint, cpu, memory, pods). Returns its name."""
        self.require("can_add_nodes", "adds kwok GPU nodes of its own")
        return self.nodes.add(name, **options)

    def remove_node(self, name: str, *, drain: bool = True) -> None:
        """Delete a node; with `drain` its pods are deleted first (each with its grace period)."""
        self.nodes.remove(name, drain=drain)

    def logs(self, lines: int = 40) -> str:
        """The last lines of every component's log, the runner's and every process pod's, for a failure report."""
        parts = {**self._logs(lines), **(self._runner.logs(lines) if self._runner else {})}
        return "\n".join(f"----- {name} (last {lines} lines) -----\n{text}" for name, text in parts.items())

    def close(self) -> None:
        self._close()


def _binaries() -> Path:
    try:
        # Builds what is missing: 20 minutes on a cold cache, nothing once cached. Run hack/build-k8s.sh before
        # pytest to keep that out of the first test's timeout.
        return bin_dir(build=True)
    except BinariesMissing as exc:
        pytest.fail(f"e2e: the local control plane's binaries are not available.\n{exc}", pytrace=False)


def _pool() -> tuple[int, dict[str, Any]]:
    """How many session GPU nodes, and their options."""
    gpus = int(os.environ.get("GPUFLEET_E2E_GPUS_PER_NODE", "4"))
    return int(os.environ.get("GPUFLEET_E2E_GPU_NODES", "2")), {"gpus": gpus, "labels": DEFAULT_POOL}


def local() -> Cluster:
    count, options = _pool()
    dev = DevCluster(_binaries(), gpu_nodes=count, node_options=options)
    dev.start()
    cluster = Cluster(
        "local",
        dev.kubeconfig,
        dev.bin_dir,
        dev.api,
        dev.nodes,
        dev.runner,
        dev.control_plane.logs,
        dev.close,
    )
    # The fault tests (test_faults.py) restart and pause its components (etcd, kube-apiserver) in a cluster of
    # their own.
    cluster.control_plane = dev.control_plane
    return cluster


def _on_cluster(
    provider: str, kubeconfig: Path, binaries: Path, directory: Path, close: Callable[[], None]
) -> Cluster:
    """kwok and the process-pod runner on the host, against a cluster someone else runs."""
    from kubernetes import config

    fake_nodes = kwok(binaries, kubeconfig, directory)
    (directory / "logs").mkdir(exist_ok=True)
    fake_nodes.start()
    runner = PodRunner(kubeconfig, directory / "podrunner", env_overlay=process_env(binaries, kubeconfig))
    runner.start()
    api = config.new_client_from_config(config_file=str(kubeconfig))
    nodes = GpuNodes(api)

    def close_all() -> None:
        # The fake nodes this session added go: the cluster outlives the session.
        for name in list(nodes.names):
            nodes.remove(name, drain=False)
        runner.stop()
        fake_nodes.stop()
        close()

    cluster = Cluster(
        provider, kubeconfig, binaries, api, nodes, runner, lambda n: {"kwok": fake_nodes.tail(n)}, close_all
    )
    count, options = _pool()
    for _ in range(count):
        cluster.add_gpu_node(**options)
    return cluster


def existing(kubeconfig: str) -> Cluster:
    directory = Path(tempfile.mkdtemp(prefix="gpufleet-e2e-"))
    return _on_cluster("existing", Path(kubeconfig), _binaries(), directory, lambda: None)


def _kind_program() -> Path:
    """kind, and with it the node binaries (hack/build-k8s.sh --kind): a few minutes cold, nothing when cached."""
    done = subprocess.run([str(REPO / "hack" / "build-k8s.sh"), "--kind"], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail(f"kind provider: hack/build-k8s.sh --kind failed:\n{done.stderr[-3000:]}", pytrace=False)
    return Path(done.stdout.strip().splitlines()[-1]) / "kind"


def _docker_unavailable() -> str | None:
    if not shutil.which("docker"):
        return "no `docker` CLI on PATH"
    try:
        info = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return "no Docker engine reachable (docker info timed out)"
    if info.returncode != 0:
        reason = (info.stderr.strip().splitlines() or [f"exit {info.returncode}"])[-1]
        return f"no Docker engine reachable (docker info failed: {reason})"
    return None


def _run(*argv: str, timeout: float = 900, stdin: str | None = None) -> str:
    done = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}:\n{done.stderr[-4000:]}")
    return done.stdout


def _node_image() -> str | None:
    """The node image to create the cluster with: GPUFLEET_KIND_NODE_IMAGE (`kind-default`: kind's own, pulled),
    else the offline one hack/kind-node-image.sh makes (minutes once, nothing after)."""
    chosen = os.environ.get("GPUFLEET_KIND_NODE_IMAGE", "")
    if chosen == "kind-default":
        return None
    if chosen:
        return chosen
    return _run(str(REPO / "hack" / "kind-node-image.sh")).strip().splitlines()[-1]


# The images the kind session runs, made from what `make images` built: the operator as it is, the worker with
# the e2e app added (tests/e2e/images/worker-e2e.Dockerfile), and a tools image (Debian's redis-server and curl).
SOURCE_IMAGES = {
    "operator": os.environ.get("GPUFLEET_E2E_OPERATOR_IMAGE", "gpufleet-operator:dev"),
    "worker": os.environ.get("GPUFLEET_E2E_WORKER_IMAGE", "gpufleet-worker:dev-cpu"),
}
IMAGES_DIR = Path(__file__).with_name("images")


def _kind_images() -> dict[str, str]:
    for role, image in SOURCE_IMAGES.items():
        if subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode != 0:
            pytest.fail(
                f"kind provider: the {role} image {image} is not built: run `make images`", pytrace=False
            )
    images = dict(IMAGES)
    _run("docker", "tag", SOURCE_IMAGES["operator"], images["operator"])
    _run("docker", "build", "-q", "-t", images["worker"], "--build-arg", f"WORKER_IMAGE={SOURCE_IMAGES['worker']}",
         "-f", str(IMAGES_DIR / "worker-e2e.Dockerfile"), str(Path(__file__).parent))  # fmt: skip
    base = _run(str(REPO / "hack" / "base-images.sh")).strip().splitlines()[-1]
    dockerfile = (IMAGES_DIR / "tools.Dockerfile").read_text()
    images["tools"] = (
        "gpufleet-e2e-tools:" + hashlib.sha256(f"{base}\n{dockerfile}".encode()).hexdigest()[:12]
    )
    if subprocess.run(["docker", "image", "inspect", images["tools"]], capture_output=True).returncode != 0:
        _run(
            "docker",
            "build",
            "-q",
            "-t",
            images["tools"],
            "--build-arg",
            f"BASE_IMAGE={base}",
            "-",
            stdin=dockerfile,
        )
    return images


def _chart_default_images() -> dict[str, str]:
    """Images the chart and manifests/ name by default, which the nodes would pull: each maps to the local image
    that stands in for it (tagged so inside the nodes only, never in the Docker engine)."""
    chart = REPO / "charts" / "gpufleet"
    values = yaml.safe_load((chart / "values.yaml").read_text())
    version = yaml.safe_load((chart / "Chart.yaml").read_text())["appVersion"]
    return {
        f"{values['image']['repository']}:{values['image']['tag'] or version}": "operator",
        f"{values['redis']['image']['repository']}:{values['redis']['image']['tag']}": "tools",
        values["tests"]["image"]: "tools",
    }


def _qualified(ref: str) -> str:
    """A reference as containerd stores it: `redis:7` is docker.io/library/redis:7."""
    first = ref.split("/")[0]
    if "/" not in ref:
        return f"docker.io/library/{ref}"
    if "." not in first and ":" not in first and first != "localhost":
        return f"docker.io/{ref}"
    return ref


def _wait_ready(kubectl: Callable[..., str], timeout: float = 240) -> None:
    """kind create's --wait only warns when it runs out: every node Ready and every kube-system pod Ready."""
    deadline = time.monotonic() + timeout
    while True:
        nodes = json.loads(kubectl("get", "nodes", "-o", "json"))["items"]
        pods = json.loads(kubectl("get", "pods", "-n", "kube-system", "-o", "json"))["items"]
        unready = [n["metadata"]["name"] for n in nodes if not _condition(n, "Ready")]
        unready += [p["metadata"]["name"] for p in pods if not _condition(p, "Ready")]
        if nodes and not unready:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"kind cluster not ready after {timeout:.0f}s: {', '.join(unready) or 'no nodes'}"
            )
        time.sleep(1)


def _allocatable(kubectl: Callable[..., str], node: str) -> dict[str, str]:
    return json.loads(kubectl("get", "node", node, "-o", "json"))["status"]["allocatable"]


def _condition(obj: dict, type_: str) -> bool:
    return any(c["type"] == type_ and c["status"] == "True" for c in obj["status"].get("conditions", []))


_session_lock: Any = None


def _hold_session_lock() -> None:
    """One kind session at a time on this machine: the session owns the cluster's name, and deletes a cluster of
    that name an interrupted session left. Held until this process ends."""
    global _session_lock
    path = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gpufleet" / f"{KIND_NAME}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    _session_lock = open(path, "w")  # noqa: SIM115 - held open for the session
    try:
        fcntl.flock(_session_lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pytest.fail(
            f"kind provider: another kind e2e session runs on this machine ({path} is locked)", pytrace=False
        )


def kind() -> Cluster:
    binaries = _binaries()
    program = str(_kind_program())
    if reason := _docker_unavailable():
        pytest.fail(f"kind provider: {reason}; hack/docker-engine.sh start starts one", pytrace=False)
    directory = Path(tempfile.mkdtemp(prefix="gpufleet-kind-"))
    kubeconfig = directory / "kubeconfig"
    gpus = int(os.environ.get("GPUFLEET_E2E_GPUS_PER_NODE", "2"))

    kube = Kubectl(str(binaries / "kubectl"), {**os.environ, "KUBECONFIG": str(kubeconfig)})

    def kubectl(*args: str) -> str:
        return kube.run(*args).stdout

    def delete() -> None:
        subprocess.run([program, "delete", "cluster", "--name", KIND_NAME], capture_output=True, timeout=300)

    def close() -> None:
        if os.environ.get("GPUFLEET_KIND_KEEP") == "1":
            print(f"kind: cluster {KIND_NAME} kept (GPUFLEET_KIND_KEEP=1); KUBECONFIG={kubeconfig}")
            return
        delete()

    node_names: list[str] = []

    def logs(lines: int) -> dict[str, str]:
        parts = {"pods": kubectl("get", "pods", "-A", "-o", "wide")}
        events = kube.run("get", "events", "-A", "--sort-by=.lastTimestamp", check=False)
        parts["events"] = "\n".join(events.stdout.splitlines()[-lines:])
        # Every gpufleet operator's own log: what it decided, and why.
        operators = json.loads(
            kubectl("get", "pods", "-A", "-l", "app.kubernetes.io/component=operator", "-o", "json")
        )
        for pod in operators["items"]:
            namespace, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
            log = kube.run("logs", "-n", namespace, name, f"--tail={lines * 5}", check=False)
            parts[f"operator {namespace}/{name}"] = log.stdout + log.stderr
        for node in node_names:
            journal = subprocess.run(["docker", "exec", node, "journalctl", "-u", "kubelet", "-u", "containerd",
                                      "--no-pager", "-n", str(lines)], capture_output=True, text=True)  # fmt: skip
            parts[f"{node}: kubelet and containerd"] = journal.stdout
        return parts

    started = time.monotonic()
    image = _node_image()
    images = _kind_images()
    built = time.monotonic()
    _hold_session_lock()
    delete()  # one left by an interrupted session
    create = [program, "create", "cluster", "--name", KIND_NAME, "--config", str(KIND_CONFIG)]
    create += ["--kubeconfig", str(kubeconfig), "--wait", "120s"] + (["--image", image] if image else [])
    _run(*create)
    try:
        _wait_ready(kubectl)
        created = time.monotonic()
        node_names.extend(_run(program, "get", "nodes", "--name", KIND_NAME).split())
        # Fake GPUs: an extended resource in each node's capacity, which the kubelet keeps and makes allocatable.
        # What a device plugin would add; these pods get no device, the worker runs its NumPy path.
        patch = json.dumps(
            [{"op": "add", "path": f"/status/capacity/{GPU.replace('/', '~1')}", "value": str(gpus)}]
        )
        for node in node_names:
            kubectl("patch", "node", node, "--subresource=status", "--type=json", "-p", patch)
            kubectl("label", "node", node, "--overwrite", *(f"{k}={v}" for k, v in DEFAULT_POOL.items()),
                    f"{GPU}.product=fake-gpu", f"{GPU}.count={gpus}")  # fmt: skip
        _run(program, "load", "docker-image", "--name", KIND_NAME, *sorted(set(images.values())))
        for alias, role in _chart_default_images().items():
            for node in node_names:
                _run("docker", "exec", node, "ctr", "-n", "k8s.io", "images", "tag", "--force",
                     _qualified(images[role]), _qualified(alias))  # fmt: skip
        for node in node_names:
            deadline = time.monotonic() + 60
            while _allocatable(kubectl, node).get(GPU) != str(gpus):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{node}: {GPU} not allocatable 60 s after the capacity patch")
                time.sleep(0.5)
        print(
            f"kind: node image and test images {built - started:.1f}s, cluster created {created - built:.1f}s, "
            f"GPUs and images loaded {time.monotonic() - created:.1f}s"
        )
        api = kube_config.new_client_from_config(config_file=str(kubeconfig))
        cluster = Cluster("kind", kubeconfig, binaries, api, None, None, logs, close, images)
        cluster.node_ips = [
            next(a["address"] for a in n["status"]["addresses"] if a["type"] == "InternalIP")
            for n in json.loads(kubectl("get", "nodes", "-o", "json"))["items"]
        ]
        return cluster
    except BaseException:
        delete()
        raise


def selected() -> str:
    """The provider this session uses: "existing" when GPUFLEET_E2E_KUBECONFIG is set, else
    GPUFLEET_E2E_PROVIDER (default "local")."""
    if os.environ.get("GPUFLEET_E2E_KUBECONFIG"):
        return "existing"
    return os.environ.get("GPUFLEET_E2E_PROVIDER", "local")


def start() -> Cluster:
    provider = selected()
    if provider == "existing":
        return existing(os.environ["GPUFLEET_E2E_KUBECONFIG"])
    if provider == "local":
        return local()
    if provider == "kind":
        return kind()
    pytest.fail(f"GPUFLEET_E2E_PROVIDER={provider!r}: expected 'local' or 'kind'", pytrace=False)
