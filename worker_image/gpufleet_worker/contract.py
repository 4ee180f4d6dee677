"""The operator-worker contract (docs/worker-contract.md), defined once; both sides import it from here.

What the operator and the worker read or write in the broker and in the pod: the names of the worker's environment
and their defaults, kombu's key layout values (separator, priority steps, unacked key), the fleet's worker-state
hash and its entries, the directory the pod mounts for the heartbeat. Pure and free of Celery, redis and NumPy:
the operator imports it (it ships this package) and so does the liveness probe.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Mapping
from dataclasses import dataclass

# kombu's Redis transport: one list per priority step, "<queue><sep><step>" for every step but the first.
KOMBU_SEP = "\x06\x16"
KOMBU_PRIORITY_STEPS = (0, 3, 6, 9)
UNACKED_KEY = "unacked"  # kombu's default unacked_key: the hash of delivered, unacknowledged messages

RUN_DIR = "/tmp/gpufleet"  # an emptyDir in every worker pod: the only writable place besides /tmp
HEARTBEAT_FILE = f"{RUN_DIR}/heartbeat"
HEARTBEAT_MAX_AGE = 60.0
STATE_INTERVAL_SECONDS = 5.0  # how often a worker rewrites its entry at the latest
STATE_TTL_INTERVALS = 3  # an entry not rewritten for this many intervals is stale (its worker is gone)


class Env:
    """The names of a worker container's environment (docs/worker-contract.md). The operator writes OPERATOR's
    into every pod; a user may set USER's through spec.worker.env; the worker's settings read both."""

    FLEET = "GPUFLEET_FLEET"
    POD_NAME = "GPUFLEET_POD_NAME"
    BROKER_URL = "GPUFLEET_BROKER_URL"
    BROKER_SENTINEL_MASTER = "GPUFLEET_BROKER_SENTINEL_MASTER"
    BROKER_SENTINEL_PASSWORD = "GPUFLEET_BROKER_SENTINEL_PASSWORD"
    BROKER_PASSWORD = "GPUFLEET_BROKER_PASSWORD"
    BROKER_DB = "GPUFLEET_BROKER_DB"
    BROKER_TLS_INSECURE = "GPUFLEET_BROKER_TLS_INSECURE"
    BROKER_TLS_CA_FILE = "GPUFLEET_BROKER_TLS_CA_FILE"
    GLOBAL_KEYPREFIX = "GPUFLEET_GLOBAL_KEYPREFIX"
    PRIORITY_STEPS = "GPUFLEET_PRIORITY_STEPS"
    PRIORITY_SEP = "GPUFLEET_PRIORITY_SEP"
    UNACKED_KEY = "GPUFLEET_UNACKED_KEY"
    QUEUES = "GPUFLEET_QUEUES"
    POOL = "GPUFLEET_POOL"
    CONCURRENCY = "GPUFLEET_CONCURRENCY"
    VISIBILITY_TIMEOUT = "GPUFLEET_VISIBILITY_TIMEOUT"
    TASK_TIME_LIMIT = "GPUFLEET_TASK_TIME_LIMIT"
    HEARTBEAT_FILE = "GPUFLEET_HEARTBEAT_FILE"
    GPUS = "GPUFLEET_GPUS"
    REQUIRE_GPU = "GPUFLEET_REQUIRE_GPU"
    STATE_INTERVAL = "GPUFLEET_STATE_INTERVAL"
    # Set by a user, when at all.
    RESULT_BACKEND = "GPUFLEET_RESULT_BACKEND"
    RESULT_EXPIRES = "GPUFLEET_RESULT_EXPIRES"
    MAX_PAYLOAD_BYTES = "GPUFLEET_MAX_PAYLOAD_BYTES"
    GPU_MEMORY_LIMIT = "GPUFLEET_GPU_MEMORY_LIMIT"
    SOFT_SHUTDOWN_TIMEOUT = "GPUFLEET_SOFT_SHUTDOWN_TIMEOUT"
    HEARTBEAT_MAX_AGE = "GPUFLEET_HEARTBEAT_MAX_AGE"

    # What the operator writes into every pod (some only where the spec asks for them).
    OPERATOR = (FLEET, POD_NAME, BROKER_URL, BROKER_SENTINEL_MASTER, BROKER_SENTINEL_PASSWORD, BROKER_PASSWORD,
                BROKER_DB, BROKER_TLS_INSECURE, BROKER_TLS_CA_FILE, GLOBAL_KEYPREFIX, PRIORITY_STEPS, PRIORITY_SEP,
                UNACKED_KEY, QUEUES, POOL, CONCURRENCY, VISIBILITY_TIMEOUT, TASK_TIME_LIMIT, HEARTBEAT_FILE, GPUS,
                REQUIRE_GPU, STATE_INTERVAL)  # fmt: skip
    USER = (RESULT_BACKEND, RESULT_EXPIRES, MAX_PAYLOAD_BYTES, GPU_MEMORY_LIMIT, SOFT_SHUTDOWN_TIMEOUT,
            HEARTBEAT_MAX_AGE)  # fmt: skip


# Read by CuPy, not by the worker's settings: its kernel cache, on the writable /tmp (the root filesystem is not).
CUPY_CACHE_DIR = ("CUPY_CACHE_DIR", "/tmp/cupy")

# The worker's defaults where a variable is unset (the operator always sets these from the spec).
DEFAULT_BROKER_URL = "redis://127.0.0.1:6379/0"
DEFAULT_VISIBILITY_TIMEOUT = 3600
DEFAULT_TASK_TIME_LIMIT = 3300
DEFAULT_RESULT_EXPIRES = 3600


def separator(raw: str | None) -> str:
    """kombu's priority separator from a spec or an environment variable: the control characters themselves,
    or their escapes as typed in YAML or a shell ("\\x06\\x16"); empty means kombu's default."""
    if not raw:
        return KOMBU_SEP
    return codecs.decode(raw, "unicode_escape") if "\\" in raw else raw


