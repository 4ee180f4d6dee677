"""The CPU worker image (gpufleet-worker:dev-cpu) consumes real tasks from a real redis-server, run the way a
fleet's pod runs it: non-root, read-only root filesystem, tini as PID 1, liveness from the heartbeat file."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import redis
from worker_containers import celery_args, producer, state_key, worker_env, worker_options

from docker_engine import NON_ROOT, WORKER_RUNTIME, Container, docker
from docker_engine import user_image as build_user_image
from gpufleet_worker.errors import PayloadError
from support import wait_for

TIMEOUT = 120
# Every process of the container, with its uid: tini and Celery alike must run as the image's user.
PROCESS_UIDS = (
    "import os\n"
    "for pid in filter(str.isdigit, os.listdir('/proc')):\n"
    "    fields = dict(l.split(':', 1) for l in open(f'/proc/{pid}/status') if ':' in l)\n"
    "    print(pid, fields['Name'].strip(), fields['Uid'].split()[0])\n"
)


@pytest.fixture(scope="module")
def fleet(redis_server, worker_cpu_image):
    """One worker container for the module, and a producer on the same broker."""
    redis_server.start()
    redis.Redis.from_url(redis_server.url).flushall()
    env = worker_env(redis_server.url, "cpu-library", GPUFLEET_GPUS="0")
    with Container(worker_cpu_image, *celery_args(env), options=worker_options(env)) as worker:
        try:
            worker.wait_log(" ready.", TIMEOUT)
            app = producer(env)
            yield app, worker
            app.close()
        finally:
            print(f"--- log of {worker.name} ---\n{worker.logs()[-6000:]}")


def call(app, name, *args, **kwargs):
    return app.send_task(name, args=args, kwargs=kwargs).get(timeout=TIMEOUT)


def test_library_tasks_return_numpy_results(fleet):
    app, worker = fleet
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((17, 9)).astype(np.float32), rng.standard_normal((9, 5)).astype(np.float32)
    out = call(app, "gpufleet.matmul", a, b)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    np.testing.assert_allclose(out, a @ b, rtol=1e-5)
    x = rng.standard_normal((8, 6))
    np.testing.assert_allclose(call(app, "gpufleet.fft", x), np.fft.fftn(x), atol=1e-9)
    np.testing.assert_allclose(call(app, "gpufleet.reduce", x, "std", axis=0), x.std(axis=0))
    assert "gpufleet device: NumPy on the CPU (GPUFLEET_GPUS=0)" in worker.logs()


def test_a_pickle_payload_is_refused_and_the_worker_lives(fleet):
    app, worker = fleet
    result = app.send_task("gpufleet.matmul", args=(np.eye(2), np.eye(2)), serializer="pickle")
    with pytest.raises(PayloadError, match="Refusing to deserialize untrusted content of type pickle"):
        result.get(timeout=TIMEOUT)
    assert result.state == "FAILURE"
    assert worker.running()
    np.testing.assert_allclose(call(app, "gpufleet.matmul", np.eye(3), np.eye(3)), np.eye(3))


def test_it_runs_as_the_non_root_user_on_a_read_only_root_with_tini_as_pid_1(fleet):
    _, worker = fleet
    processes = [line.split() for line in worker.exec("python", "-c", PROCESS_UIDS).stdout.splitlines()]
    assert {name for pid, name, uid in processes if pid == "1"} == {"tini"}
    assert any(name.startswith(("celery", "python")) for _, name, _ in processes), processes
    assert {uid for _, _, uid in processes} == {NON_ROOT}, processes
    # The user's own home is not writable either: the root filesystem is read-only, not merely not ours.
    denied = worker.exec("touch", "/home/gpufleet/x", check=False)
    assert denied.returncode != 0 and "Read-only file system" in denied.stderr
    worker.exec("touch", f"{WORKER_RUNTIME}/x")


def test_the_liveness_command_reads_the_heartbeat_inside_the_image(fleet):
    _, worker = fleet
    healthy = worker.exec("python", "-m", "gpufleet_worker.health", check=False)
    assert healthy.returncode == 0 and "healthy: heartbeat" in healthy.stdout, healthy
    missing = worker.exec(
        "env", f"GPUFLEET_HEARTBEAT_FILE={WORKER_RUNTIME}/none", "python", "-m", "gpufleet_worker.health",
        check=False,
    )  # fmt: skip
    assert missing.returncode == 1 and "no heartbeat" in missing.stderr


@pytest.fixture
def user_image(worker_cpu_image, tmp_path):
    """A user's image: their tasks on top of the worker image, as the README says (FROM + their module)."""
    with build_user_image(worker_cpu_image, tmp_path, "gpufleet-worker:test-user-app") as image:
        yield image


def test_sigterm_mid_task_lets_the_task_finish(redis_url, user_image, containers):
    env = worker_env(redis_url, "cpu-sigterm", GPUFLEET_GPUS="0")
    worker = containers(user_image, *celery_args(env, "worker_user_app:app"), options=worker_options(env))
    worker.wait_log(" ready.", TIMEOUT)
    result = producer(env).send_task("user.sleep", args=(6, WORKER_RUNTIME))
    client = redis.Redis.from_url(redis_url)
    # The worker says it is busy in the broker (docs/worker-contract.md): the task runs now.
    key, pod = state_key(env), env["GPUFLEET_POD_NAME"]
    wait_for("the task to run", lambda: json.loads(client.hget(key, pod) or "{}").get("busy"), TIMEOUT)
    started = time.monotonic()
    # SIGTERM to PID 1 (tini), which passes it on; a worker that ignored it would be killed after 60 s.
    docker("stop", "--time", "60", worker.name, timeout=90)
    stopped_after = time.monotonic() - started
    assert worker.state()["ExitCode"] == 0, worker.logs()
    assert stopped_after < 50, f"docker stop took {stopped_after:.0f}s: SIGTERM did not reach Celery"
    assert result.get(timeout=TIMEOUT) == "slept"
    assert "Warm shutdown" in worker.logs()
    assert client.hget(key, pod) is None, "a worker that shut down removes its state entry"
