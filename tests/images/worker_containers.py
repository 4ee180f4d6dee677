"""A worker container as the operator's pod runs it: the GPUFLEET_* environment, `args` only (tini stays PID 1),
a read-only root filesystem with /tmp/gpufleet as its one writable path, the host's network (the tests'
redis-server listens on loopback). Each test names its own fleet: its queue, pod and state entry are its own,
even while another test's worker consumes from the same Redis."""

from __future__ import annotations

from celery import Celery

from docker_engine import WORKER_RUNTIME, read_only_options
from gpufleet_worker.app import configure


def worker_env(redis_url: str, fleet: str, **overrides: str) -> dict[str, str]:
    return {
        "GPUFLEET_FLEET": f"team-a/{fleet}",
        "GPUFLEET_POD_NAME": f"{fleet}-0",
        "GPUFLEET_BROKER_URL": redis_url,
        "GPUFLEET_QUEUES": fleet,
        "GPUFLEET_STATE_INTERVAL": "1",
        **overrides,
    }


def state_key(env: dict[str, str]) -> str:
    """The Redis hash of the fleet's worker states (docs/worker-contract.md); the pod name is the field."""
    return f"gpufleet:workers:{env['GPUFLEET_FLEET']}"


def worker_options(env: dict[str, str]) -> tuple[str, ...]:
    return (
        "--network",
        "host",
        *read_only_options(WORKER_RUNTIME),
        *(f"--env={k}={v}" for k, v in env.items()),
    )


def celery_args(env: dict[str, str], app: str = "gpufleet_worker.app:app") -> tuple[str, ...]:
    """What the operator puts in a worker pod's `args` (docs/worker-contract.md), with the solo pool."""
    return (
        "celery", "-A", app, "worker", "--pool", "solo", "--concurrency", "1",
        "--queues", env["GPUFLEET_QUEUES"], "--hostname", f"{env['GPUFLEET_POD_NAME']}@gpufleet",
        "--loglevel", "INFO", "--without-mingle", "--without-gossip",
    )  # fmt: skip


def producer(env: dict[str, str]) -> Celery:
    app = Celery("images-producer")
    configure(app, env)
    return app
