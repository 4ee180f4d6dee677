"""The worker's settings, read from the GPUFLEET_* environment of docs/worker-contract.md.

Pure: `from_env(mapping)` decides everything and touches nothing, so the rules are tested by tables.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import quote, urlsplit, urlunsplit

from . import contract
from .codec import DEFAULT_MAX_PAYLOAD_BYTES
from .contract import Env as E
from .errors import SettingsError


@dataclass(frozen=True)
class Sentinel:
    """Redis Sentinel: the sentinels to ask for the master of `master_name`, and how to log in to both."""

    master_name: str
    sentinels: tuple[tuple[str, int], ...]
    db: int = 0
    password: str | None = field(default=None, repr=False)  # the master's
    sentinel_password: str | None = field(default=None, repr=False)  # the sentinels' own

    @property
    def transport_options(self) -> dict:
        """kombu's (and Celery's result backend's) transport options for a sentinel:// URL."""
        options: dict = {"master_name": self.master_name}
        if self.sentinel_password:
            options["sentinel_kwargs"] = {"password": self.sentinel_password}
        return options


@dataclass(frozen=True)
class Settings:
    fleet: str
    pod_name: str
    broker_url: str
    broker_use_ssl: dict | None
    result_backend: str | None
    transport_options: dict
    result_transport_options: dict
    sentinel: Sentinel | None
    global_keyprefix: str
    priority_steps: tuple[int, ...]
    separator: str
    unacked_key: str
    queues: tuple[str, ...]
    pool: str | None
    concurrency: int | None
    visibility_timeout: int
    task_time_limit: int | None
    soft_shutdown_timeout: float | None
    result_expires: int
    heartbeat_file: str
    heartbeat_max_age: float
    state_interval: float
    gpus: int | None
    require_gpu: bool
    gpu_memory_limit: str | None
    max_payload_bytes: int


def _number(env: Mapping[str, str], name: str, default, minimum, kind: type, what: str):
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not {what}") from None
    if value < minimum:
        raise SettingsError(f"{name}={value} must be at least {minimum}")
    return value


def _int(env: Mapping[str, str], name: str, default: int | None, minimum: int = 0) -> int | None:
    return _number(env, name, default, minimum, int, "an integer")


def _float(env: Mapping[str, str], name: str, default: float | None, minimum: float = 0.0) -> float | None:
    return _number(env, name, default, minimum, float, "a number")


