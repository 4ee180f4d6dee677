"""Redis Sentinel brokers: the spec and its CRD, the env the worker pods get, and the probe against a real group
(master, replica, three sentinels on loopback) that fails over."""

from __future__ import annotations

import time

import pytest

from gpufleet.broker import BrokerUnreachable, Connection, RedisProbe, Request
from gpufleet.crd import schema
from gpufleet.model import Depth
from gpufleet.resources import deployment, worker_env
from gpufleet.spec import SecretKeyRef, SpecError, parse_spec
from gpufleet_worker.settings import from_env

SENTINEL = {
    "masterName": "mymaster",
    "sentinels": ["redis-sentinel-0.redis:26379", "10.0.0.7:26380", "[fd00::1]:26379"],
    "passwordSecretRef": {"name": "sentinel", "key": "password"},
}


def spec(broker: dict) -> dict:
    return {"broker": broker, "queues": ["gpu"], "worker": {"image": "example/worker:1"}}


def test_sentinel_spec_is_read():
    s = parse_spec(
        spec({"sentinel": SENTINEL, "passwordSecretRef": {"name": "redis", "key": "pw"}, "database": 2})
    )
    b = s.broker
    assert b.url is None and b.url_secret_ref is None
    assert b.sentinel.master_name == "mymaster"
    assert b.sentinel.sentinels == (
        ("redis-sentinel-0.redis", 26379),
        ("10.0.0.7", 26380),
        ("fd00::1", 26379),
    )
    assert b.sentinel.password_secret_ref == SecretKeyRef("sentinel", "password")
    assert b.password_secret_ref == SecretKeyRef("redis", "pw")


@pytest.mark.parametrize(
    ("broker", "path", "words"),
    [
        ({"sentinel": SENTINEL, "url": "redis://r"}, "spec.broker.sentinel", "instead of url"),
        (
            {"sentinel": SENTINEL, "urlSecretRef": {"name": "s", "key": "k"}},
            "spec.broker.sentinel",
            "not with",
        ),
        ({"sentinel": SENTINEL, "tls": {"enabled": True}}, "spec.broker.sentinel", "not supported"),
        ({"sentinel": {**SENTINEL, "sentinels": []}}, "spec.broker.sentinel.sentinels", "at least one"),
        ({"sentinel": {**SENTINEL, "sentinels": ["a:1", "a:1"]}}, "spec.broker.sentinel.sentinels", "twice"),
        (
            {"sentinel": {**SENTINEL, "sentinels": ["a:99999"]}},
            "spec.broker.sentinel.sentinels[0]",
            "1..65535",
        ),
        ({"sentinel": {**SENTINEL, "sentinels": ["a"]}}, "spec.broker.sentinel.sentinels[0]", "host:port"),
        ({"sentinel": {**SENTINEL, "masterName": "my master"}}, "spec.broker.sentinel.masterName", "spaces"),
        ({"sentinel": {"sentinels": ["a:1"]}}, "spec.masterName", "required"),
    ],
)
def test_invalid_sentinel_specs_name_the_field(broker, path, words):
    with pytest.raises(SpecError) as err:
        parse_spec(spec(broker))
    assert err.value.path == path
    assert words in str(err.value)


def test_the_crd_refuses_what_it_can_at_apply():
    broker = schema()["properties"]["spec"]["properties"]["broker"]
    rules = {r["rule"] for r in broker["x-kubernetes-validations"]}
    assert "has(self.sentinel) || has(self.url) != has(self.urlSecretRef)" in rules
    assert "!has(self.sentinel) || (!has(self.url) && !has(self.urlSecretRef))" in rules
    assert "!has(self.sentinel) || !has(self.tls) || !self.tls.enabled" in rules
    sentinel = broker["properties"]["sentinel"]
    assert sentinel["required"] == ["masterName", "sentinels"]
    hosts = sentinel["properties"]["sentinels"]
    assert hosts["x-kubernetes-list-type"] == "set" and hosts["minItems"] == 1
    import re

    pattern = re.compile(hosts["items"]["pattern"])
    for good in ("a:1", "redis-sentinel-0.redis.svc:26379", "10.0.0.1:26379", "[::1]:26379"):
        assert pattern.match(good), good
    for bad in ("a", "a:", ":1", "sentinel://a:1", "a:1;b:2", "a b:1", "-a:1"):
        assert not pattern.match(bad), bad