def workers_key(global_keyprefix: str, fleet: str) -> str:
    """The hash where the workers of `fleet` ("namespace/name") publish their state, one field per pod."""
    return f"{global_keyprefix}gpufleet:workers:{fleet}"


@dataclass(frozen=True)
class WorkerState:
    """One worker's entry of its fleet's state hash."""

    busy: bool
    since: float  # when `busy` last changed
    expires: float  # after this the entry is stale
    active: int = 0  # tasks running now
    done: int = 0  # tasks finished since the worker started
    tags: tuple[str, ...] = ()  # kombu delivery tags of the messages it holds (running or reserved)

    @classmethod
    def fresh(
        cls, active: int, done: int, since: float, now: float, interval: float, tags: tuple[str, ...] = ()
    ) -> WorkerState:
        expires = round(now + STATE_TTL_INTERVALS * interval, 3)
        return cls(active > 0, round(since, 3), expires, active, done, tuple(tags))

    def to_json(self, hostname: str) -> str:
        return json.dumps(
            {
                "busy": self.busy,
                "since": self.since,
                "expires": self.expires,
                "active": self.active,
                "done": self.done,
                "tags": list(self.tags),
                "hostname": hostname,
            }
        )

    @classmethod
    def from_json(cls, raw: bytes | str) -> WorkerState | None:
        """The entry, or None when it cannot be read (a foreign or corrupt field)."""
        try:
            doc = json.loads(raw)
            return cls(
                busy=bool(doc["busy"]),
                since=float(doc["since"]),
                expires=float(doc["expires"]),
                active=int(doc.get("active", 0)),
                done=int(doc.get("done", 0)),
                tags=tuple(str(t) for t in doc.get("tags") or ()),
            )
        except (ValueError, KeyError, TypeError):
            return None


def _text(name: bytes | str) -> str:
    return name.decode(errors="replace") if isinstance(name, bytes) else name


def live_workers(fields: Mapping[bytes | str, bytes | str], now: float) -> dict[str, WorkerState]:
    """Pod name -> state for the live entries of a state hash; stale and unreadable ones are left out."""
    out = {}
    for name, raw in fields.items():
        state = WorkerState.from_json(raw)
        if state is not None and state.expires >= now:
            out[_text(name)] = state
    return out


def stale_fields(
    fields: Mapping[bytes | str, bytes | str],
    now: float,
    own: str = "",
    live: Mapping[str, WorkerState] | None = None,
) -> list[str]:
    """Fields whose entry has expired or cannot be read, other than `own`: left by workers that died. `live` is
    `live_workers(fields, now)` when the caller has it already."""
    live = live_workers(fields, now) if live is None else live
    return [_text(name) for name in fields if _text(name) != own and _text(name) not in live]


