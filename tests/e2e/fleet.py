"""Helpers for the operator's e2e tests: the operator as a process, GpuTaskQueues, waiting, and task accounting."""

from __future__ import annotations

import collections
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import redis
import yaml
from celery import Celery

from gpufleet_worker.app import configure
from support import Kubectl, crd_established, wait_for

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CRD = ROOT / "charts" / "gpufleet" / "files" / "gputaskqueues.crd.yaml"


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


def queue_manifest(name: str, redis_url: str | None, queues: list[str], *, scaling: dict | None = None,
                   worker: dict | None = None, broker: dict | None = None) -> str:  # fmt: skip
    """A GpuTaskQueue of the e2e worker image on the process pods; `redis_url` None: `broker` says where."""
    body = {
        "apiVersion": "gpufleet.dev/v1alpha1",
        "kind": "GpuTaskQueue",
        "metadata": {"name": name},
        "spec": {
            "broker": {**({"url": redis_url} if redis_url else {}), **(broker or {})},
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


def apply_crd(env: dict[str, str]) -> None:
    """Apply the GpuTaskQueue CRD and wait until it is established."""
    kubectl = Kubectl("kubectl", dict(env))
    kubectl.run("apply", "-f", str(CRD))
    wait_for("the CRD established", lambda: crd_established(kubectl))
