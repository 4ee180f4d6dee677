"""The Docker engine and the images `make images` builds, for the tests that run them (tests/images, and
tests/e2e/test_images.py): containers started with the `docker` CLI, always removed after the test.

Without an engine or an image those tests fail under CI (CI=true: `make test` builds the images first, so a
missing one is a bug) and are skipped elsewhere with the command that makes them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from support import wait_for

REPO = Path(__file__).resolve().parents[1]
IMAGES = {
    "operator": "gpufleet-operator:dev",
    "worker-cpu": "gpufleet-worker:dev-cpu",
    "worker-cuda": "gpufleet-worker:dev-cuda",
}
# Docker applies this to every container a test starts: `docker ps -a --filter label=...` finds leftovers.
LABEL = "dev.gpufleet.test"
WORKER_RUNTIME = "/tmp/gpufleet"  # the worker image's one writable path (worker_image/Dockerfile)
NON_ROOT = "10001"


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{reason} (CI=true: `make test` runs `make images` first)", pytrace=False)
    pytest.skip(reason)


def docker(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    done = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} exited {done.returncode}:\n{done.stdout}{done.stderr}")
    return done


def require_engine() -> None:
    if not shutil.which("docker"):
        _unavailable("no docker CLI: run hack/docker-engine.sh start (or make images)")
    info = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=60)
    if info.returncode != 0:
        last = (info.stderr.strip().splitlines() or [f"exit {info.returncode}"])[-1]
        _unavailable(f"no Docker engine answers ({last}): run hack/docker-engine.sh start (or make images)")


def require_image(role: str) -> str:
    """The name of the image `role` (a key of IMAGES), which must exist on the engine."""
    require_engine()
    image = IMAGES[role]
    if docker("image", "inspect", image, check=False).returncode != 0:
        _unavailable(f"the image {image} is not built: run make images (hack/images.sh {role})")
    return image


def inspect(ref: str) -> dict[str, Any]:
    return json.loads(docker("inspect", ref).stdout)[0]


class Container:
    """`docker run -d` of one image; removed (with its volumes) by close(), its log kept for reports."""

    def __init__(self, image: str, *args: str, options: tuple[str, ...] = (), name: str = "gpufleet-test"):
        self.name = f"{name}-{uuid.uuid4().hex[:8]}"
        self.argv = ["run", "--detach", "--name", self.name, "--label", LABEL, *options, image, *args]
        self.id: str | None = None

    def start(self) -> Container:
        self.id = docker(*self.argv).stdout.strip()
        return self

    def logs(self) -> str:
        done = docker("logs", self.name, check=False)
        return done.stdout + done.stderr

    def state(self) -> dict[str, Any]:
        return inspect(self.name)["State"]

    def running(self) -> bool:
        return self.state()["Running"]

    def exec(self, *argv: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        return docker("exec", self.name, *argv, check=check, timeout=timeout)

    def wait_log(self, text: str, timeout: float = 120) -> str:
        """Wait until `text` is in the log; fail early, with the log, if the container stops."""

        def seen():
            log = self.logs()
            if text in log:
                return log
            if not self.running():
                raise AssertionError(
                    f"{self.name} exited ({self.state()['ExitCode']}) before {text!r}:\n{log}"
                )
            return None

        return wait_for(f"{text!r} in the log of {self.name}", seen, timeout)

    def wait_exit(self, timeout: float = 120) -> int:
        done = docker("wait", self.name, timeout=timeout)
        return int(done.stdout.strip())

    def close(self) -> None:
        docker("rm", "--force", "--volumes", self.name, check=False)

    def __enter__(self) -> Container:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


def read_only_options(writable: str) -> tuple[str, ...]:
    """A read-only root filesystem with `writable` as a tmpfs owned by the images' user: what a pod with
    readOnlyRootFilesystem and an emptyDir gets."""
    return ("--read-only", "--tmpfs", f"{writable}:uid={NON_ROOT},gid={NON_ROOT},mode=0700")


@contextmanager
def user_image(base: str, context: Path, tag: str) -> Iterator[str]:
    """A user's image, as the README says (FROM the worker image + their module): tests/worker/worker_user_app.py
    on top of `base`, built in `context` as `tag`, and removed afterwards."""
    shutil.copy(REPO / "tests" / "worker" / "worker_user_app.py", context)
    (context / "Dockerfile").write_text(
        f"FROM {base}\nCOPY worker_user_app.py /opt/app/\nENV PYTHONPATH=/opt/app\n"
    )
    docker("build", "--quiet", "--tag", tag, str(context), timeout=300)
    try:
        yield tag
    finally:
        docker("image", "rm", tag, check=False)
