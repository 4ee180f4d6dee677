"""A real `celery worker` in a subprocess, with the GPUFLEET_* environment the operator would give it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from support import wait_for

HERE = Path(__file__).resolve().parent

# Deadlines are generous: the suite shares two cores with other builds.
READY_TIMEOUT = 120.0


def worker_env(redis_url: str, tmp_path: Path, **overrides: str) -> dict[str, str]:
    env = {
        **os.environ,
        "GPUFLEET_FLEET": "team-a/matrix",
        "GPUFLEET_POD_NAME": "matrix-0",
        "GPUFLEET_BROKER_URL": redis_url,
        "GPUFLEET_QUEUES": "gpu",
        "GPUFLEET_HEARTBEAT_FILE": str(tmp_path / "heartbeat"),
        "GPUFLEET_STATE_INTERVAL": "1",
        "GPUFLEET_GPUS": "0",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")])),
        "PYTHONUNBUFFERED": "1",
    }
    env.update(overrides)
    return env


class Worker:
    def __init__(self, env: dict[str, str], log: Path, app: str = "gpufleet_worker.app:app",
                 pool: str = "solo", concurrency: int = 1, python: str = sys.executable):  # fmt: skip
        self.env = env
        self.log_path = log
        self.cmd = [
            python, "-m", "celery", "-A", app, "worker",
            "--pool", pool, "--concurrency", str(concurrency),
            "--queues", env["GPUFLEET_QUEUES"],
            "--hostname", f"{env['GPUFLEET_POD_NAME']}@gpufleet",
            "--loglevel", "INFO", "--without-mingle", "--without-gossip",
        ]  # fmt: skip
        self.proc: subprocess.Popen | None = None

    def start(self) -> Worker:
        self._log = open(self.log_path, "ab")
        # A session of its own, so that close() can end the pool's children with the worker.
        self.proc = subprocess.Popen(
            self.cmd, env=self.env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> Worker:
        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited with {self.proc.returncode}:\n{self.log()}")
            return " ready." in self.log()

        wait_for(f"the worker to be ready; log:\n{self.log()}", ready, timeout)
        return self

    def wait_exit(self, timeout: float = READY_TIMEOUT) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"worker did not exit within {timeout:.0f}s:\n{self.log()}") from None

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def close(self) -> None:
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
        self._log.close()

    def __enter__(self) -> Worker:
        return self.start().wait_ready()

    def __exit__(self, *exc) -> None:
        self.close()
