"""The operator-worker contract (docs/worker-contract.md), defined once; both sides import it from here.

What the operator and the worker read or write in the broker and in the pod: kombu's key layout values, the
fleet's worker-state hash and its entries, the heartbeat path. Pure and free of Celery, redis and NumPy: the
operator imports it (it ships this package) and so does the liveness probe.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Mapping
from dataclasses import dataclass

# kombu's Redis transport: one list per priority step, "<queue><sep><step>" for every step but the first.
KOMBU_SEP = "\x06\x16"
KOMBU_PRIORITY_STEPS = (0, 3, 6, 9)

HEARTBEAT_FILE = "/tmp/gpufleet/heartbeat"
HEARTBEAT_MAX_AGE = 60.0
STATE_INTERVAL_SECONDS = 5.0  # how often a worker rewrites its entry at the latest
STATE_TTL_INTERVALS = 3  # an entry not rewritten for this many intervals is stale (its worker is gone)


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

    @classmethod
    def fresh(cls, active: int, done: int, since: float, now: float, interval: float) -> WorkerState:
        return cls(active > 0, round(since, 3), round(now + STATE_TTL_INTERVALS * interval, 3), active, done)

    def to_json(self, hostname: str) -> str:
        return json.dumps(
            {
                "busy": self.busy,
                "since": self.since,
                "expires": self.expires,
                "active": self.active,
                "done": self.done,
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


def stale_fields(fields: Mapping[bytes | str, bytes | str], now: float, own: str) -> list[bytes | str]:
    """Fields whose entry has expired or cannot be read, other than `own`: left by workers that died."""
    live = live_workers(fields, now)
    return [name for name in fields if _text(name) != own and _text(name) not in live]
