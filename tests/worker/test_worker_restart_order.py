"""A restarted container restores what its predecessor held, and never its own first deliveries.

The worker names each delivery in its state entry as it arrives, and at start puts back what the same pod's
previous container named there. If that restore ran after the first deliveries arrived, it would take them for
the predecessor's and put them back: they would run twice.
"""

from __future__ import annotations

import json
import time

import pytest
import redis
from celery import Celery
from workerproc import Worker, worker_env

from gpufleet_worker import contract, state
from gpufleet_worker.app import configure
from gpufleet_worker.settings import from_env
from support import wait_for

TIMEOUT = 120
STATE_KEY = "gpufleet:workers:team-a/matrix"
pytestmark = pytest.mark.slow


def test_tasks_queued_before_a_restart_run_once_and_the_predecessors_come_back(redis_url, tmp_path):
    markers = tmp_path / "runs"
    markers.mkdir()
    env = worker_env(redis_url, tmp_path, GPUFLEET_POD_NAME="matrix-0", GPUFLEET_STATE_INTERVAL="5")
    producer = Celery("producer")
    configure(producer, env)
    client = redis.Redis.from_url(redis_url)
    # The previous container of pod matrix-0 died holding one delivery: unacked, named in its entry.
    held = producer.send_task("user.sleep", args=(0.2, str(markers)), queue="gpu")
    raw = wait_for("the task to be queued", lambda: client.rpop("gpu"), TIMEOUT)
    client.hset("unacked", "tag-of-the-dead", json.dumps([json.loads(raw), "", "gpu"]))
    entry = contract.WorkerState.fresh(1, 0, time.time(), time.time(), 5, ("tag-of-the-dead",))
    client.hset(STATE_KEY, "matrix-0", entry.to_json("matrix-0@gpufleet"))
    # Work waiting for the new container: its first deliveries arrive as soon as it is ready.
    waiting = [producer.send_task("user.sleep", args=(0.2, str(markers)), queue="gpu") for _ in range(5)]
    with Worker(env, tmp_path / "worker.log", app="worker_user_app:app"):
        for result in [held, *waiting]:
            assert result.get(timeout=TIMEOUT) == "slept"
        time.sleep(1)  # room for a wrongly put-back copy to run again
    runs = sorted(p.name for p in markers.glob("run-*"))
    assert len(runs) == 6, (
        f"6 tasks ran {len(runs)} times: {runs}\n{(tmp_path / 'worker.log').read_text()[-3000:]}"
    )


class _Idle(state.Keeper):
    """A keeper whose thread does nothing: what start() itself did is all there is to see."""

    def run(self) -> None:
        return None


def test_the_predecessors_deliveries_are_back_before_start_returns(redis_url):
    """worker_ready starts the keeper before the consumer takes its first message: by the time start() returns,
    the previous container's deliveries must be back in their queue and its entry no longer names them."""
    env = {"GPUFLEET_BROKER_URL": redis_url, "GPUFLEET_FLEET": "team-a/matrix", "GPUFLEET_POD_NAME": "matrix-0",
           "GPUFLEET_QUEUES": "gpu"}  # fmt: skip
    client = redis.Redis.from_url(redis_url)
    message = {"body": "e30=", "headers": {"id": "t-1"}, "properties": {"delivery_tag": "dead-tag"}}
    client.hset("unacked", "dead-tag", json.dumps([message, "", "gpu"]))
    entry = contract.WorkerState.fresh(1, 0, time.time(), time.time(), 5, ("dead-tag",))
    client.hset(STATE_KEY, "matrix-0", entry.to_json("matrix-0@gpufleet"))
    keeper = _Idle(from_env(env), "matrix-0@gpufleet", client)
    try:
        keeper.start()
        assert client.llen("gpu") == 1, "start() returned before the predecessor's delivery was put back"
        assert not client.hexists("unacked", "dead-tag")
        assert state._current is keeper  # deliveries are named from now on
    finally:
        keeper.stop()