def _flag(env: Mapping[str, str], name: str) -> bool:
    return env.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _list(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def compose_broker_url(url: str, password: str | None, db: int | None) -> str:
    """Insert the (URL-quoted) password and the database number into a redis:// or rediss:// URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise SettingsError(f"{E.BROKER_URL} must be a redis:// or rediss:// URL, not {parts.scheme}://")
    if not parts.hostname:
        raise SettingsError(f"{E.BROKER_URL} has no host")
    netloc = parts.netloc
    if password:
        host = netloc.rpartition("@")[2]
        user = quote(parts.username or "", safe="")
        # quote everything: '@', ':' and '/' in a password would otherwise change what the URL means.
        netloc = f"{user}:{quote(password, safe='')}@{host}"
    path = f"/{db}" if db is not None else parts.path
    return urlunsplit((parts.scheme, netloc, path, parts.query, parts.fragment))


def _sentinel(env: Mapping[str, str], url: str, password: str | None, db: int | None) -> Sentinel | None:
    """The sentinels of a kombu sentinel:// URL ("sentinel://h1:26379;sentinel://h2:26379")."""
    master = env.get(E.BROKER_SENTINEL_MASTER, "").strip()
    if not url.startswith("sentinel://"):
        if master:
            raise SettingsError(f"{E.BROKER_SENTINEL_MASTER} is set but {E.BROKER_URL} is not sentinel://")
        return None
    if not master:
        raise SettingsError(f"{E.BROKER_URL} is sentinel:// but {E.BROKER_SENTINEL_MASTER} is unset")
    hosts = []
    for part in url.split(";"):
        try:
            parts = urlsplit(part.strip())
            port = parts.port or 26379
        except ValueError:
            raise SettingsError(
                f"{E.BROKER_URL}: {part.strip()!r} is not a sentinel://host:port URL"
            ) from None
        if parts.scheme != "sentinel" or not parts.hostname:
            raise SettingsError(f"{E.BROKER_URL}: {part.strip()!r} is not a sentinel://host:port URL")
        hosts.append((parts.hostname, port))
        path_db = parts.path.strip("/")
        if db is None and path_db.isdigit():
            db = int(path_db)
    sentinel_password = env.get(E.BROKER_SENTINEL_PASSWORD) or None
    return Sentinel(master, tuple(hosts), db or 0, password, sentinel_password)


def _sentinel_url(sentinel: Sentinel) -> str:
    """kombu's URL: every part carries the password and database, as kombu may switch to any of them."""
    auth = f":{quote(sentinel.password, safe='')}@" if sentinel.password else ""
    return ";".join(
        f"sentinel://{auth}{f'[{h}]' if ':' in h else h}:{p}/{sentinel.db}" for h, p in sentinel.sentinels
    )


def _ssl_options(env: Mapping[str, str], url: str) -> dict | None:
    if not url.startswith("rediss://"):
        return None
    options: dict = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    if _flag(env, E.BROKER_TLS_INSECURE):
        options["ssl_cert_reqs"] = ssl.CERT_NONE
    ca_file = env.get(E.BROKER_TLS_CA_FILE, "").strip()
    if ca_file:
        options["ssl_ca_certs"] = ca_file
    return options


def _priority_steps(raw: str) -> list[int] | None:
    if not raw.strip():
        return None
    try:
        steps = [int(step) for step in _list(raw)]
    except ValueError:
        raise SettingsError(f"{E.PRIORITY_STEPS}={raw!r} must be comma-separated integers") from None
    if steps != sorted(set(steps)) or steps[0] < 0 or steps[-1] > 255:
        raise SettingsError(
            f"{E.PRIORITY_STEPS}={raw!r} must be distinct integers in ascending order within 0..255"
        )
    return steps


def _gpu_memory_limit(raw: str) -> str | None:
    raw = raw.strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{E.GPU_MEMORY_LIMIT}={raw!r} must be bytes or a fraction in (0, 1]") from None
    if value <= 0 or (value > 1 and not value.is_integer()):
        raise SettingsError(f"{E.GPU_MEMORY_LIMIT}={raw!r} must be bytes or a fraction in (0, 1]")
    return raw


def restore_interval(visibility_timeout: int) -> int:
    return max(1, min(10, visibility_timeout // 10))


def from_env(env: Mapping[str, str]) -> Settings:
    password = env.get(E.BROKER_PASSWORD) or None
    raw_url = env.get(E.BROKER_URL, "").strip() or contract.DEFAULT_BROKER_URL
    db = _int(env, E.BROKER_DB, None)
    sentinel = _sentinel(env, raw_url, password, db)
    if sentinel is not None:
        broker_url = _sentinel_url(sentinel)
    else:
        broker_url = compose_broker_url(raw_url, password, db)
    broker_use_ssl = _ssl_options(env, broker_url)

    backend = env.get(E.RESULT_BACKEND)
    if backend is None:
        result_backend = broker_url
    elif backend.strip().lower() in ("", "none"):
        result_backend = None
    else:
        result_backend = backend.strip()

    visibility_timeout = _int(env, E.VISIBILITY_TIMEOUT, contract.DEFAULT_VISIBILITY_TIMEOUT, minimum=1)
    task_time_limit = _int(env, E.TASK_TIME_LIMIT, contract.DEFAULT_TASK_TIME_LIMIT, minimum=0) or None
    check_time_limit(visibility_timeout, task_time_limit, E.TASK_TIME_LIMIT)

    keyprefix = env.get(E.GLOBAL_KEYPREFIX, "")
    unacked_key = env.get(E.UNACKED_KEY, "").strip() or contract.UNACKED_KEY
    separator = contract.separator(env.get(E.PRIORITY_SEP))
    transport_options: dict = {
        "visibility_timeout": visibility_timeout,
        "sep": separator,
        # kombu looks for tasks of dead workers every 10 x 10 s by default; tie the sweep to the visibility
        # timeout so that a short one also brings lost tasks back soon.
        "unacked_restore_interval": restore_interval(visibility_timeout),
        "unacked_restore_throttle": 1,
    }
    steps = _priority_steps(env.get(E.PRIORITY_STEPS, ""))
    if steps is not None:
        transport_options["priority_steps"] = steps
    if unacked_key != contract.UNACKED_KEY:
        transport_options["unacked_key"] = unacked_key
    if keyprefix:
        transport_options["global_keyprefix"] = keyprefix
    result_transport_options: dict = {"global_keyprefix": keyprefix} if keyprefix else {}
    if sentinel is not None:
        transport_options |= sentinel.transport_options
        if result_backend == broker_url:
            result_transport_options |= sentinel.transport_options

    # Unset: use a GPU if one is visible (a developer's machine); "0": a CPU-only fleet, CuPy is not tried.
    gpus = _int(env, E.GPUS, None)
    return Settings(
        fleet=env.get(E.FLEET, "").strip(),
        pod_name=env.get(E.POD_NAME, "").strip(),
        broker_url=broker_url,
        broker_use_ssl=broker_use_ssl,
        result_backend=result_backend,
        transport_options=transport_options,
        result_transport_options=result_transport_options,
        sentinel=sentinel,
        global_keyprefix=keyprefix,
        priority_steps=tuple(steps or contract.KOMBU_PRIORITY_STEPS),
        separator=separator,
        unacked_key=unacked_key,
        queues=_list(env.get(E.QUEUES, "")) or ("celery",),
        pool=env.get(E.POOL, "").strip() or None,
        concurrency=_int(env, E.CONCURRENCY, None, minimum=1),
        visibility_timeout=visibility_timeout,
        task_time_limit=task_time_limit,
        soft_shutdown_timeout=_float(env, E.SOFT_SHUTDOWN_TIMEOUT, None),
        result_expires=_int(env, E.RESULT_EXPIRES, contract.DEFAULT_RESULT_EXPIRES, minimum=1),
        heartbeat_file=env.get(E.HEARTBEAT_FILE, "").strip() or contract.HEARTBEAT_FILE,
        heartbeat_max_age=_float(env, E.HEARTBEAT_MAX_AGE, contract.HEARTBEAT_MAX_AGE, minimum=1.0),
        state_interval=_float(env, E.STATE_INTERVAL, contract.STATE_INTERVAL_SECONDS, minimum=0.1),
        gpus=gpus,
        require_gpu=_flag(env, E.REQUIRE_GPU),
        gpu_memory_limit=_gpu_memory_limit(env.get(E.GPU_MEMORY_LIMIT, "")),
        max_payload_bytes=_int(env, E.MAX_PAYLOAD_BYTES, DEFAULT_MAX_PAYLOAD_BYTES, minimum=1024),
    )


def check_time_limit(visibility_timeout: int, time_limit: float | None, where: str) -> None:
    """A task that may outlive the visibility timeout is handed to a second worker while the first runs it."""
    if time_limit is None:
        raise SettingsError(
            f"{where} is unset: every task needs a time limit below the visibility timeout "
            f"({visibility_timeout}s, {E.VISIBILITY_TIMEOUT}), or Redis hands a long task to a second worker"
        )
    if visibility_timeout <= time_limit:
        raise SettingsError(
            f"the visibility timeout ({visibility_timeout}s, {E.VISIBILITY_TIMEOUT}) must exceed the task "
            f"time limit ({time_limit}s, {where}); otherwise Redis hands a still-running task to a second worker"
        )
