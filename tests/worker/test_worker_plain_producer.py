"""A plain Celery producer (JSON, no gpufleet, no msgpack, no NumPy) against a real worker and Redis: a user's
own tasks and the library's, with lists in and JSON out; and gpufleet's client getting arrays in binary."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import redis
from celery import Celery
from workerproc import HERE, Worker, worker_env

from gpufleet_worker import codec
from gpufleet_worker.client import use_arrays

TIMEOUT = 120


@pytest.fixture(scope="module")
def fleet(redis_server, tmp_path_factory):
    redis_server.start()
    redis.Redis.from_url(redis_server.url).flushall()
    tmp = tmp_path_factory.mktemp("plain-producer")
    env = worker_env(redis_server.url, tmp)
    with Worker(env, tmp / "worker.log", app="worker_user_app:app") as worker:
        yield redis_server.url, worker


def plain(fleet, calls: list[dict]) -> list[dict]:
    """Run the calls through a plain producer in a process of its own, where gpufleet cannot be imported."""
    url, _ = fleet
    done = subprocess.run(
        [sys.executable, str(HERE / "plain_producer.py"), "--refuse-imports", url, "gpu"],
        input=json.dumps(calls), capture_output=True, text=True, timeout=4 * TIMEOUT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["loaded"] == []
    return out["results"]


def test_a_users_own_task_answers_a_plain_producer_in_json(fleet):
    got = plain(fleet, [{"task": "user.total", "args": [[2.5, 4.0], [2, 3]]}])
    assert got == [{"ok": {"total": 17.0, "items": 2}}]


def test_numpy_values_of_a_users_task_reach_a_plain_producer_as_lists(fleet):
    got = plain(fleet, [{"task": "user.histogram", "args": [[1, 2, 2, 3, 3, 3], 3]}])
    counts, edges = np.histogram([1, 2, 2, 3, 3, 3], bins=3)
    assert got == [{"ok": {"counts": counts.tolist(), "edges": edges.tolist(), "peak": 3}}]


def test_library_tasks_take_lists_and_give_lists(fleet):
    a, b = [[1.0, 2.0], [3.0, 4.0]], [[5.0], [6.0]]
    got = plain(fleet, [
        {"task": "gpufleet.matmul", "args": [a, b]},
        {"task": "gpufleet.matmul", "kwargs": {"a": [[1, 2]], "b": [[3], [4]]}},
        {"task": "gpufleet.reduce", "args": [[[1, 2], [3, 4]]], "kwargs": {"op": "sum", "axis": 0}},
        {"task": "gpufleet.stats", "args": [[1.0, 2.0, 3.0, 4.0]], "kwargs": {"quantiles": [0.5]}},
    ])  # fmt: skip
    assert got[0] == {"ok": [[17.0], [39.0]]}
    assert got[1] == {"ok": [[11]]}  # integers stay integers
    assert got[2] == {"ok": [4, 6]}
    assert got[3]["ok"]["count"] == 4 and got[3]["ok"]["mean"] == 2.5 and got[3]["ok"]["quantiles"] == [2.5]


@pytest.mark.parametrize(
    "call, message",
    [
        (
            {"task": "gpufleet.matmul", "args": [[[1, 2], [3]], [[1], [2]]]},
            "argument a is not an array of numbers",
        ),
        (
            {"task": "gpufleet.matmul", "args": [[[1, 2]], [["x"], ["y"]]]},
            "argument b must be an array of numbers",
        ),
        ({"task": "gpufleet.matmul", "args": [[1, 2], [[1], [2]]]}, r"a must be 2-D, got shape \(2,\)"),
        ({"task": "gpufleet.matmul", "args": [[[1, 2]], [[1, 2]]]}, r"cannot multiply \(1, 2\) by \(1, 2\)"),
        ({"task": "gpufleet.fft", "args": [[1.0, 2.0]]}, "complex .* cannot be written as JSON"),
    ],
    ids=["ragged", "strings", "wrong-ndim", "shapes", "complex-result"],
)
def test_a_bad_payload_fails_its_task_with_a_clear_message_and_the_worker_goes_on(fleet, call, message):
    import re

    got = plain(fleet, [call, {"task": "user.total", "args": [[1], [1]]}])
    assert "error" in got[0], got[0]
    assert re.search(message, got[0]["message"]), got[0]
    assert got[1] == {"ok": {"total": 1, "items": 1}}
    assert fleet[1].proc.poll() is None


def test_a_plain_producers_chord_reads_json_throughout(fleet):
    header = [{"task": "user.total", "args": [[i], [2]]} for i in range(20)]
    got = plain(fleet, [{"chord": header, "body": {"task": "user.count"}}])
    assert got == [{"ok": 20}]


def test_the_client_gets_arrays_back_in_binary_and_reads_json_results_too(fleet):
    url, _ = fleet
    producer = use_arrays(Celery("client", broker=url, backend=url))
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    result = producer.send_task("gpufleet.matmul", args=(a, a.T), queue="gpu")
    out = result.get(timeout=TIMEOUT)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    np.testing.assert_array_equal(out, a @ a.T)
    stored = redis.Redis.from_url(url).get(f"celery-task-meta-{result.id}")
    assert codec.is_binary(stored)
    # A result the worker wrote as JSON (for a plain producer) reads the same through the client.
    plain_result = Celery("plain", broker=url, backend=url).send_task(
        "user.total", args=([3], [3]), queue="gpu"
    )
    assert plain_result.get(timeout=TIMEOUT) == {"total": 9, "items": 1}
    assert producer.AsyncResult(plain_result.id).get(timeout=TIMEOUT) == {"total": 9, "items": 1}
    assert not codec.is_binary(redis.Redis.from_url(url).get(f"celery-task-meta-{plain_result.id}"))


def test_the_client_imports_nothing_of_the_worker_or_operator():
    code = (
        "import sys, gpufleet_worker.client; "
        "print(sorted(m for m in sys.modules if m.partition('.')[0] in ('cupy', 'kopf', 'kubernetes', 'gpufleet')"
        " or m in ('gpufleet_worker.app', 'gpufleet_worker.device', 'gpufleet_worker.tasks')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
