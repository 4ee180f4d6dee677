"""The GPUFLEET_* environment of docs/worker-contract.md, read into settings and Celery configuration."""

from __future__ import annotations

import ssl

import pytest
from celery import Celery

from gpufleet_worker import codec
from gpufleet_worker.app import configure
from gpufleet_worker.errors import SettingsError
from gpufleet_worker.settings import from_env


@pytest.mark.parametrize(
    "env, url",
    [
        ({}, "redis://127.0.0.1:6379/0"),
        ({"GPUFLEET_BROKER_URL": "redis://redis.ns:6379/2"}, "redis://redis.ns:6379/2"),
        ({"GPUFLEET_BROKER_URL": "redis://r:6379/2", "GPUFLEET_BROKER_DB": "5"}, "redis://r:6379/5"),
        ({"GPUFLEET_BROKER_URL": "redis://r:6379", "GPUFLEET_BROKER_DB": "0"}, "redis://r:6379/0"),
        # Every character of the password that means something in a URL is quoted.
        ({"GPUFLEET_BROKER_URL": "redis://r:6379/0", "GPUFLEET_BROKER_PASSWORD": "p@ss:w/rd%?#"},
         "redis://:p%40ss%3Aw%2Frd%25%3F%23@r:6379/0"),
        ({"GPUFLEET_BROKER_URL": "rediss://alice@r:6380/1", "GPUFLEET_BROKER_PASSWORD": "s3cret"},
         "rediss://alice:s3cret@r:6380/1"),
        # A password that came whole with the URL (from a Secret) is replaced by the explicit one.
        ({"GPUFLEET_BROKER_URL": "redis://:old@r/0", "GPUFLEET_BROKER_PASSWORD": "new"}, "redis://:new@r/0"),
        ({"GPUFLEET_BROKER_URL": "redis://:kept@r/0"}, "redis://:kept@r/0"),
    ],
)  # fmt: skip
def test_broker_url(env, url):
    assert from_env(env).broker_url == url