# ---- orphaned deliveries -------------------------------------------------------------------------------------
# A worker that dies holding messages leaves them in kombu's `unacked` hash, where Redis would give them back only
# after the visibility timeout (hours). Its state entry names them (`tags`), so whoever sees it gone (a live worker
# of the fleet finding its entry stale, the operator seeing its pod deleted, the same pod's next container) puts
# exactly those back, at the front of their queue's list for their priority, in one atomic script. Doing it twice
# is harmless: the second run finds nothing left. Each restored message gets a new delivery tag, so a late ack
# from a worker that was only cut off (and finishes the task anyway: it runs twice) cannot remove the unacked
# entry of the new delivery.

UNACKED_INDEX_KEY = "unacked_index"  # kombu's default unacked_index_key
RESTORES_KEY = "gpufleet:restores"  # a counter that makes restored delivery tags unique

# KEYS: the fleet's worker-state hash, kombu's unacked hash, its unacked index, the restores counter.
# ARGV: the worker's field, the global key prefix, the priority separator, the priority steps ("0,3,6,9"), and
# a time: when not empty, restore only if the entry expired before it (a worker that wrote again is alive).
# Returns the number of messages put back, or -1 when the entry turned out to be alive.
RESTORE_SCRIPT = """
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return 0 end
local ok, entry = pcall(cjson.decode, raw)
if ARGV[5] ~= '' and ok and type(entry) == 'table' and tonumber(entry['expires'] or 0) >= tonumber(ARGV[5]) then
  return -1
end
redis.call('HDEL', KEYS[1], ARGV[1])
if not ok or type(entry) ~= 'table' or type(entry['tags']) ~= 'table' then return 0 end
local steps = {}
for step in string.gmatch(ARGV[4], '%d+') do steps[#steps + 1] = tonumber(step) end
table.sort(steps)
local restored = 0
for _, tag in ipairs(entry['tags']) do
  local held = redis.call('HGET', KEYS[2], tag)
  if held then
    -- kombu stores [message, exchange, routing_key]; the message is re-queued byte for byte but for its tag.
    local message, routing_key = string.match(held, '^%[(.*),%s*"[^"]*"%s*,%s*"([^"]*)"%s*%]%s*$')
    if message then
      local decoded_ok, decoded = pcall(cjson.decode, message)
      local priority = 0
      if decoded_ok and type(decoded) == 'table' and type(decoded['properties']) == 'table' then
        priority = math.max(0, math.min(9, tonumber(decoded['properties']['priority']) or 0))
      end
      local step = steps[1] or 0
      for _, s in ipairs(steps) do if s <= priority then step = s end end
      local list = ARGV[2] .. routing_key
      if step ~= 0 then list = list .. ARGV[3] .. step end
      local new_tag = tag .. '.r' .. redis.call('INCR', KEYS[4])
      local quoted = '"' .. string.gsub(tag, '%p', '%%%0') .. '"'
      local requeued = string.gsub(message, '"delivery_tag":%s*' .. quoted, '"delivery_tag": "' .. new_tag .. '"', 1)
      redis.call('RPUSH', list, requeued)
      redis.call('HDEL', KEYS[2], tag)
      redis.call('ZREM', KEYS[3], tag)
      restored = restored + 1
    end
    -- A message in a shape this script does not know stays where it is: kombu restores it after the
    -- visibility timeout.
  end
end
return restored
"""


def restore_call(
    global_keyprefix: str,
    fleet: str,
    field: str,
    *,
    separator: str = KOMBU_SEP,
    priority_steps: tuple[int, ...] = KOMBU_PRIORITY_STEPS,
    unacked_key: str = UNACKED_KEY,
    stale_before: float | None = None,
) -> tuple[list[str], list[str]]:
    """(KEYS, ARGV) of RESTORE_SCRIPT for one worker's field: `client.eval(RESTORE_SCRIPT, 4, *keys, *argv)`."""
    p = global_keyprefix
    keys = [workers_key(p, fleet), p + unacked_key, p + UNACKED_INDEX_KEY, p + RESTORES_KEY]
    steps = ",".join(str(s) for s in priority_steps)
    return keys, [field, p, separator, steps, "" if stale_before is None else repr(stale_before)]


def redis_flavour(url: str | None) -> str | None:
    """Which of kombu's Redis clients a broker or result URL is for: "redis" (redis://, rediss://), "sentinel"
    (sentinel://, the URL the operator writes for a broker behind Redis Sentinel), or None (not Redis)."""
    scheme = (url or "").partition("://")[0]
    return {"redis": "redis", "rediss": "redis", "sentinel": "sentinel"}.get(scheme)
