"""The process-pod runner, a kubelet for tests: runs the selected pods bound to fake nodes as local processes.

kwok marks every pod on a fake node Running but runs nothing. For the pods this runner selects (by label), it
runs the first container's command with the pod's environment resolved like the kubelet does; the image is
ignored, the local virtualenv plays it. The pod's lifecycle is the kubelet's:

- a process that exits on its own is restarted per restartPolicy, with a growing back-off;
- a pod given a deletionTimestamp: SIGTERM to the process, up to the grace period for it to end, then SIGKILL to
  everything it left, and only then the pod object is deleted (grace 0). The runner claims each pod it runs
  with the annotation CLAIM, which tells kwok (see kwok-stages.yaml) to leave that deletion to it;
- a pod object that vanishes without the runner (force-deleted, or deleted by kwok before the claim landed) still
  gets SIGTERM, its grace period, then SIGKILL.

Each pod's output goes to `<directory>/pods/<namespace>_<name>/log`; that directory is its working directory.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from kubernetes import client, config
from kubernetes.client.rest import ApiException
from kubernetes.watch.watch import iter_resp_lines

from gpufleet_tools.devcluster import podenv
from gpufleet_tools.devcluster.component import die_with_parent, tail
from gpufleet_tools.devcluster.nodes import KWOK_ANNOTATION

CLAIM = "gpufleet.dev/process-pod"
# Worker pods of every GpuTaskQueue, and the operator's own pod as the chart labels it.
DEFAULT_SELECTORS = (
    "app.kubernetes.io/managed-by=gpufleet",
    "app.kubernetes.io/name=gpufleet,app.kubernetes.io/component=operator",
)
# The kubelet never waits less than this for a container to stop, whatever the pod asked for.
MINIMUM_GRACE = 2.0
MAX_BACKOFF = 30.0
WATCH_SECONDS = 5

EnvOverlay = Mapping[str, str] | Callable[[Mapping[str, Any]], Mapping[str, str]]


def _grace(pod: Mapping[str, Any], *, deleting: bool) -> float:
    meta, spec = pod["metadata"], pod.get("spec", {})
    seconds = spec.get("terminationGracePeriodSeconds", 30)
    if deleting and meta.get("deletionGracePeriodSeconds") is not None:
        seconds = meta["deletionGracePeriodSeconds"]
    return max(float(seconds), MINIMUM_GRACE)


def _restarts(policy: str, code: int) -> bool:
    return policy == "Always" or (policy == "OnFailure" and code != 0)


def _key(pod: Mapping[str, Any]) -> str:
    return f"{pod['metadata']['namespace']}/{pod['metadata']['name']}"


class PodRunner:
    """Start with `start()`, end with `stop()` (every process is stopped; the pods are left as they are).

    `env_overlay` is applied over the pod's own environment: a mapping, or a function of the pod object that
    returns one, for what only makes sense outside a container (PATH to a virtualenv, PYTHONPATH, KUBECONFIG for
    the operator's pod). `base_env`, under the pod's environment, plays the image's ENV. `workdir` replaces the
    per-pod working directory.
    """

    def __init__(
        self,
        kubeconfig: Path,
        directory: Path,
        *,
        selectors: Sequence[str] = DEFAULT_SELECTORS,
        env_overlay: EnvOverlay | None = None,
        workdir: Path | None = None,
        stop_timeout: float = 10.0,
    ):
        self.directory = directory
        self.selectors = tuple(selectors)
        self.env_overlay: EnvOverlay = env_overlay if env_overlay is not None else {}
        venv_bin = str(Path(sys.executable).parent)
        self.base_env = {
            "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', os.defpath)}",
            "HOME": os.environ.get("HOME", "/tmp"),
            "LANG": "C.UTF-8",
        }
        self.workdir = workdir
        self.stop_timeout = stop_timeout
        self.kubeconfig = kubeconfig
        self._lock = threading.Lock()
        self._log_lock = threading.Lock()
        self._pods: dict[str, _PodProcess] = {}  # by pod uid
        self._fake_nodes: set[str] = set()
        self._stopping = threading.Event()
        self._watchers: list[threading.Thread] = []
        self.log_path = directory / "podrunner.log"

    # -- lifecycle -------------------------------------------------------------------------------------------

    def start(self) -> None:
        (self.directory / "pods").mkdir(parents=True, exist_ok=True)
        self._api = config.new_client_from_config(config_file=str(self.kubeconfig))
        self._core = client.CoreV1Api(self._api)
        for selector in self.selectors:
            thread = threading.Thread(
                target=self._watch, args=(selector,), name=f"podrunner {selector}", daemon=True
            )
            thread.start()
            self._watchers.append(thread)
        self.note(f"watching pods {' | '.join(self.selectors)} on nodes annotated {KWOK_ANNOTATION}=fake")

    def stop(self) -> None:
        if self._stopping.is_set() or not self._watchers:
            return
        self._stopping.set()
        with self._lock:
            processes = list(self._pods.values())
        for process in processes:
            process.terminate(min(process.grace(deleting=False), self.stop_timeout), delete_pod=False)
        for thread in [*processes, *self._watchers]:
            thread.join(timeout=self.stop_timeout + 5)
        self._api.close()

    # -- observation ----------------------------------------------------------------------------------------

    def _watch(self, selector: str) -> None:
        while not self._stopping.is_set():
            try:
                version = self._list(selector)
                while not self._stopping.is_set():
                    version = self._follow(selector, version)
            except Exception as exc:  # a watch must outlive any one failure; list again
                if self._stopping.is_set():
                    return
                self.note(f"watch {selector!r}: {type(exc).__name__}: {exc}; listing again")
                self._stopping.wait(1.0)

    def _list(self, selector: str) -> str:
        response = self._core.list_pod_for_all_namespaces(label_selector=selector, _preload_content=False)
        listing = json.loads(response.data)
        present = set()
        for pod in listing["items"]:
            present.add(pod["metadata"]["uid"])
            self._observe(selector, pod)
        # What vanished while nobody watched.
        with self._lock:
            gone = [p for uid, p in self._pods.items() if p.selector == selector and uid not in present]
        for process in gone:
            process.terminate(process.grace(deleting=False), delete_pod=False)
        return listing["metadata"]["resourceVersion"]

    def _follow(self, selector: str, version: str) -> str:
        response = self._core.list_pod_for_all_namespaces(
            label_selector=selector,
            watch=True,
            resource_version=version,
            allow_watch_bookmarks=True,
            # Short watches, resumed from where they ended: a stop request waits for at most this long (closing
            # the response from another thread blocks on the TLS socket until the server ends the watch).
            timeout_seconds=WATCH_SECONDS,
            _preload_content=False,
        )
        try:
            for line in iter_resp_lines(response):
                event = json.loads(line)
                pod = event["object"]
                if event["type"] == "ERROR":
                    raise RuntimeError(f"watch error {pod.get('code')}: {pod.get('message')}")
                version = pod["metadata"]["resourceVersion"]
                if event["type"] == "DELETED":
                    self._deleted(pod)
                elif event["type"] in ("ADDED", "MODIFIED"):
                    self._observe(selector, pod)
        finally:
            response.release_conn()
        return version

    def _observe(self, selector: str, pod: dict[str, Any]) -> None:
        meta, spec = pod["metadata"], pod.get("spec", {})
        deleting = meta.get("deletionTimestamp") is not None
        with self._lock:
            process = self._pods.get(meta["uid"])
        if process is not None:
            process.pod = pod
            if deleting:
                process.terminate(process.grace(deleting=True), delete_pod=True)
        elif deleting:
            if CLAIM in (meta.get("annotations") or {}):
                # Claimed by an earlier runner (a restarted dev-cluster), or its process already ended: nobody
                # else will delete it.
                self.delete(pod)
        elif (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed") and self._runs_here(
            spec.get("nodeName")
        ):
            with self._lock:
                # The watch of another selector was quicker, or stop() has already stopped every process.
                if meta["uid"] in self._pods or self._stopping.is_set():
                    return
                process = self._pods[meta["uid"]] = _PodProcess(self, selector, pod)
            process.start()

    def _deleted(self, pod: dict[str, Any]) -> None:
        with self._lock:
            process = self._pods.get(pod["metadata"]["uid"])
        if process is not None:
            # Force-deleted: the pod's own grace period, never the 0 the deletion asked for.
            process.terminate(process.grace(deleting=False), delete_pod=False)

    def _runs_here(self, node: str | None) -> bool:
        if not node:
            return False
        if node not in self._fake_nodes:
            try:
                annotations = self._core.read_node(node).metadata.annotations or {}
            except ApiException:
                return False
            if annotations.get(KWOK_ANNOTATION) != "fake":
                return False
            self._fake_nodes.add(node)
        return True

    # -- used by _PodProcess ---------------------------------------------------------------------------------

    def claim(self, pod: Mapping[str, Any]) -> bool:
        """Annotate the pod so kwok leaves its deletion to us; False when it is already gone."""
        try:
            self._core.patch_namespaced_pod(
                pod["metadata"]["name"],
                pod["metadata"]["namespace"],
                {"metadata": {"annotations": {CLAIM: "true"}}},
            )
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def resolve(self, pod: Mapping[str, Any]) -> tuple[list[str], dict[str, str]]:
        namespace = pod["metadata"]["namespace"]

        def lookup(kind: str, name: str) -> dict[str, str] | None:
            try:
                if kind == "Secret":
                    data = self._core.read_namespaced_secret(name, namespace).data or {}
                    return {k: base64.b64decode(v).decode() for k, v in data.items()}
                return dict(self._core.read_namespaced_config_map(name, namespace).data or {})
            except ApiException as exc:
                if exc.status == 404:
                    return None
                raise

        container = pod["spec"]["containers"][0]
        env = podenv.environment(pod, container, lookup)
        argv = podenv.command_line(container, env)
        overlay = self.env_overlay(pod) if callable(self.env_overlay) else self.env_overlay
        return argv, {**self.base_env, "HOSTNAME": pod["metadata"]["name"], **env, **overlay}

    def delete(self, pod: Mapping[str, Any]) -> None:
        """Delete the pod object now, as the kubelet does once its containers are gone."""
        meta = pod["metadata"]
        options = client.V1DeleteOptions(
            grace_period_seconds=0, preconditions=client.V1Preconditions(uid=meta["uid"])
        )
        try:
            self._core.delete_namespaced_pod(meta["name"], meta["namespace"], body=options)
        except ApiException as exc:
            # 404: already gone; 409: the name now belongs to a newer pod.
            if exc.status not in (404, 409):
                raise

    def forget(self, process: _PodProcess) -> None:
        with self._lock:
            if self._pods.get(process.uid) is process:
                del self._pods[process.uid]

    def pod_dir(self, pod: Mapping[str, Any]) -> Path:
        return self.directory / "pods" / f"{pod['metadata']['namespace']}_{pod['metadata']['name']}"

    def note(self, message: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} {message}\n"
        with self._log_lock, self.log_path.open("a") as log:
            log.write(line)

    # -- for tests -------------------------------------------------------------------------------------------

    def pids(self) -> dict[str, int]:
        """`namespace/name` -> pid of each pod's running process."""
        with self._lock:
            processes = list(self._pods.values())
        return {_key(p.pod): p.pid for p in processes if p.pid is not None}

    def pod_log(self, namespace: str, name: str) -> str:
        path = self.directory / "pods" / f"{namespace}_{name}" / "log"
        return path.read_text(errors="replace") if path.exists() else ""

    def logs(self, lines: int = 40) -> dict[str, str]:
        out = {"podrunner": tail(self.log_path, lines)}
        for log in sorted((self.directory / "pods").glob("*/log")):
            out[log.parent.name.replace("_", "/", 1)] = tail(log, lines)
        return out


class _PodProcess(threading.Thread):
    """One pod's process, from start to the pod's deletion. Its thread outlives the process: the process was
    started with PDEATHSIG, which fires when the starting thread ends."""

    def __init__(self, runner: PodRunner, selector: str, pod: dict[str, Any]):
        super().__init__(name=f"pod {_key(pod)}", daemon=True)
        self.runner, self.selector, self.pod = runner, selector, pod
        self.uid = pod["metadata"]["uid"]
        self.pid: int | None = None
        self._stop_requested = threading.Event()
        self._grace = 0.0
        self._delete_pod = False

    def grace(self, *, deleting: bool) -> float:
        return _grace(self.pod, deleting=deleting)

    def terminate(self, grace: float, *, delete_pod: bool) -> None:
        # The first request sets the grace period, as for the kubelet; a later one may only ask to delete.
        if not self._stop_requested.is_set():
            self._grace = grace
        self._delete_pod = self._delete_pod or delete_pod
        self._stop_requested.set()

    def run(self) -> None:
        runner, key = self.runner, _key(self.pod)
        directory = runner.pod_dir(self.pod)
        directory.mkdir(parents=True, exist_ok=True)
        proc: subprocess.Popen | None = None
        try:
            if not runner.claim(self.pod):
                return
            backoff = 1.0
            while not self._stop_requested.is_set():
                proc, started = self._start(directory), time.monotonic()
                if proc is not None:
                    while proc.poll() is None and not self._stop_requested.wait(0.2):
                        pass
                    if self._stop_requested.is_set():
                        break
                    self.pid = None
                    policy = self.pod["spec"].get("restartPolicy", "Always")
                    runner.note(f"{key}: exited with {proc.returncode} (restartPolicy {policy})")
                    if not _restarts(policy, proc.returncode):
                        self._stop_requested.wait()
                        break
                    # A process that ran a while earns a fresh back-off, like the kubelet's reset.
                    backoff = 1.0 if time.monotonic() - started > 10 else backoff
                self._stop_requested.wait(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
            if proc is not None:
                self._end(proc)
            if self._delete_pod:
                runner.delete(self.pod)
                runner.note(f"{key}: pod deleted")
        except Exception as exc:  # the runner's log is where a test looks for this
            runner.note(f"{key}: {type(exc).__name__}: {exc}")
            if proc is not None:
                self._end(proc)
        finally:
            self.pid = None
            runner.forget(self)

    def _start(self, directory: Path) -> subprocess.Popen | None:
        key = _key(self.pod)
        try:
            argv, env = self.runner.resolve(self.pod)
        except podenv.Unresolvable as exc:
            self.runner.note(f"{key}: cannot start: {exc}")
            return None
        with (directory / "log").open("ab") as log:
            try:
                proc = subprocess.Popen(
                    argv,
                    env=env,
                    cwd=self.runner.workdir or directory,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    # Its own process group, the "container": SIGKILL reaches everything it started.
                    start_new_session=True,
                    preexec_fn=die_with_parent,
                )
            except OSError as exc:
                self.runner.note(f"{key}: cannot start {argv[0]!r}: {exc}")
                return None
        self.pid = proc.pid
        # One line per start, however many lines a `python -c` script has.
        command = " ".join(argv).replace("\n", "\\n")[:300]
        self.runner.note(f"{key}: started pid {proc.pid}: {command}")
        return proc

    def _end(self, proc: subprocess.Popen) -> None:
        key = _key(self.pod)
        if proc.poll() is None:
            self.runner.note(f"{key}: SIGTERM to pid {proc.pid}, grace {self._grace:g}s")
            # Like a container runtime: SIGTERM to the main process only, it tells its children.
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=self._grace)
                self.runner.note(f"{key}: exited with {proc.returncode} after SIGTERM")
            except subprocess.TimeoutExpired:
                self.runner.note(f"{key}: still running after {self._grace:g}s: SIGKILL")
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
