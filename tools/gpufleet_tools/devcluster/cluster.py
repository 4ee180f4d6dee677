"""The local dev cluster: the control plane, its fake GPU nodes and the process-pod runner, as one thing.

What `dev-cluster up`, the demo and the e2e tests' local provider run.
"""

from __future__ import annotations

import itertools
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from gpufleet_tools.devcluster import nodes
from gpufleet_tools.devcluster.controlplane import ControlPlane
from gpufleet_tools.devcluster.podrunner import DEFAULT_SELECTORS, PodRunner


def process_env(bin_dir: Path, kubeconfig: Path) -> dict[str, str]:
    """What a process pod gets on top of its own environment: this virtualenv plays the image (its bin first on
    PATH, then kubectl and helm), and the operator's pod reaches the cluster through KUBECONFIG, having no
    in-cluster service-account mount."""
    path = os.pathsep.join(
        [str(Path(sys.executable).parent), str(bin_dir), os.environ.get("PATH", os.defpath)]
    )
    return {"PATH": path, "KUBECONFIG": str(kubeconfig), "PYTHONUNBUFFERED": "1"}


class GpuNodes:
    """Adds and removes fake GPU nodes with generated names; shared by every kind of cluster the tests run on."""

    def __init__(self, api, prefix: str = "gpu-node"):
        self._api = api
        self._prefix = prefix
        self._numbers = itertools.count()
        self.names: list[str] = []

    def add(self, name: str | None = None, **options: Any) -> str:
        """One node; options as for `nodes.gpu_node` (gpus, resource, product, labels, taint, ...)."""
        name = name or f"{self._prefix}-{next(self._numbers)}"
        nodes.add_gpu_node(self._api, name, **options)
        self.names.append(name)
        return name

    def remove(self, name: str, *, drain: bool = True) -> None:
        nodes.remove_node(self._api, name, drain=drain)
        if name in self.names:
            self.names.remove(name)


class DevCluster:
    def __init__(
        self,
        bin_dir: Path,
        directory: Path | None = None,
        *,
        gpu_nodes: int = 2,
        gpus_per_node: int = 4,
        node_options: Mapping[str, Any] | None = None,
        selectors: Sequence[str] = DEFAULT_SELECTORS,
    ):
        self.control_plane = ControlPlane(bin_dir, directory)
        self.bin_dir = bin_dir
        self.directory = self.control_plane.directory
        self.kubeconfig = self.control_plane.kubeconfig
        self._initial_nodes = gpu_nodes
        self._node_options = {"gpus": gpus_per_node, **(node_options or {})}
        self.runner = PodRunner(
            self.kubeconfig,
            self.directory / "podrunner",
            selectors=selectors,
            env_overlay=process_env(bin_dir, self.kubeconfig),
        )
        self.nodes: GpuNodes | None = None

    def start(self) -> None:
        self.control_plane.start()
        try:
            self.api = self.control_plane.api_client()
            self.nodes = GpuNodes(self.api)
            for _ in range(self._initial_nodes):
                self.nodes.add(**self._node_options)
            self.runner.start()
        except BaseException:
            self.control_plane.stop()
            raise

    def stop(self) -> None:
        self.runner.stop()
        self.control_plane.stop()

    def close(self) -> None:
        self.runner.stop()
        self.control_plane.close()

    def env(self) -> dict[str, str]:
        return self.control_plane.env()

    def logs(self, lines: int = 40) -> dict[str, str]:
        return {**self.control_plane.logs(lines), **self.runner.logs(lines)}
