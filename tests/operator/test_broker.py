"""The depth probe against a real redis-server, filled by real Celery producers and a real acks_late worker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from gpufleet.broker import FLEETS_PER_CALL, BrokerUnreachable, Connection, Layout, RedisProbe, Request
from gpufleet.model import Depth
from gpufleet_tools.devcluster.redisserver import WriteCounter
from gpufleet_worker.contract import live_workers

HERE = Path(__file__).parent


def test_layout_matches_kombu_key_names():
    layout = Layout("pfx:", (0, 3, 6, 9), "\x06\x16")
    assert layout.list_keys("gpu") == ["pfx:gpu", "pfx:gpu\x06\x163", "pfx:gpu\x06\x166", "pfx:gpu\x06\x169"]
    assert Layout("", (9, 0), ":").list_keys("q") == ["q", "q:9"]
    assert layout.unacked == "pfx:unacked"
    assert layout.workers_key("ns/a") == "pfx:gpufleet:workers:ns/a"


def test_layout_matches_kombus_own_function():
    from kombu.transport.redis import Channel

    for steps, sep in (((0, 3, 6, 9), "\x06\x16"), ((0, 1, 2), ":")):
        channel = Channel.__new__(Channel)
        channel.priority_steps, channel.sep = list(steps), sep
        assert Layout("", steps, sep).list_keys("jobs") == [channel._q_for_pri("jobs", p) for p in steps]


def test_connection_never_shows_the_password():
    conn = Connection("redis://user:hunter2@broker:6380/2?x=1", password="s3cret")
    assert conn.safe_url == "redis://broker:6380/2"
    assert "s3cret" not in repr(conn) and "hunter2" not in repr(conn)
    kwargs = conn.client_kwargs()
    assert (kwargs["host"], kwargs["port"], kwargs["db"], kwargs["password"]) == ("broker", 6380, 2, "s3cret")
    assert Connection("redis://b/1", database=5).client_kwargs()["db"] == 5
    tls = Connection("rediss://b", tls_insecure=True).client_kwargs()
    assert tls["ssl"] is True and tls["ssl_cert_reqs"] == "none"


def test_live_workers_drops_stale_and_unreadable_entries():
    now = 1000.0
    raw = {
        b"live": json.dumps({"busy": True, "since": 990, "expires": 1010, "active": 1, "done": 7}),
        b"dead": json.dumps({"busy": True, "since": 900, "expires": 950}),
        b"junk": b"{not json",
        b"partial": json.dumps({"busy": False}),
    }
    workers = live_workers(raw, now)
    assert list(workers) == ["live"]
    assert workers["live"].busy and workers["live"].done == 7


@pytest.fixture
def producer(redis_url):
    os.environ["PROBE_BROKER"] = redis_url
    os.environ["PROBE_PREFIX"] = "team-a:"
    sys.path.insert(0, str(HERE))
    import probe_app

    probe_app.app.conf.broker_url = redis_url
    probe_app.app.conf.broker_transport_options["global_keyprefix"] = "team-a:"
    yield probe_app
    probe_app.app.close()
    sys.path.remove(str(HERE))


def test_queued_sums_every_priority_list_under_the_prefix(producer, redis_url, tmp_path):
    for priority in (0, 0, 3, 5, 9, 9, 9):
        producer.hold.apply_async(args=[str(tmp_path / "never")], queue="gpu", priority=priority)
    producer.hold.apply_async(args=[str(tmp_path / "never")], queue="cpu")
    layout = Layout(global_keyprefix="team-a:")
    probe = RedisProbe(Connection(redis_url))
    readings = probe.read([Request("ns/a", ("gpu", "cpu", "absent"), layout)])
    assert readings["ns/a"].queues == {"gpu": Depth(7, 0), "cpu": Depth(1, 0), "absent": Depth(0, 0)}
    # More than one list really was used, so the sum is not the length of one list.
    client = redis.Redis.from_url(redis_url)
    assert sum(1 for k in client.keys("team-a:gpu*") if client.type(k) == b"list") >= 3
    # Without the prefix, nothing is found: the prefix is honoured, not ignored.
    assert probe.read([Request("x", ("gpu",), Layout())])["x"].queues["gpu"] == Depth(0, 0)
    probe.close()


def test_reserved_counts_tasks_held_by_an_acks_late_worker(producer, redis_url, tmp_path):
    release = tmp_path / "release"
    for _ in range(3):
        producer.hold.apply_async(args=[str(release)], queue="gpu")
    producer.hold.apply_async(args=[str(release)], queue="cpu")
    env = {**os.environ, "PROBE_BROKER": redis_url, "PROBE_PREFIX": "team-a:", "PYTHONPATH": str(HERE)}
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "probe_app", "worker", "--pool", "solo", "-Q", "gpu",
         "--without-mingle", "--without-gossip", "--loglevel", "WARNING"],
        env=env, cwd=HERE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    probe = RedisProbe(Connection(redis_url))
    request = [Request("ns/a", ("gpu", "cpu"), Layout(global_keyprefix="team-a:"))]
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            gpu = probe.read(request)["ns/a"].queues["gpu"]
            if gpu.reserved == 1:
                break
            time.sleep(0.2)
        reading = probe.read(request)["ns/a"]
        # One task running (acks_late keeps it in `unacked`), two waiting; the cpu queue is untouched.
        assert reading.queues["gpu"] == Depth(2, 1)
        assert reading.queues["cpu"] == Depth(1, 0)
        release.touch()
        while time.monotonic() < deadline:
            if probe.read(request)["ns/a"].queues["gpu"] == Depth(0, 0):
                break
            time.sleep(0.2)
        assert probe.read(request)["ns/a"].queues["gpu"] == Depth(0, 0)
    finally:
        worker.terminate()
        worker.wait(30)
        probe.close()


@pytest.mark.parametrize("fleets", [1, 10, 100])
def test_every_fleet_on_a_broker_costs_one_round_trip(redis_url, fleets):
    probe = RedisProbe(Connection(redis_url))
    counter = WriteCounter(probe._client)
    probe._client.ping()  # connect first: the handshake is not part of a tick
    before = counter.writes
    requests = [Request(f"ns/f{i}", (f"q{i}a", f"q{i}b")) for i in range(fleets)]
    readings = probe.read(requests)
    assert counter.writes - before == 1
    assert len(readings) == fleets
    probe.close()


def test_fleets_read_in_chunks_each_get_their_own_figures(redis_url):
    """More fleets than one script call takes (FLEETS_PER_CALL): each fleet's sums and workers, in their place,
    whatever its layout, in one round trip."""
    client = redis.Redis.from_url(redis_url)
    n = 2 * FLEETS_PER_CALL + 7
    now = time.time()
    requests = []
    for i in range(n):
        layout = Layout("pfx:" if i % 3 else "", (0, 3, 6, 9) if i % 2 else (0,), "\x06\x16")
        requests.append(Request(f"ns/f{i}", (f"a{i}", f"b{i}"), layout))
        for _ in range(i % 5):
            client.lpush(layout.list_keys(f"a{i}")[-1], "m")  # the last priority list: every list counts
        client.lpush(layout.list_keys(f"b{i}")[0], *["m"] * (i % 7 + 1))
        if i % 50 == 0:
            client.hset(
                layout.workers_key(f"ns/f{i}"),
                "pod",
                json.dumps({"busy": True, "since": now, "expires": now + 15}),
            )
    probe = RedisProbe(Connection(redis_url))
    counter = WriteCounter(probe._client)
    probe._client.ping()
    before = counter.writes
    readings = probe.read(requests, now)
    assert counter.writes - before == 1
    for i in range(n):
        r = readings[f"ns/f{i}"]
        assert r.queues == {f"a{i}": Depth(i % 5, 0), f"b{i}": Depth(i % 7 + 1, 0)}, i
        assert list(r.workers) == (["pod"] if i % 50 == 0 else []), i
    probe.close()


def test_worker_state_is_read_in_the_same_round_trip(redis_url):
    client = redis.Redis.from_url(redis_url)
    now = time.time()
    layout = Layout()
    client.hset(
        layout.workers_key("ns/a"), "pod-1", json.dumps({"busy": True, "since": now, "expires": now + 15})
    )
    client.hset(
        layout.workers_key("ns/a"), "pod-2", json.dumps({"busy": False, "since": now, "expires": now + 15})
    )
    client.hset(
        layout.workers_key("ns/a"), "pod-3", json.dumps({"busy": False, "since": now, "expires": now - 1})
    )
    reading = RedisProbe(Connection(redis_url)).read([Request("ns/a", ("gpu",), layout)])["ns/a"]
    assert {pod: w.busy for pod, w in reading.workers.items()} == {"pod-1": True, "pod-2": False}


def test_password_and_database_are_used(redis_server, redis_url):
    client = redis.Redis.from_url(redis_url)
    client.config_set("requirepass", "hunter2")
    try:
        redis.Redis(port=redis_server.port, password="hunter2", db=3).rpush("gpu", "x", "y")
        probe = RedisProbe(Connection(redis_url, password="hunter2", database=3))
        assert probe.read([Request("a", ("gpu",))])["a"].queues["gpu"] == Depth(2, 0)
        with pytest.raises(BrokerUnreachable) as err:
            RedisProbe(Connection(redis_url, password="wrong")).read([Request("a", ("gpu",))])
        assert "wrong" not in str(err.value) and "hunter2" not in str(err.value)
    finally:
        redis.Redis.from_url(redis_url, password="hunter2").config_set("requirepass", "")


def test_unreachable_broker_raises_quickly_with_a_safe_message():
    probe = RedisProbe(Connection("redis://127.0.0.1:1/0", password="hunter2"), timeout=1)
    with pytest.raises(BrokerUnreachable) as err:
        probe.read([Request("a", ("gpu",))])
    assert "127.0.0.1:1" in str(err.value) and "hunter2" not in str(err.value)


def test_a_blackholed_broker_is_tried_twice_at_most(blackhole):
    """A broker that accepts connections and never answers (a partition, a stuck proxy) costs the probe one try
    and one retry, each bounded by its timeout: redis-py's default retries (with back-off) held a tick ~25 s."""
    url, accepted = blackhole
    probe = RedisProbe(Connection(url), timeout=0.3)
    try:
        with pytest.raises(BrokerUnreachable, match="Timeout"):
            probe.read([Request("a", ("gpu",))])
        assert len(accepted) <= 2, f"{len(accepted)} connections for one probe"
    finally:
        probe.close()


def test_cli_depth_prints_one_json_object(producer, redis_url, tmp_path):
    for priority in (0, 6, 9):
        producer.hold.apply_async(args=[str(tmp_path / "never")], queue="gpu", priority=priority)
    out = subprocess.run(
        [sys.executable, "-m", "gpufleet", "depth", "--broker", redis_url, "--queue", "gpu", "--queue", "idle",
         "--global-keyprefix", "team-a:", "--priority-steps", "0,3,6,9", "--sep", "\\x06\\x16"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {
        "gpu": {"queued": 3, "reserved": 0},
        "idle": {"queued": 0, "reserved": 0},
    }
    assert out.stdout.count("\n") == 1


def test_cli_depth_fails_clearly_when_the_broker_is_down():
    out = subprocess.run(
        [sys.executable, "-m", "gpufleet", "depth", "--broker", "redis://:hunter2@127.0.0.1:1/0", "--queue", "gpu", "--timeout", "1"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode != 0
    assert out.stdout == ""
    assert "cannot read the broker" in out.stderr and "hunter2" not in out.stderr
