"""A real worker's life: heartbeat, worker-state entry, warm shutdown, killed workers, start-up refusals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import redis
from celery import Celery
from workerproc import READY_TIMEOUT, Worker, worker_env

from gpufleet_worker.app import configure
from support import wait_for

TIMEOUT = 120
STATE_KEY = "gpufleet:workers:team-a/matrix"


def producer_for(env) -> Celery:
    app = Celery("producer")
    configure(app, env)
    return app


def runs(marker_dir) -> list[int]:
    return sorted(int(p.read_text()) for p in marker_dir.glob("run-*"))


def entry(client, field="matrix-0"):
    raw = client.hget(STATE_KEY, field)
    return json.loads(raw) if raw else None


def health(env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gpufleet_worker.health"], env=env, capture_output=True, text=True
    )


def test_heartbeat_and_worker_state_follow_the_work(redis_url, tmp_path):
    env = worker_env(redis_url, tmp_path)
    client = redis.Redis.from_url(redis_url)
    (tmp_path / "heartbeat").write_text("left by an earlier container")
    os.utime(tmp_path / "heartbeat", (0, 0))
    markers = tmp_path / "runs"
    markers.mkdir()
    with Worker(env, tmp_path / "worker.log", app="worker_user_app:app") as worker:
        assert health(env).returncode == 0, health(env).stderr

        idle = wait_for("the worker's state entry", lambda: entry(client), TIMEOUT)
        assert idle["busy"] is False and idle["active"] == 0 and idle["done"] == 0
        assert idle["hostname"] == "matrix-0@gpufleet"
        assert idle["expires"] > time.time()

        result = producer_for(env).send_task("user.sleep", args=(3, str(markers)))
        busy = wait_for("the entry to turn busy", lambda: (e := entry(client)) and e["busy"] and e, TIMEOUT)
        assert busy["active"] == 1 and busy["since"] >= idle["since"]
        assert result.get(timeout=TIMEOUT) == "slept"
        done = wait_for(
            "the entry to count 1 done", lambda: (e := entry(client)) and e["done"] == 1 and e, TIMEOUT
        )
        assert done["busy"] is False and done["active"] == 0 and done["since"] >= busy["since"]

        # Another pod's entry that expired is swept; a live one is left alone.
        client.hset(STATE_KEY, "dead-pod", json.dumps({"busy": True, "expires": time.time() - 1}))
        client.hset(STATE_KEY, "live-pod", json.dumps({"busy": True, "expires": time.time() + 600}))
        wait_for("the stale entry to be removed", lambda: not client.hexists(STATE_KEY, "dead-pod"), TIMEOUT)
        assert client.hexists(STATE_KEY, "live-pod")

        worker.signal(signal.SIGTERM)
        assert worker.wait_exit() == 0
        assert entry(client) is None, "a worker that shut down must remove its entry"

    # Nobody refreshes the heartbeat of a stopped worker: the probe fails once it is older than allowed.
    strict = {**env, "GPUFLEET_HEARTBEAT_MAX_AGE": "1"}
    stale = wait_for("the heartbeat to go stale", lambda: (p := health(strict)).returncode == 1 and p, 30)
    assert "unhealthy: heartbeat" in stale.stderr and "limit 1s" in stale.stderr


@pytest.mark.parametrize("pool", ["solo", "prefork"])
def test_sigterm_lets_the_running_task_finish(redis_url, tmp_path, pool):
    env = worker_env(redis_url, tmp_path)
    markers = tmp_path / "runs"
    markers.mkdir()
    with Worker(env, tmp_path / "worker.log", app="worker_user_app:app", pool=pool) as worker:
        result = producer_for(env).send_task("user.sleep", args=(4, str(markers)))
        wait_for("the task to start", lambda: runs(markers), TIMEOUT)
        worker.signal(signal.SIGTERM)
        assert worker.wait_exit() == 0
        assert result.get(timeout=TIMEOUT) == "slept"
        assert len(runs(markers)) == 1
        assert "Warm shutdown" in worker.log()


def test_a_killed_workers_task_runs_again_on_another_worker(redis_url, tmp_path):
    # A short visibility timeout so Redis hands the unacknowledged task out again within the test.
    # The task (2.5 s) stays under the visibility timeout, or Redis would also hand out the second run.
    env = worker_env(redis_url, tmp_path, GPUFLEET_VISIBILITY_TIMEOUT="5", GPUFLEET_TASK_TIME_LIMIT="4")
    markers = tmp_path / "runs"
    markers.mkdir()
    first = Worker(env, tmp_path / "first.log", app="worker_user_app:app")
    with first:
        result = producer_for(env).send_task("user.sleep", args=(2.5, str(markers)))
        wait_for("the task to start", lambda: runs(markers), TIMEOUT)
        os.killpg(first.proc.pid, signal.SIGKILL)
        first.wait_exit()
    assert result.state == "PENDING"
    second_env = {**env, "GPUFLEET_POD_NAME": "matrix-1"}
    with Worker(second_env, tmp_path / "second.log", app="worker_user_app:app"):
        assert result.get(timeout=TIMEOUT) == "slept"
    assert len(runs(markers)) == 2


def test_a_killed_pool_process_has_its_task_requeued(redis_url, tmp_path):
    env = worker_env(redis_url, tmp_path)
    markers = tmp_path / "runs"
    markers.mkdir()
    with Worker(env, tmp_path / "worker.log", app="worker_user_app:app", pool="prefork"):
        result = producer_for(env).send_task("user.sleep", args=(4, str(markers)))
        (child,) = wait_for("the task to start", lambda: runs(markers), TIMEOUT)
        os.kill(child, signal.SIGKILL)
        assert result.get(timeout=TIMEOUT) == "slept"
        pids = runs(markers)
        assert len(pids) == 2 and child in pids


def test_a_users_gpu_task_gets_xp_and_device_arrays(redis_url, tmp_path):
    env = worker_env(redis_url, tmp_path)
    with Worker(env, tmp_path / "worker.log", app="worker_user_app:app"):
        got = producer_for(env).send_task("user.scale", args=(np.arange(4.0), 2.5)).get(timeout=TIMEOUT)
    np.testing.assert_allclose(got["scaled"], np.arange(4.0) * 2.5)
    assert got["on_device"] is True and got["xp"] == "numpy"


def test_a_result_the_codec_refuses_fails_the_task_not_the_worker(redis_url, tmp_path):
    env = worker_env(redis_url, tmp_path)
    with Worker(env, tmp_path / "worker.log", app="worker_user_app:app") as worker:
        producer = producer_for(env)
        result = producer.send_task("user.object_result")
        with pytest.raises(Exception, match="numeric and bool arrays only, not dtype object"):
            result.get(timeout=TIMEOUT)
        assert worker.proc.poll() is None
        got = producer.send_task("user.scale", args=(np.ones(2), 3)).get(timeout=TIMEOUT)
        np.testing.assert_allclose(got["scaled"], [3, 3])


def _start_and_fail(env, tmp_path, app="gpufleet_worker.app:app") -> str:
    worker = Worker(env, tmp_path / "worker.log", app=app).start()
    try:
        assert worker.wait_exit(READY_TIMEOUT) != 0
        return worker.log()
    finally:
        worker.close()


def _cuda_usable() -> bool:
    from gpufleet_worker.device import probe_gpu_count

    return probe_gpu_count()[0] > 0


def test_require_gpu_refuses_to_start_without_one(redis_url, tmp_path):
    if _cuda_usable():
        pytest.skip("a CUDA device is present")
    env = worker_env(redis_url, tmp_path, GPUFLEET_GPUS="1", GPUFLEET_REQUIRE_GPU="1")
    log = _start_and_fail(env, tmp_path)
    assert "gpufleet worker cannot start: GPUFLEET_REQUIRE_GPU=1 but" in log
    assert not (tmp_path / "heartbeat").exists()


def test_a_visibility_timeout_below_the_time_limit_is_refused(redis_url, tmp_path):
    env = worker_env(redis_url, tmp_path, GPUFLEET_VISIBILITY_TIMEOUT="60", GPUFLEET_TASK_TIME_LIMIT="120")
    log = _start_and_fail(env, tmp_path)
    assert (
        "the visibility timeout (60s, GPUFLEET_VISIBILITY_TIMEOUT) must exceed the task time limit (120s"
        in log
    )


def test_a_task_whose_own_time_limit_outlives_the_visibility_timeout_is_refused(redis_url, tmp_path):
    env = worker_env(
        redis_url,
        tmp_path,
        GPUFLEET_VISIBILITY_TIMEOUT="60",
        GPUFLEET_TASK_TIME_LIMIT="30",
        USER_APP_SLOW_TASK="90",
    )
    log = _start_and_fail(env, tmp_path, app="worker_user_app:app")
    assert "the time_limit of task user.slow" in log
