"""Waiting for a condition, and a free loopback port."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from gpufleet_tools.devcluster.redisserver import free_port

__all__ = ["free_port", "wait_for"]


def wait_for(
    what: str,
    check: Callable[[], Any],
    timeout: float = 90.0,
    every: float = 0.2,
    show: Callable[[], Any] | None = None,
) -> Any:
    """Poll until `check()` is truthy and return it; fail naming `what` and the last value seen (or what `show()`
    then returns, when the check itself answers only yes or no). Deadlines are generous: the suites share two
    cores with other builds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = check()
        if last:
            return last
        if time.monotonic() > deadline:
            seen = show() if show is not None else last
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last: {seen!r}")
        time.sleep(every)