@pytest.mark.parametrize(
    "env, expected",
    [
        ({"GPUFLEET_BROKER_URL": "redis://r/0"}, None),
        ({"GPUFLEET_BROKER_URL": "rediss://r/0"}, {"ssl_cert_reqs": ssl.CERT_REQUIRED}),
        ({"GPUFLEET_BROKER_URL": "rediss://r/0", "GPUFLEET_BROKER_TLS_INSECURE": "1"},
         {"ssl_cert_reqs": ssl.CERT_NONE}),
        ({"GPUFLEET_BROKER_URL": "rediss://r/0", "GPUFLEET_BROKER_TLS_CA_FILE": "/etc/gpufleet/broker-ca/ca.crt"},
         {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_ca_certs": "/etc/gpufleet/broker-ca/ca.crt"}),
    ],
)  # fmt: skip
def test_tls(env, expected):
    assert from_env(env).broker_use_ssl == expected


@pytest.mark.parametrize(
    "env, options",
    [
        ({}, {"visibility_timeout": 3600, "sep": "\x06\x16", "unacked_restore_interval": 10}),
        ({"GPUFLEET_GLOBAL_KEYPREFIX": "team-a:", "GPUFLEET_PRIORITY_STEPS": "0,3,6,9"},
         {"global_keyprefix": "team-a:", "priority_steps": [0, 3, 6, 9]}),
        ({"GPUFLEET_GLOBAL_KEYPREFIX": ""}, {"visibility_timeout": 3600}),
        ({"GPUFLEET_PRIORITY_SEP": ":"}, {"sep": ":"}),
        ({"GPUFLEET_PRIORITY_SEP": "\\x06\\x16"}, {"sep": "\x06\x16"}),
        ({"GPUFLEET_PRIORITY_SEP": "\x06\x16"}, {"sep": "\x06\x16"}),
        ({"GPUFLEET_VISIBILITY_TIMEOUT": "30", "GPUFLEET_TASK_TIME_LIMIT": "20"},
         {"visibility_timeout": 30, "unacked_restore_interval": 3, "unacked_restore_throttle": 1}),
        ({"GPUFLEET_VISIBILITY_TIMEOUT": "3", "GPUFLEET_TASK_TIME_LIMIT": "2"}, {"unacked_restore_interval": 1}),
    ],
)  # fmt: skip
def test_transport_options(env, options):
    got = from_env(env).transport_options
    assert {key: got.get(key) for key in options} == options
    if not env.get("GPUFLEET_GLOBAL_KEYPREFIX"):
        assert "global_keyprefix" not in got


@pytest.mark.parametrize(
    "env, backend",
    [
        ({"GPUFLEET_BROKER_URL": "redis://r/1"}, "redis://r/1"),
        (
            {"GPUFLEET_BROKER_URL": "redis://r/1", "GPUFLEET_RESULT_BACKEND": "redis://other/3"},
            "redis://other/3",
        ),
        ({"GPUFLEET_RESULT_BACKEND": "none"}, None),
        ({"GPUFLEET_RESULT_BACKEND": ""}, None),
    ],
)
def test_result_backend(env, backend):
    assert from_env(env).result_backend == backend


@pytest.mark.parametrize(
    "env, message",
    [
        ({"GPUFLEET_BROKER_URL": "amqp://r//"}, "must be a redis:// or rediss:// URL, not amqp://"),
        ({"GPUFLEET_BROKER_URL": "redis:///0"}, "has no host"),
        ({"GPUFLEET_BROKER_DB": "one"}, "GPUFLEET_BROKER_DB='one' is not an integer"),
        ({"GPUFLEET_CONCURRENCY": "0"}, "GPUFLEET_CONCURRENCY=0 must be at least 1"),
        ({"GPUFLEET_PRIORITY_STEPS": "0,x"}, "must be comma-separated integers"),
        ({"GPUFLEET_PRIORITY_STEPS": "3,0"}, "ascending"),
        ({"GPUFLEET_PRIORITY_STEPS": "0,0"}, "distinct"),
        ({"GPUFLEET_VISIBILITY_TIMEOUT": "600", "GPUFLEET_TASK_TIME_LIMIT": "600"},
         r"visibility timeout \(600s, GPUFLEET_VISIBILITY_TIMEOUT\) must exceed the task time limit \(600s"),
        ({"GPUFLEET_VISIBILITY_TIMEOUT": "100"}, r"must exceed the task time limit \(3300s"),
        ({"GPUFLEET_TASK_TIME_LIMIT": "0"}, "GPUFLEET_TASK_TIME_LIMIT is unset: every task needs a time limit"),
        ({"GPUFLEET_GPU_MEMORY_LIMIT": "lots"}, "must be bytes or a fraction"),
        ({"GPUFLEET_GPU_MEMORY_LIMIT": "1.5"}, "must be bytes or a fraction"),
        ({"GPUFLEET_MAX_PAYLOAD_BYTES": "10"}, "must be at least 1024"),
        ({"GPUFLEET_STATE_INTERVAL": "soon"}, "is not a number"),
    ],
)  # fmt: skip
def test_invalid_values_are_named_in_the_error(env, message):
    with pytest.raises(SettingsError, match=message):
        from_env(env)


def test_worker_values():
    s = from_env({
        "GPUFLEET_FLEET": "ns/q", "GPUFLEET_POD_NAME": "q-abc", "GPUFLEET_QUEUES": "gpu, gpu-high ,",
        "GPUFLEET_POOL": "prefork", "GPUFLEET_CONCURRENCY": "2", "GPUFLEET_GPUS": "2",
        "GPUFLEET_REQUIRE_GPU": "1", "GPUFLEET_GPU_MEMORY_LIMIT": "0.8", "GPUFLEET_STATE_INTERVAL": "5",
    })  # fmt: skip
    assert (s.fleet, s.pod_name, s.queues) == ("ns/q", "q-abc", ("gpu", "gpu-high"))
    assert (s.pool, s.concurrency, s.gpus, s.require_gpu, s.gpu_memory_limit) == (
        "prefork",
        2,
        2,
        True,
        "0.8",
    )
    assert s.state_interval == 5.0
    assert from_env({}).queues == ("celery",)
    assert from_env({}).gpus is None, "unset means: use a GPU where one is visible"


def test_configure_gives_an_app_the_fleet_safe_defaults():
    app = Celery("someone-elses")
    configure(app, {"GPUFLEET_BROKER_URL": "redis://r:6379/0", "GPUFLEET_QUEUES": "gpu",
                    "GPUFLEET_TASK_TIME_LIMIT": "600", "GPUFLEET_VISIBILITY_TIMEOUT": "900",
                    "GPUFLEET_GLOBAL_KEYPREFIX": "team-a:", "GPUFLEET_POOL": "solo"})  # fmt: skip
    conf = app.conf
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.worker_prefetch_multiplier == 1
    assert conf.task_time_limit == 600 and conf.broker_transport_options["visibility_timeout"] == 900
    assert conf.task_serializer == codec.AUTO_NAME and conf.result_serializer == codec.NAME
    assert set(conf.accept_content) == set(conf.result_accept_content) == {"json", codec.NAME}
    assert conf.task_default_queue == "gpu" and conf.worker_pool == "solo"
    assert conf.result_backend == "gpufleet_worker.results:NegotiatingRedisBackend+redis://r:6379/0"
    assert conf.result_expires == 3600
    assert conf.result_backend_transport_options == {"global_keyprefix": "team-a:"}
    assert {"gpufleet_worker.tasks", "gpufleet_worker.fanout"} <= set(conf.include)
    assert conf.worker_consumer == "gpufleet_worker.consumer:Consumer"