def test_worker_env_names_the_sentinels_and_never_a_password():
    s = parse_spec(
        spec({"sentinel": SENTINEL, "passwordSecretRef": {"name": "redis", "key": "pw"}, "database": 3})
    )
    env = {e["name"]: e for e in worker_env(s, "team-a", "embed")}
    assert env["GPUFLEET_BROKER_URL"]["value"] == (
        "sentinel://redis-sentinel-0.redis:26379;sentinel://10.0.0.7:26380;sentinel://[fd00::1]:26379"
    )
    assert env["GPUFLEET_BROKER_SENTINEL_MASTER"]["value"] == "mymaster"
    assert env["GPUFLEET_BROKER_SENTINEL_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "sentinel",
        "key": "password",
    }
    assert env["GPUFLEET_BROKER_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "redis", "key": "pw"}
    assert env["GPUFLEET_BROKER_DB"]["value"] == "3"
    # No Secret's value is ever in the Deployment: only references.
    dep = deployment(s, namespace="team-a", name="embed", uid="u", replicas=1)
    assert "secretKeyRef" in str(dep) and "sentinel-pw" not in str(dep)
    without = parse_spec(spec({"sentinel": {k: v for k, v in SENTINEL.items() if k != "passwordSecretRef"}}))
    names = [e["name"] for e in worker_env(without, "team-a", "embed")]
    assert "GPUFLEET_BROKER_SENTINEL_PASSWORD" not in names and "GPUFLEET_BROKER_PASSWORD" not in names


def test_the_worker_reads_the_env_the_operator_builds_as_kombus_sentinel_transport():
    s = parse_spec(spec({"sentinel": SENTINEL, "database": 3}))
    env = {e["name"]: e["value"] for e in worker_env(s, "team-a", "embed") if "value" in e}
    env |= {"GPUFLEET_BROKER_PASSWORD": "p@ss/w:rd", "GPUFLEET_BROKER_SENTINEL_PASSWORD": "sentinel-pw"}
    settings = from_env(env)
    parts = settings.broker_url.split(";")
    assert len(parts) == 3
    # Every part carries the password and database: kombu may switch to any of them as its current URL.
    assert all(p.endswith("/3") and ":p%40ss%2Fw%3Ard@" in p for p in parts), parts
    assert parts[2].startswith("sentinel://:p%40ss%2Fw%3Ard@[fd00::1]:26379")
    options = {"master_name": "mymaster", "sentinel_kwargs": {"password": "sentinel-pw"}}
    assert settings.transport_options.items() >= options.items()
    assert settings.result_backend == settings.broker_url
    assert settings.result_transport_options == options
    assert settings.broker_use_ssl is None
    assert "sentinel-pw" not in repr(settings.sentinel) and "p@ss" not in repr(settings.sentinel)


def test_connection_shows_the_sentinels_never_the_passwords():
    conn = Connection("", password="m-pw", sentinels=(("s0", 26379), ("::1", 1)), master_name="mymaster",
                      sentinel_password="s-pw")  # fmt: skip
    assert conn.safe_url == "sentinel://s0:26379,[::1]:1/mymaster"
    # Sentinels are asked in turn: together they may take the probe's timeout, no more.
    kwargs = conn.sentinel_kwargs(2.0)
    assert kwargs["retry"].get_retries() == 0  # the next sentinel is asked at once instead
    assert {k: v for k, v in kwargs.items() if k != "retry"} == {
        "password": "s-pw",
        "socket_timeout": 1.0,
        "socket_connect_timeout": 1.0,
    }
    assert "pw" not in repr(conn)
    assert conn != Connection("", password="m-pw", sentinels=(("s0", 26379),), master_name="mymaster")


# ---- against real processes -----------------------------------------------------------------------------------


@pytest.fixture
def group():
    from redis_sentinel import SentinelGroup

    with SentinelGroup() as g:
        yield g


def _connection(group) -> Connection:
    return Connection(
        "",
        password=group.password,
        sentinels=tuple(("127.0.0.1", p) for p in group.sentinel_ports),
        master_name="gpufleet",
        sentinel_password=group.sentinel_password,
    )


def _until_read(probe: RedisProbe, request: Request, timeout: float = 30.0) -> tuple[dict, list[str]]:
    """Probe every 0.1 s (a fast poll) until a read succeeds; returns it and the errors seen before."""
    errors = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return probe.read([request]), errors
        except BrokerUnreachable as exc:
            errors.append(str(exc))
            time.sleep(0.1)
    raise AssertionError(f"no read within {timeout}s; errors: {errors[-3:]}")


@pytest.mark.slow
def test_probe_resolves_the_master_and_follows_a_killed_masters_failover(group):
    from redis_sentinel import MASTER_NAME

    master = group.sentinel().master_for(MASTER_NAME)
    master.lpush("gpu", "a", "b")
    group.wait("the replica has the tasks", lambda: group.client(group.redis_ports[1]).llen("gpu") == 2)
    probe = RedisProbe(_connection(group), timeout=0.5)
    request = Request("team-a/embed", ("gpu",))
    try:
        assert probe.read([request])["team-a/embed"].queues["gpu"] == Depth(2, 0)

        old = group.kill_master()
        killed = time.monotonic()
        with pytest.raises(BrokerUnreachable) as err:
            probe.read([request])
        # The message names the sentinels and the master's name, never a password.
        assert "sentinel://127.0.0.1:" in str(err.value) and "/gpufleet" in str(err.value)
        assert group.password not in str(err.value) and group.sentinel_password not in str(err.value)

        readings, errors = _until_read(probe, request)
        recovered = time.monotonic() - killed
        assert readings["team-a/embed"].queues["gpu"] == Depth(2, 0)
        assert group.master_port() not in (None, old)
        assert all(group.password not in e and group.sentinel_password not in e for e in errors)
        print(
            f"master killed -> probe read from the new master: {recovered:.2f}s ({len(errors)} failed reads)"
        )
        assert recovered < 20
    finally:
        probe.close()


@pytest.mark.slow
def test_probe_follows_a_sentinel_failover_of_a_running_master(group):
    from redis_sentinel import MASTER_NAME

    probe = RedisProbe(_connection(group), timeout=0.5)
    request = Request("team-a/embed", ("gpu",))
    try:
        assert probe.read([request])["team-a/embed"].queues["gpu"] == Depth(0, 0)
        old = group.failover()
        started = time.monotonic()
        new = group.wait("a new master", lambda: (p := group.master_port()) not in (None, old) and p, 30)
        # Written on the new master only once it is master: the probe must read it there, not on the old one.
        group.wait(
            "the old master demoted", lambda: group.client(old).info("replication")["role"] == "slave", 30
        )
        group.sentinel().master_for(MASTER_NAME).lpush("gpu", "x")
        group.wait("the write replicated", lambda: group.client(old).llen("gpu") == 1)

        def depth():
            try:
                return probe.read([request])["team-a/embed"].queues["gpu"] == Depth(1, 0)
            except BrokerUnreachable:
                return False

        group.wait("the probe reading 1 task", depth, 30)
        print(f"SENTINEL FAILOVER -> probe reading the new master ({new}): {time.monotonic() - started:.2f}s")
        # Every connection of the probe now goes to the new master: a write there works (restores write).
        assert probe._client.execute_command("ROLE")[0] == b"master"
    finally:
        probe.close()


@pytest.mark.slow
def test_no_sentinel_at_all_is_unreachable_not_an_error(group):
    conn = Connection("", sentinels=(("127.0.0.1", 1),), master_name="gpufleet")
    probe = RedisProbe(conn, timeout=0.5)
    try:
        with pytest.raises(BrokerUnreachable, match="sentinel://127.0.0.1:1/gpufleet"):
            probe.read([Request("a/b", ("gpu",))])
    finally:
        probe.close()
    # A wrong sentinel password is refused as unreachable too (and not shown).
    wrong = Connection("", password=group.password, sentinels=_connection(group).sentinels,
                       master_name="gpufleet", sentinel_password="not-it")  # fmt: skip
    probe = RedisProbe(wrong, timeout=0.5)
    try:
        with pytest.raises(BrokerUnreachable) as err:
            probe.read([Request("a/b", ("gpu",))])
        assert "not-it" not in str(err.value)
    finally:
        probe.close()
