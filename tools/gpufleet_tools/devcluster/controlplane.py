"""A real Kubernetes control plane on loopback: etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
and kwok to keep fake nodes alive. Used by the e2e tests (one per session) and by `dev-cluster up`.

It binds only 127.0.0.1 on free ports and keeps all its state in one directory, so several can run side by side
and none touches the user's own clusters.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from gpufleet_tools.devcluster.component import Component
from gpufleet_tools.devcluster.nodes import KWOK_SELECTOR
from gpufleet_tools.devcluster.pki import ADMIN, CONTROLLER_MANAGER, SCHEDULER, Pki

SERVICE_CIDR = "10.96.0.0/16"
POD_CIDR = "10.244.0.1/16"
ISSUER = "https://kubernetes.default.svc.cluster.local"


class ControlPlaneError(RuntimeError):
    pass


START_ATTEMPTS = 3
PORT_TAKEN = "address already in use"  # what a component that cannot bind its port says as it exits


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kwok(bin_dir: Path, kubeconfig: Path, directory: Path) -> Component:
    """kwok managing the nodes annotated kwok.x-k8s.io/node=fake of the cluster `kubeconfig` points at (any
    cluster: this one, or kind)."""
    stages = directory / "kwok-stages.yaml"
    stages.write_text(resources.files("gpufleet_tools.devcluster").joinpath("kwok-stages.yaml").read_text())
    argv = [
        str(bin_dir / "kwok"),
        f"--kubeconfig={kubeconfig}",
        # Always a config of ours: otherwise kwok reads ~/.kwok/kwok.yaml.
        f"--config={stages}",
        "--manage-all-nodes=false",
        f"--manage-nodes-with-annotation-selector={KWOK_SELECTOR}",
        # kwok v0.7 picks its slow (10 min) node-status heartbeat when leases are off; with leases it renews a
        # Lease per node, which is what keeps the node lifecycle controller from marking the nodes unreachable.
        "--node-lease-duration-seconds=40",
        f"--cidr={POD_CIDR}",
    ]
    return Component("kwok", argv, directory / "logs" / "kwok.log")


def _http_ok(
    url: str, context: ssl.SSLContext | None = None, expect: Callable[[bytes], bool] | None = None
) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5, context=context) as resp:
            body = resp.read()
    except (urllib.error.URLError, OSError):
        return False
    return expect(body) if expect else True


@dataclass(frozen=True)
class _Ports:
    etcd: int
    etcd_peer: int
    apiserver: int
    controller_manager: int
    scheduler: int


def _etcd(bin_dir: Path, data_dir: Path, ports: _Ports) -> list[str]:
    url, peer = f"http://127.0.0.1:{ports.etcd}", f"http://127.0.0.1:{ports.etcd_peer}"
    return [
        str(bin_dir / "etcd"),
        "--name=default",
        f"--data-dir={data_dir}",
        f"--listen-client-urls={url}", f"--advertise-client-urls={url}",
        # Its own peer port too: the default (2380) would clash between two clusters on one machine.
        f"--listen-peer-urls={peer}", f"--initial-advertise-peer-urls={peer}", f"--initial-cluster=default={peer}",
        # A test cluster's data is worthless after the run: skipping fsync spares the shared disk and CPU.
        "--unsafe-no-fsync",
        "--log-level=warn",
    ]  # fmt: skip


def _apiserver(bin_dir: Path, pki: Pki, etcd_url: str, ports: _Ports) -> list[str]:
    return [
        str(bin_dir / "kube-apiserver"),
        f"--etcd-servers={etcd_url}",
        "--bind-address=127.0.0.1", f"--secure-port={ports.apiserver}",
        # Without it the apiserver looks for the host's default route, which a loopback-only machine lacks.
        "--advertise-address=127.0.0.1",
        # A loopback address is not a valid Endpoints address; nothing in a pod could dial it anyway.
        "--endpoint-reconciler-type=none",
        f"--cert-dir={pki.directory}",
        f"--tls-cert-file={pki.serving_cert}", f"--tls-private-key-file={pki.serving_key}",
        f"--client-ca-file={pki.ca_cert}",
        # Never used (no front proxy), but without it every component keeps logging that the request-header
        # CA bundle is missing.
        f"--requestheader-client-ca-file={pki.ca_cert}",
        "--requestheader-allowed-names=front-proxy-client",
        "--requestheader-username-headers=X-Remote-User",
        "--requestheader-group-headers=X-Remote-Group",
        "--requestheader-extra-headers-prefix=X-Remote-Extra-",
        "--authorization-mode=Node,RBAC",
        "--enable-admission-plugins=NodeRestriction",
        f"--service-account-issuer={ISSUER}",
        f"--service-account-key-file={pki.service_account_pub}",
        f"--service-account-signing-key-file={pki.service_account_key}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        "--allow-privileged=true",
        "--profiling=false",
    ]  # fmt: skip


def _serving(kubeconfig: Path, port: int) -> list[str]:
    """The flags the controller manager and the scheduler share: whom they are, and a health endpoint on a
    free loopback port (their defaults, 10257 and 10259 on every interface, would clash between clusters)."""
    return [
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}", f"--authorization-kubeconfig={kubeconfig}",
        "--bind-address=127.0.0.1", f"--secure-port={port}",
        "--leader-elect=false",
        "--profiling=false",
    ]  # fmt: skip


def _controller_manager(bin_dir: Path, pki: Pki, kubeconfig: Path, port: int) -> list[str]:
    return [
        str(bin_dir / "kube-controller-manager"),
        *_serving(kubeconfig, port),
        # The serviceaccount-token controller signs with it; the root CA goes into every kube-root-ca.crt.
        f"--service-account-private-key-file={pki.service_account_key}",
        f"--root-ca-file={pki.ca_cert}",
        # Each controller acts as its own ServiceAccount, with the rights RBAC's bootstrap policy gives it
        # (the controller manager's own user only has the rights of its core loop).
        "--use-service-account-credentials=true",
    ]


def _scheduler(bin_dir: Path, kubeconfig: Path, port: int) -> list[str]:
    return [str(bin_dir / "kube-scheduler"), *_serving(kubeconfig, port)]


class ControlPlane:
    """`start()` brings the whole control plane up and returns once it can admit and schedule pods; `stop()`
    ends every component (SIGTERM, then SIGKILL), last started first. `close()` also removes the directory
    when this object made it. Each component logs to `<directory>/logs/<name>.log` (`logs()` gives the tails).
    """

    def __init__(self, bin_dir: Path, directory: Path | None = None, *, startup_timeout: float = 180.0):
        self.bin_dir = bin_dir
        self._own_directory = directory is None
        self.directory = Path(tempfile.mkdtemp(prefix="gpufleet-k8s-")) if directory is None else directory
        self.kubeconfig = self.directory / "kubeconfig"
        self.startup_timeout = startup_timeout
        self.server = ""
        self.startup_seconds: float | None = None
        self.components: list[Component] = []

    # -- lifecycle -------------------------------------------------------------------------------------------

    def start(self) -> None:
        began = time.monotonic()
        for attempt in range(1, START_ATTEMPTS + 1):
            try:
                self._start(_Ports(*(free_port() for _ in range(5))))
                break
            except ControlPlaneError as exc:
                # A free port is free when picked, not when bound: in between, another process (another control
                # plane, a connection's ephemeral port) may take it. Then start again on new ports, from a new etcd.
                if PORT_TAKEN not in str(exc) or attempt == START_ATTEMPTS:
                    raise
                shutil.rmtree(self.directory / "etcd", ignore_errors=True)
        self.startup_seconds = time.monotonic() - began

    def _start(self, ports: _Ports) -> None:
        logs = self.directory / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        pki = Pki(self.directory / "pki")
        self.server = f"https://127.0.0.1:{ports.apiserver}"
        pki.kubeconfig(self.kubeconfig, self.server, ADMIN)
        self._admin_ssl = pki.ssl_context(ADMIN)
        kcm_config = pki.kubeconfig(pki.directory / "kcm.kubeconfig", self.server, CONTROLLER_MANAGER)
        scheduler_config = pki.kubeconfig(pki.directory / "scheduler.kubeconfig", self.server, SCHEDULER)
        etcd_url = f"http://127.0.0.1:{ports.etcd}"
        argv = {
            "etcd": _etcd(self.bin_dir, self.directory / "etcd", ports),
            "kube-apiserver": _apiserver(self.bin_dir, pki, etcd_url, ports),
            "kube-controller-manager": _controller_manager(
                self.bin_dir, pki, kcm_config, ports.controller_manager
            ),
            "kube-scheduler": _scheduler(self.bin_dir, scheduler_config, ports.scheduler),
        }
        self.components = [Component(name, args, logs / f"{name}.log") for name, args in argv.items()]
        self.components.append(kwok(self.bin_dir, self.kubeconfig, self.directory))
        etcd, apiserver, *rest = self.components
        # The components' health endpoints serve a self-signed certificate made at their start.
        insecure = ssl.create_default_context()
        insecure.check_hostname, insecure.verify_mode = False, ssl.CERT_NONE
        etcd_healthy = lambda body: json.loads(body).get("health") == "true"  # noqa: E731
        try:
            etcd.start()
            self._wait("etcd /health", lambda: _http_ok(f"{etcd_url}/health", expect=etcd_healthy))
            apiserver.start()
            self._wait("kube-apiserver /readyz", lambda: self._get("/readyz"))
            # The rest only need the apiserver: start them together, then wait for each.
            for component in rest:
                component.start()
            for name, port in (
                ("kube-controller-manager", ports.controller_manager),
                ("kube-scheduler", ports.scheduler),
            ):
                self._wait(
                    f"{name} /healthz",
                    lambda port=port: _http_ok(f"https://127.0.0.1:{port}/healthz", insecure),
                )
            # Pods are admitted only once their namespace's default ServiceAccount exists. The controller manager
            # makes it, so this is also the proof that it works with the apiserver.
            self._wait(
                "ServiceAccount default/default",
                lambda: self._get("/api/v1/namespaces/default/serviceaccounts/default"),
            )
        except BaseException:
            self.stop()
            raise

    def _get(self, path: str) -> bool:
        return _http_ok(f"{self.server}{path}", self._admin_ssl)

    def _wait(self, what: str, ready: Callable[[], bool]) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while not ready():
            for c in self.components:
                if c.pid is not None and (code := c.exited()) is not None:
                    raise ControlPlaneError(
                        f"{c.name} exited with {code} while waiting for {what}:\n{c.tail(60)}"
                    )
            if time.monotonic() > deadline:
                raise ControlPlaneError(
                    f"no {what} after {self.startup_timeout:.0f}s\n{self.format_logs(30)}"
                )
            time.sleep(0.1)

    def stop(self) -> None:
        for component in reversed(self.components):
            component.stop()

    def close(self) -> None:
        self.stop()
        if self._own_directory:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> ControlPlane:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- use -------------------------------------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        """The environment for a subprocess (kubectl, helm, the operator) that must talk to this cluster only."""
        return {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "PATH": f"{self.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        }

    def api_client(self):
        from kubernetes import config

        return config.new_client_from_config(config_file=str(self.kubeconfig))

    def logs(self, lines: int = 40) -> dict[str, str]:
        return {c.name: c.tail(lines) for c in self.components}

    def format_logs(self, lines: int = 40) -> str:
        return "\n".join(
            f"----- {name} (last {lines} lines) -----\n{text}" for name, text in self.logs(lines).items()
        )
