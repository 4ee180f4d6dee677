"""A plain Celery producer against the CPU worker image: a virtualenv with only `celery[redis]` (no gpufleet, no
msgpack, no NumPy) sends a user's own task and gpufleet.matmul with lists, and reads correct JSON results."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import redis
from worker_containers import celery_args, worker_env, worker_options

from docker_engine import REPO
from docker_engine import user_image as build_user_image

TIMEOUT = 120
CELERY = next(
    line
    for line in (REPO / "worker_image" / "requirements.txt").read_text().splitlines()
    if line.startswith("celery==")
)
CACHE = Path.home() / ".cache" / "gpufleet"


def _plain_venv() -> Path:
    """A virtualenv with celery[redis] alone, at the worker image's Celery version; built once and kept.
    Offline from the wheels `make images` keeps, where they are; else from the package index."""
    venv = CACHE / f"plain-producer-{CELERY.replace('==', '-')}-py{sys.version_info[0]}{sys.version_info[1]}"
    python = venv / "bin" / "python"
    if python.exists():
        return python
    building = venv.with_name(venv.name + ".building")
    shutil.rmtree(building, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(building)], check=True)
    wheels = sorted((CACHE / "wheels").glob("worker-cpu-*"))
    source = ["--no-index", "--find-links", str(wheels[-1])] if wheels else []
    done = subprocess.run(
        [str(building / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check", *source,
         f"celery[redis]{CELERY[len('celery'):]}"],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    if done.returncode != 0:
        shutil.rmtree(building, ignore_errors=True)
        pytest.fail(f"cannot build the plain producer's virtualenv: {done.stdout}{done.stderr}")
    # Its python finds its packages from where it lies (pyvenv.cfg beside bin/), so the venv can move into place;
    # only the scripts in bin/ keep the old path, and none is used.
    building.rename(venv)
    return python


@pytest.fixture(scope="module")
def plain_python() -> str:
    python = _plain_venv()
    for module in ("gpufleet_worker", "msgpack", "numpy"):
        absent = subprocess.run([str(python), "-c", f"import {module}"], capture_output=True)
        assert absent.returncode != 0, f"{module} is installed in the plain producer's virtualenv {python}"
    return str(python)


@pytest.fixture(scope="module")
def user_image(worker_cpu_image, tmp_path_factory):
    """A user's image: their own Celery app (which calls configure(app)) on top of the worker image."""
    with build_user_image(worker_cpu_image, tmp_path_factory.mktemp("plain-producer-image"),
                          "gpufleet-worker:test-plain-producer") as image:  # fmt: skip
        yield image


def test_a_plain_producer_reads_a_users_task_and_the_librarys(
    redis_url, user_image, plain_python, containers
):
    env = worker_env(redis_url, "cpu-plain-producer", GPUFLEET_GPUS="0")
    worker = containers(user_image, *celery_args(env, "worker_user_app:app"), options=worker_options(env))
    worker.wait_log(" ready.", TIMEOUT)
    calls = [
        {"task": "user.total", "args": [[2.5, 4.0], [2, 3]]},
        {"task": "gpufleet.matmul", "args": [[[1.0, 2.0], [3.0, 4.0]], [[5.0], [6.0]]]},
        {"task": "gpufleet.matmul", "args": [[[1, 2], [3]], [[1], [2]]]},
        {
            "chord": [{"task": "user.total", "args": [[i], [1]]} for i in range(10)],
            "body": {"task": "user.count"},
        },
    ]
    done = subprocess.run(
        [plain_python, str(REPO / "tests" / "worker" / "plain_producer.py"), redis_url, env["GPUFLEET_QUEUES"]],
        input=json.dumps(calls), capture_output=True, text=True, timeout=4 * TIMEOUT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["loaded"] == []
    got = out["results"]
    assert got[0] == {"ok": {"total": 17.0, "items": 2}}
    assert got[1] == {"ok": [[17.0], [39.0]]}
    assert got[2]["error"] == "ValueError" and "argument a is not an array of numbers" in got[2]["message"]
    assert got[3] == {"ok": 10}
    # The worker lived through the bad payload, and every result it wrote is JSON.
    assert worker.state()["Running"]
    client = redis.Redis.from_url(redis_url)
    stored = [client.get(key) for key in client.keys("celery-task-meta-*")]
    assert stored and all(value.startswith(b"{") for value in stored)
