"""The clusters the e2e suite runs on. Same tests, same assertions, whichever provider made the cluster.

- `local` (default): the control plane built from Go modules (gpufleet_tools.devcluster), on loopback.
- `kind`: a kind cluster, where `kind` and a working Docker engine exist; the operator and worker images are built
  and loaded into it. GPU nodes are kwok's fake nodes there too (kind nodes have no GPUs).
- an existing cluster, only when GPUFLEET_E2E_KUBECONFIG names its kubeconfig: the suite never touches a cluster
  it did not start otherwise. kwok and the process-pod runner are started against it, for fake nodes only.

Choose with GPUFLEET_E2E_PROVIDER=local|kind. The session's GPU nodes: GPUFLEET_E2E_GPU_NODES (default 2) nodes of
GPUFLEET_E2E_GPUS_PER_NODE (default 4) `nvidia.com/gpu`, labelled `gpufleet.dev/pool=default`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gpufleet_tools.devcluster.binaries import REPO, BinariesMissing, bin_dir
from gpufleet_tools.devcluster.cluster import DevCluster, GpuNodes, process_env
from gpufleet_tools.devcluster.controlplane import kwok
from gpufleet_tools.devcluster.podrunner import PodRunner

KIND_CONFIG = Path(__file__).with_name("kind-config.yaml")
KIND_NAME = "gpufleet-e2e"
# Built from the repository by the kind provider; on the local control plane images are never pulled or run.
IMAGES = {"operator": "gpufleet-operator:e2e", "worker": "gpufleet-worker:e2e"}
DOCKERFILES = {"operator": REPO / "operator" / "Dockerfile", "worker": REPO / "worker_image" / "Dockerfile"}
DEFAULT_POOL = {"gpufleet.dev/pool": "default"}


class Cluster:
    """What a test gets from the `cluster` fixture.

    kubeconfig   the admin kubeconfig of this cluster (and only this one)
    env          os.environ with KUBECONFIG set to it and the built kubectl/helm first on PATH: give it to every
                 subprocess (kubectl, helm, the operator)
    api          a kubernetes.client.ApiClient on it
    runner       the process-pod runner (runner.env_overlay, runner.pod_log(ns, name), runner.pids())
    images       the operator and worker image names to put in manifests
    provider     "local", "kind" or "existing"
    """

    def __init__(
        self,
        provider: str,
        kubeconfig: Path,
        bin_dir: Path,
        api: Any,
        nodes: GpuNodes,
        runner: PodRunner,
        logs: Callable[[int], dict[str, str]],
        close: Callable[[], None],
    ):
        self.provider = provider
        self.kubeconfig = kubeconfig
        self.bin_dir = bin_dir
        self.api = api
        self.runner = runner
        self.images = dict(IMAGES)
        self.env = {
            **os.environ,
            "KUBECONFIG": str(kubeconfig),
            "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        self.nodes = nodes
        self._logs = logs
        self._close = close

    def _run(self, program: str, args, stdin: str | None, check: bool, timeout: float):
        done = subprocess.run(
            [str(self.bin_dir / program), *map(str, args)],
            input=stdin,
            capture_output=True,
            text=True,
            env=self.env,
            timeout=timeout,
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"{program} {' '.join(map(str, args))} exited {done.returncode}:\n{done.stderr}"
            )
        return done

    def kubectl(self, *args, stdin: str | None = None, check: bool = True, timeout: float = 120):
        """Run the built kubectl against this cluster, `stdin` fed to it; returns the CompletedProcess (text).
        With `check`, a non-zero exit fails the test with kubectl's stderr."""
        return self._run("kubectl", args, stdin, check, timeout)

    def helm(self, *args, stdin: str | None = None, check: bool = True, timeout: float = 300):
        return self._run("helm", args, stdin, check, timeout)

    def add_gpu_node(self, name: str | None = None, **options) -> str:
        """Add a fake GPU node and wait until it is Ready; options as gpufleet_tools.devcluster.nodes.gpu_node
        (gpus, resource, product, labels, taint, cpu, memory, pods). Returns its name."""
        return self.nodes.add(name, **options)

    def remove_node(self, name: str, *, drain: bool = True) -> None:
        """Delete a node; with `drain` its pods are deleted first (each with its grace period)."""
        self.nodes.remove(name, drain=drain)

    def logs(self, lines: int = 40) -> str:
        """The last lines of every component's log, the runner's and every process pod's, for a failure report."""
        parts = {**self._logs(lines), **self.runner.logs(lines)}
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
    return Cluster(
        "local",
        dev.kubeconfig,
        dev.bin_dir,
        dev.api,
        dev.nodes,
        dev.runner,
        dev.control_plane.logs,
        dev.close,
    )


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


def _kind_unavailable() -> str | None:
    if not shutil.which("kind"):
        return "kind provider: `kind` is not on PATH"
    if not shutil.which("docker"):
        return "kind provider: no `docker` CLI on PATH"
    try:
        info = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return "kind provider: no Docker engine reachable (docker info timed out)"
    if info.returncode != 0:
        reason = (info.stderr.strip().splitlines() or [f"exit {info.returncode}"])[-1]
        return f"kind provider: no Docker engine reachable (docker info failed: {reason})"
    return None


def kind() -> Cluster:
    if reason := _kind_unavailable():
        pytest.skip(reason)
    binaries = _binaries()
    directory = Path(tempfile.mkdtemp(prefix="gpufleet-kind-"))
    kubeconfig = directory / "kubeconfig"

    def run(*argv: str, timeout: float = 900) -> None:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}:\n{done.stderr[-4000:]}")

    def delete() -> None:
        subprocess.run(["kind", "delete", "cluster", "--name", KIND_NAME], capture_output=True, timeout=300)

    create = ["kind", "create", "cluster", "--name", KIND_NAME, "--config", str(KIND_CONFIG)]
    create += ["--kubeconfig", str(kubeconfig), "--wait", "180s"]
    if image := os.environ.get("GPUFLEET_KIND_NODE_IMAGE"):
        create += ["--image", image]
    run(*create)
    try:
        for role, image in IMAGES.items():
            if not DOCKERFILES[role].exists():
                raise RuntimeError(f"kind provider: {DOCKERFILES[role].relative_to(REPO)} is missing")
            run("docker", "build", "-t", image, "-f", str(DOCKERFILES[role]), str(REPO))
            run("kind", "load", "docker-image", image, "--name", KIND_NAME)
        return _on_cluster("kind", kubeconfig, binaries, directory, delete)
    except BaseException:
        delete()
        raise


def start() -> Cluster:
    if kubeconfig := os.environ.get("GPUFLEET_E2E_KUBECONFIG"):
        return existing(kubeconfig)
    provider = os.environ.get("GPUFLEET_E2E_PROVIDER", "local")
    if provider == "local":
        return local()
    if provider == "kind":
        return kind()
    pytest.fail(f"GPUFLEET_E2E_PROVIDER={provider!r}: expected 'local' or 'kind'", pytrace=False)
