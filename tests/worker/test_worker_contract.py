"""The operator-worker contract end to end: a real worker configured from the environment the operator builds
for its pods writes its state; the operator's probe, laid out from the same spec, reads it and the queues."""

from __future__ import annotations

import time

import pytest
from celery import Celery
from workerproc import Worker, worker_env

from gpufleet.broker import Connection, Layout, RedisProbe, Request
from gpufleet.resources import worker_env as pod_env
from gpufleet.spec import parse_spec
from gpufleet_worker import contract
from gpufleet_worker.app import configure
from support import wait_for

TIMEOUT = 120


@pytest.mark.slow
def test_a_worker_started_from_the_pod_env_is_read_by_the_operator_probe(redis_url, tmp_path):
    spec = parse_spec(
        {
            # The separator as a user types it in YAML with single quotes: its escapes, not the characters.
            "broker": {"url": redis_url, "globalKeyprefix": "team-a:", "separator": "\\x06\\x16"},
            "queues": ["gpu"],
            "worker": {"image": "w:1", "gpus": 0},
        }
    )
    assert spec.broker.separator == contract.KOMBU_SEP
    from_pod = {v["name"]: v["value"] for v in pod_env(spec, "team-a", "matrix") if "value" in v}
    # What the test machine needs on top (PYTHONPATH, a writable heartbeat path, a quick state interval).
    env = worker_env(
        redis_url, tmp_path, **{k: v for k, v in from_pod.items() if k != "GPUFLEET_HEARTBEAT_FILE"}
    )
    assert env["GPUFLEET_GLOBAL_KEYPREFIX"] == "team-a:" and env["GPUFLEET_FLEET"] == "team-a/matrix"
    b = spec.broker
    probe = RedisProbe(Connection(redis_url))
    request = Request("team-a/matrix", spec.queues, Layout(b.global_keyprefix, b.priority_steps, b.separator))

    def read():
        return probe.read([request], time.time())["team-a/matrix"]

    markers = tmp_path / "runs"
    markers.mkdir()
    try:
        with Worker(env, tmp_path / "worker.log", app="worker_user_app:app"):
            idle = wait_for("the worker's entry", lambda: read().workers.get("matrix-0"), TIMEOUT)
            assert not idle.busy and idle.done == 0
            producer = Celery("producer")
            configure(producer, env)
            running = producer.send_task("user.sleep", args=(4, str(markers)), queue="gpu", priority=0)
            wait_for(
                "the entry to turn busy", lambda: (w := read().workers.get("matrix-0")) and w.busy, TIMEOUT
            )
            waiting = producer.send_task("user.sleep", args=(0, str(markers)), queue="gpu", priority=6)
            reading = wait_for(
                "one running, one waiting", lambda: (r := read()).depth.total == 2 and r, TIMEOUT
            )
            assert reading.depth.reserved >= 1
            running.get(timeout=TIMEOUT)
            waiting.get(timeout=TIMEOUT)
            done = wait_for(
                "2 done", lambda: (w := read().workers.get("matrix-0")) and w.done == 2 and w, TIMEOUT
            )
            assert not done.busy and read().depth.total == 0
    finally:
        probe.close()
