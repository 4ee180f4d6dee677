"""A dead worker's tasks come back in seconds, not after the visibility timeout: workers and Redis only.

Default settings throughout (visibility timeout 7200 s, state interval 5 s): without the restore, none of these
tasks would run again within the tests' deadlines.
"""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
import redis
from celery import Celery, chord, signature
from workerproc import Worker, worker_env

from gpufleet.resources import worker_env as pod_env
from gpufleet.spec import parse_spec
from gpufleet_worker import contract
from gpufleet_worker.app import configure
from support import wait_for

TIMEOUT = 120
STATE_KEY = "gpufleet:workers:team-a/matrix"
pytestmark = pytest.mark.slow


def producer_for(env) -> Celery:
    app = Celery("producer")
    configure(app, env)
    return app


def runs(marker_dir) -> list[str]:
    return sorted(p.name for p in marker_dir.glob("run-*"))


def kill(worker: Worker) -> float:
    os.killpg(worker.proc.pid, signal.SIGKILL)
    worker.wait_exit()
    return time.monotonic()


def defaults(redis_url, tmp_path, pod: str) -> dict[str, str]:
    return worker_env(redis_url, tmp_path, GPUFLEET_POD_NAME=pod, GPUFLEET_STATE_INTERVAL="5")


def test_a_killed_workers_task_starts_again_on_a_live_worker(redis_url, tmp_path):
    markers = tmp_path / "runs"
    markers.mkdir()
    a = Worker(defaults(redis_url, tmp_path, "matrix-0"), tmp_path / "a.log", app="worker_user_app:app")
    b_env = defaults(redis_url, tmp_path, "matrix-1")
    client = redis.Redis.from_url(redis_url)
    with a:
        result = producer_for(b_env).send_task("user.sleep", args=(8, str(markers)))
        wait_for("the task to start on the first worker", lambda: runs(markers), TIMEOUT)
        held = wait_for("the first worker's entry to name its delivery", lambda: (raw := client.hget(STATE_KEY, "matrix-0")) and json.loads(raw)["tags"], TIMEOUT)  # fmt: skip
        assert len(held) == 1 and client.hexists("unacked", held[0])
        killed = kill(a)
    with Worker(b_env, tmp_path / "b.log", app="worker_user_app:app"):
        wait_for("the task to start again on the second worker", lambda: len(runs(markers)) == 2, TIMEOUT)
        print(f"restored and started again {time.monotonic() - killed:.1f} s after the SIGKILL")
        assert result.get(timeout=TIMEOUT) == "slept"
        wait_for("the second run's ack", lambda: client.hlen("unacked") == 0, TIMEOUT)
    assert len(runs(markers)) == 2  # the killed run and the one that finished: nothing ran a third time
    assert not client.hexists(STATE_KEY, "matrix-0")


def test_a_stalled_broker_puts_back_no_live_workers_task(redis_server, redis_url, tmp_path):
    """Redis stalls (a partition, a blackhole) for longer than an entry lives: every entry expires, the busy
    worker's too. When it answers again, the idle worker must not take the busy one for dead: it waits an entry's
    lifetime, by which time the busy worker has written its entry again, so its task runs once."""
    markers = tmp_path / "runs"
    markers.mkdir()
    fast = {"GPUFLEET_STATE_INTERVAL": "1"}  # entries live 3 s
    busy = Worker(
        {**defaults(redis_url, tmp_path, "matrix-0"), **fast}, tmp_path / "a.log", app="worker_user_app:app"
    )
    idle_env = {**defaults(redis_url, tmp_path, "matrix-1"), **fast}
    with busy, Worker(idle_env, tmp_path / "b.log", app="worker_user_app:app") as idle:
        result = producer_for(idle_env).send_task("user.sleep", args=(16, str(markers)))
        wait_for("the task to start", lambda: runs(markers), TIMEOUT)
        with redis_server.stalled():
            time.sleep(6)  # twice an entry's lifetime
        assert result.get(timeout=TIMEOUT) == "slept"
        time.sleep(4)  # more sweeps, after the task
        assert "put back" not in idle.log() + busy.log()
    assert len(runs(markers)) == 1


def test_the_next_container_of_a_pod_restores_what_the_last_one_held(redis_url, tmp_path):
    """An OOM-killed container restarts in the same pod, under the same name: it puts back its predecessor's task
    at once, before its own entry replaces the one that named it."""
    markers = tmp_path / "runs"
    markers.mkdir()
    env = defaults(redis_url, tmp_path, "matrix-0")
    first = Worker(env, tmp_path / "first.log", app="worker_user_app:app")
    with first:
        result = producer_for(env).send_task("user.sleep", args=(6, str(markers)))
        wait_for("the task to start", lambda: runs(markers), TIMEOUT)
        # Named in the entry when it was received (a thread's write, which a loaded machine may delay a little).
        wait_for("the entry to name the delivery", lambda: (raw := redis.Redis.from_url(redis_url).hget(STATE_KEY, "matrix-0")) and json.loads(raw)["tags"], TIMEOUT)  # fmt: skip
        kill(first)
    with Worker(env, tmp_path / "second.log", app="worker_user_app:app") as second:
        assert result.get(timeout=TIMEOUT) == "slept"
        assert "put back 1 task(s) held by matrix-0" in second.log()
    assert len(runs(markers)) == 2


