"""`dev-cluster up|down|status`: the dev cluster as a background process, found again through its state directory.

`up` starts `python -m gpufleet_tools.devcluster serve` detached; that process runs the DevCluster, writes `ready` (JSON)
once the cluster can take pods, and tears everything down on SIGTERM. `down` sends it SIGTERM. Everything the
cluster keeps (etcd data, certificates, the kubeconfig, the logs) lives in the state directory.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from gpufleet_tools.devcluster.binaries import bin_dir
from gpufleet_tools.devcluster.cluster import DevCluster
from gpufleet_tools.devcluster.nodes import GPU_RESOURCE
from gpufleet_tools.devcluster.podrunner import DEFAULT_SELECTORS

MARKER = ".gpufleet-dev-cluster"


def default_state_dir() -> Path:
    cache = os.environ.get("GPUFLEET_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "gpufleet"
    )
    return Path(cache) / "dev-cluster"


@dataclass(frozen=True)
class Info:
    state_dir: str
    kubeconfig: str
    server: str
    bin_dir: str
    pid: int
    gpu_nodes: int
    gpus_per_node: int
    startup_seconds: float

    def describe(self) -> str:
        return "\n".join([
            f"gpufleet dev cluster is up (pid {self.pid}): {self.server}, "
            f"{self.gpu_nodes} kwok GPU node(s) x {self.gpus_per_node} {GPU_RESOURCE}",
            "",
            f"  export KUBECONFIG={self.kubeconfig}",
            f"  export PATH={self.bin_dir}:$PATH    # kubectl and helm of the same release",
            "  kubectl get nodes -L nvidia.com/gpu.product,nvidia.com/gpu.count",
            "",
            f"Pods labelled {' or '.join(DEFAULT_SELECTORS)} on the GPU nodes run as local processes",
            f"(output: {self.state_dir}/podrunner/pods/<namespace>_<pod>/log); other pods are only marked Running.",
            f"Component logs: {self.state_dir}/logs/. Stop it with: python -m gpufleet_tools.devcluster down",
        ])  # fmt: skip


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def info(state_dir: Path) -> Info | None:
    """The running dev cluster of `state_dir`, or None."""
    try:
        found = Info(**json.loads((state_dir / "ready").read_text()))
    except (FileNotFoundError, ValueError, TypeError):
        return None
    return found if _alive(found.pid) else None


def _fresh(state_dir: Path) -> None:
    """Empty `state_dir` for a new cluster, refusing a directory that is not one of ours."""
    if state_dir.exists() and any(state_dir.iterdir()) and not (state_dir / MARKER).exists():
        raise RuntimeError(
            f"{state_dir} is not empty and is not a dev-cluster state directory; choose another"
        )
    shutil.rmtree(state_dir, ignore_errors=True)
    state_dir.mkdir(parents=True)
    (state_dir / MARKER).touch()


def up(state_dir: Path, *, gpu_nodes: int = 2, gpus_per_node: int = 4, timeout: float = 300.0) -> Info:
    """Start the dev cluster in the background unless it runs already; return once it is ready."""
    if running := info(state_dir):
        return running
    binaries = bin_dir(build=True)
    _fresh(state_dir)
    argv = [sys.executable, "-m", "gpufleet_tools.devcluster", "serve", "--state-dir", str(state_dir)]
    argv += ["--gpu-nodes", str(gpu_nodes), "--gpus-per-node", str(gpus_per_node)]
    env = {**os.environ, "GPUFLEET_K8S_BIN": str(binaries)}
    with (state_dir / "serve.log").open("ab") as log:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    deadline = time.monotonic() + timeout
    while (ready := info(state_dir)) is None:
        if proc.poll() is not None or time.monotonic() > deadline:
            if proc.poll() is None:
                proc.terminate()
            log_tail = (state_dir / "serve.log").read_text(errors="replace")[-4000:]
            raise RuntimeError(f"the dev cluster did not start (see {state_dir}/logs/):\n{log_tail}")
        time.sleep(0.2)
    return ready


def down(state_dir: Path, timeout: float = 60.0) -> bool:
    """Stop the dev cluster of `state_dir`; False if none was running."""
    running = info(state_dir)
    if running is None:
        return False
    os.kill(running.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(running.pid):
        if time.monotonic() > deadline:
            os.kill(running.pid, signal.SIGKILL)
            break
        time.sleep(0.2)
    (state_dir / "ready").unlink(missing_ok=True)
    return True


def serve(state_dir: Path, *, gpu_nodes: int, gpus_per_node: int) -> None:
    """Run the dev cluster in this process until SIGTERM or SIGINT."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    cluster = DevCluster(bin_dir(), state_dir, gpu_nodes=gpu_nodes, gpus_per_node=gpus_per_node)
    cluster.start()
    try:
        ready = Info(
            state_dir=str(state_dir),
            kubeconfig=str(cluster.kubeconfig),
            server=cluster.control_plane.server,
            bin_dir=str(cluster.bin_dir),
            pid=os.getpid(),
            gpu_nodes=gpu_nodes,
            gpus_per_node=gpus_per_node,
            startup_seconds=round(cluster.control_plane.startup_seconds or 0.0, 1),
        )
        (state_dir / "ready.tmp").write_text(json.dumps(asdict(ready)))
        (state_dir / "ready.tmp").rename(state_dir / "ready")
        print(f"dev cluster ready in {ready.startup_seconds}s", flush=True)
        stop.wait()
    finally:
        (state_dir / "ready").unlink(missing_ok=True)
        cluster.stop()
        print("dev cluster stopped", flush=True)
