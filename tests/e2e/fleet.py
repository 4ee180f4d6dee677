"""Helpers for the operator's e2e tests: the operator as a process, GpuTaskQueues, waiting, and task accounting."""

from __future__ import annotations

import collections
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from celery import Celery

from gpufleet_worker.app import configure

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CRD = ROOT / "charts" / "gpufleet" / "files" / "gputaskqueues.crd.yaml"


def wait_for(
    what: str,
    check: Callable[[], Any],
    timeout: float = 90.0,
    every: float = 0.2,
    show: Callable[[], Any] | None = None,
) -> Any:
    """Poll until `check()` is truthy; fail naming `what` and the last value seen (or what `show()` then
    returns, when the check itself answers only yes or no)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every)
    seen = show() if show is not None else last
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last seen: {seen!r}")


class Operator:
    """`python -m gpufleet` against the test cluster, watching one namespace."""

    def __init__(self, env: dict[str, str], namespace: str, log_dir: Path, *extra: str) -> None:
        self.env = {**env, "GPUFLEET_METRICS_PORT": "0", "PYTHONUNBUFFERED": "1"}
        self.args = [
            sys.executable,
            "-m",
            "gpufleet",
            "run",
            "--namespace",
            namespace,
            "--liveness",
            "",
            *extra,
        ]
        self.log_path = log_dir / f"operator-{namespace}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> Operator:
        log = open(self.log_path, "a")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(self.args, env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        return self

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def assert_no_traceback(self) -> None:
        """Every fault the operator expects is handled and shown on the queue: a traceback in its log is a bug,
        even when the test's own assertions held."""
        log = self.log()
        at = log.find("Traceback (most recent call last)")
        if at >= 0:
            pytest.fail(f"the operator logged a traceback:\n{log[at : at + 4000]}")


def queue_manifest(name: str, redis_url: str, queues: list[str], *, scaling: dict | None = None, worker: dict | None = None,
                   broker: dict | None = None) -> str:  # fmt: skip
    body = {
        "apiVersion": "gpufleet.dev/v1alpha1",
        "kind": "GpuTaskQueue",
        "metadata": {"name": name},
        "spec": {
            "broker": {"url": redis_url, **(broker or {})},
            "queues": queues,
            "worker": {
                "image": "gpufleet-worker:e2e",
                "celeryApp": "e2e_app:app",
                "gpus": 1,
                "requireGpu": False,  # the process pods run on this machine, which has no GPU: NumPy it is
                "env": [
                    {"name": "PYTHONPATH", "value": str(HERE)},  # e2e_app
                    # The pod's heartbeat path is shared by all local processes: each pod writes in its own dir.
                    {"name": "GPUFLEET_HEARTBEAT_FILE", "value": "heartbeat"},
                    {"name": "OMP_NUM_THREADS", "value": "1"},
                ],
                "terminationGracePeriodSeconds": 60,
                "taskTimeLimitSeconds": 120,
                "visibilityTimeoutSeconds": 300,
                **(worker or {}),
            },
            "scaling": {
                "maxReplicas": 4,
                "scaleDownStabilizationSeconds": 4,
                "idleSecondsBeforeZero": 6,
                "pollIntervalSeconds": 0.5,
                **(scaling or {}),
            },
        },
    }
    return yaml.safe_dump(body)


class Tasks:
    """A producer of e2e.work tasks, and the accounting of their runs from what the workers left in Redis."""

    def __init__(self, redis_url: str, queue: str) -> None:
        self.redis_url, self.queue = redis_url, queue
        self.app = Celery("e2e-producer")
        configure(
            self.app,
            {"GPUFLEET_BROKER_URL": redis_url, "GPUFLEET_QUEUES": queue, "GPUFLEET_RESULT_BACKEND": ""},
        )
        self.sent: list[str] = []

    def send(self, n: int, seconds: float, prefix: str = "t") -> None:
        for _ in range(n):
            marker = f"{prefix}{len(self.sent)}"
            self.app.send_task("e2e.work", args=[marker, seconds], queue=self.queue)
            self.sent.append(marker)

    def runs(self) -> list[dict]:
        client = redis.Redis.from_url(self.redis_url)
        return [json.loads(x) for x in client.lrange("e2e:runs", 0, -1)]

    def done(self) -> list[str]:
        return [x.decode() for x in redis.Redis.from_url(self.redis_url).lrange("e2e:done", 0, -1)]

    def all_done(self) -> bool:
        return set(self.done()) >= set(self.sent)

    def duplicates(self) -> dict[str, int]:
        counts = collections.Counter(r["marker"] for r in self.runs())
        return {m: n for m, n in counts.items() if n > 1}

    def close(self) -> None:
        self.app.close()


class Kubectl:
    """kubectl against the test cluster, with JSON reads."""

    def __init__(self, binary: str, env: dict[str, str], namespace: str | None = None) -> None:
        self.binary, self.env, self.namespace = binary, env, namespace

    def run(self, *args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        ns = ["--namespace", self.namespace] if self.namespace else []
        out = subprocess.run(
            [self.binary, *ns, *args], env=self.env, input=stdin, capture_output=True, text=True, timeout=120
        )
        if check and out.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {out.stderr}")
        return out

    def apply(self, manifest: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.run("apply", "-f", "-", stdin=manifest, check=check)

    def get(self, kind: str, name: str | None = None) -> Any:
        out = self.run("get", kind, *([name] if name else []), "-o", "json", check=False)
        return json.loads(out.stdout) if out.returncode == 0 else None

    def replicas(self, deployment: str) -> int | None:
        dep = self.get("deployment", deployment)
        return None if dep is None else dep["spec"]["replicas"]

    def status(self, gtq: str) -> dict:
        obj = self.get("gtq", gtq)
        return (obj or {}).get("status") or {}

    def condition(self, gtq: str, type_: str) -> dict:
        return next((c for c in self.status(gtq).get("conditions", []) if c["type"] == type_), {})

    def events(self, name: str) -> list[dict]:
        items = (self.get("events") or {}).get("items", [])
        return [e for e in items if e["involvedObject"].get("name") == name]

    def pods(self, selector: str) -> list[dict]:
        return json.loads(self.run("get", "pods", "-l", selector, "-o", "json").stdout)["items"]


def apply_crd(env: dict[str, str]) -> None:
    """Apply the GpuTaskQueue CRD and wait until it is established."""
    kubectl = Kubectl("kubectl", dict(env))
    kubectl.run("apply", "-f", str(CRD))
    # Not `kubectl wait`: it fails outright while a new CRD has no status.conditions yet.
    wait_for("the CRD established", lambda: any(
        c["type"] == "Established" and c["status"] == "True"
        # A new CRD's status may carry `conditions: null` before the first one.
        for c in (kubectl.get("crd", "gputaskqueues.gpufleet.dev").get("status") or {}).get("conditions") or []
    ))  # fmt: skip