def test_a_chord_completes_when_a_worker_dies_under_it(redis_url, tmp_path):
    markers = tmp_path / "runs"
    markers.mkdir()
    a = Worker(defaults(redis_url, tmp_path, "matrix-0"), tmp_path / "a.log", app="worker_user_app:app")
    b = Worker(defaults(redis_url, tmp_path, "matrix-1"), tmp_path / "b.log", app="worker_user_app:app")
    producer = producer_for(defaults(redis_url, tmp_path, "producer"))
    with a, b:
        header = [signature("user.sleep", args=(3, str(markers)), app=producer) for _ in range(6)]
        result = chord(header)(signature("user.count", app=producer))
        wait_for("both workers busy", lambda: len(runs(markers)) >= 2, TIMEOUT)
        client = redis.Redis.from_url(redis_url)
        wait_for(
            "a's tags",
            lambda: (raw := client.hget(STATE_KEY, "matrix-0")) and json.loads(raw)["tags"],
            TIMEOUT,
        )
        kill(a)
        assert result.get(timeout=TIMEOUT) == 6
    assert len(runs(markers)) == 7  # six tasks, one of them started twice


def test_restoring_is_atomic_idempotent_and_keeps_priority_and_live_entries(redis_url):
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    message = {"body": "e30=", "headers": {"stamped_headers": []}, "content-type": "application/json",
               "properties": {"priority": 7, "delivery_tag": "t-1", "delivery_info": {"routing_key": "gpu"}}}  # fmt: skip
    client.hset("p:unacked", "t-1", json.dumps([message, "gpu", "gpu"]))
    client.zadd("p:unacked_index", {"t-1": time.time()})
    dead = contract.WorkerState.fresh(1, 0, 0, now=time.time() - 100, interval=5, tags=("t-1", "t-gone"))
    client.hset("p:gpufleet:workers:ns/q", "dead", dead.to_json("dead@x"))
    alive = contract.WorkerState.fresh(1, 0, 0, now=time.time(), interval=5, tags=("t-9",))
    client.hset("p:gpufleet:workers:ns/q", "alive", alive.to_json("alive@x"))

    def restore(field, stale_before):
        keys, argv = contract.restore_call("p:", "ns/q", field, stale_before=stale_before)
        return client.eval(contract.RESTORE_SCRIPT, len(keys), *keys, *argv)

    assert restore("alive", time.time()) == -1 and client.hexists("p:gpufleet:workers:ns/q", "alive")
    assert restore("dead", time.time()) == 1
    assert restore("dead", time.time()) == 0  # twice is harmless
    # Priority 7 is kombu's step 6 list; the message is the same but for a new delivery tag, at the front.
    (raw,) = client.lrange("p:gpu\x06\x166", 0, -1)
    requeued = json.loads(raw)
    assert requeued["properties"]["delivery_tag"].startswith("t-1.r")
    assert requeued["headers"] == message["headers"] and requeued["body"] == message["body"]
    assert client.hlen("p:unacked") == 0 and client.zcard("p:unacked_index") == 0
    assert not client.hexists("p:gpufleet:workers:ns/q", "dead")


def test_a_custom_unacked_key_reaches_the_worker_and_its_restore(redis_url, tmp_path):
    """spec.broker.unackedKey names kombu's hash of unacknowledged messages: the worker started from the pod's
    environment records its deliveries there, and the next worker puts a killed one's task back from there."""
    spec = parse_spec({"broker": {"url": redis_url, "unackedKey": "team-a:held"}, "queues": ["gpu"],
                       "worker": {"image": "w:1", "gpus": 0}})  # fmt: skip
    from_pod = {v["name"]: v["value"] for v in pod_env(spec, "team-a", "matrix") if "value" in v}
    from_pod.pop(contract.Env.HEARTBEAT_FILE)
    markers = tmp_path / "runs"
    markers.mkdir()
    env_a = defaults(redis_url, tmp_path, "matrix-0") | from_pod
    env_b = defaults(redis_url, tmp_path, "matrix-1") | from_pod
    client = redis.Redis.from_url(redis_url)
    with Worker(env_a, tmp_path / "a.log", app="worker_user_app:app") as a:
        result = producer_for(env_b).send_task("user.sleep", args=(8, str(markers)), queue="gpu")
        wait_for("the task to start on the first worker", lambda: runs(markers), TIMEOUT)
        held = wait_for("the first worker's entry to name its delivery", lambda: (raw := client.hget(STATE_KEY, "matrix-0")) and json.loads(raw)["tags"], TIMEOUT)  # fmt: skip
        assert client.hexists("team-a:held", held[0]) and not client.exists("unacked")
        kill(a)
    with Worker(env_b, tmp_path / "b.log", app="worker_user_app:app") as b:
        wait_for("the task to start again on the second worker", lambda: len(runs(markers)) == 2, TIMEOUT)
        assert result.get(timeout=TIMEOUT) == "slept"
        assert "put back 1 task(s) held by matrix-0" in b.log()
        wait_for("the second run's ack", lambda: client.hlen("team-a:held") == 0, TIMEOUT)
