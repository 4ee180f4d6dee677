"""Pure builders of a GpuTaskQueue's status: conditions that keep their transition time, and the status body."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

BROKER_REACHABLE = "BrokerReachable"
READY = "Ready"
SCALING_LIMITED = "ScalingLimited"


def set_condition(
    conditions: Sequence[dict[str, Any]],
    type_: str,
    status: bool,
    reason: str,
    message: str,
    now: str,
    generation: int | None = None,
) -> list[dict[str, Any]]:
    """Conditions with `type_` set; lastTransitionTime moves only when the status itself changes."""
    value = "True" if status else "False"
    old = next((c for c in conditions if c["type"] == type_), None)
    since = (
        old["lastTransitionTime"]
        if old and old.get("status") == value and old.get("lastTransitionTime")
        else now
    )
    new = {"type": type_, "status": value, "reason": reason, "message": message, "lastTransitionTime": since}
    if generation is not None:
        new["observedGeneration"] = generation
    return [c for c in conditions if c["type"] != type_] + [new]


def condition(conditions: Sequence[dict[str, Any]], type_: str) -> dict[str, Any] | None:
    return next((c for c in conditions if c["type"] == type_), None)


def camel(word: str) -> str:
    """limited_by names (camelCase) as condition reasons (CamelCase)."""
    return word[:1].upper() + word[1:]
