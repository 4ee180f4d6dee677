"""Liveness check: exit 0 when the worker's heartbeat file is fresh, 1 otherwise (with the reason)."""

from __future__ import annotations

import os
import sys

from . import contract, heartbeat


def main(env=os.environ) -> int:
    path = env.get(contract.Env.HEARTBEAT_FILE) or contract.HEARTBEAT_FILE
    try:
        max_age = float(env.get(contract.Env.HEARTBEAT_MAX_AGE) or contract.HEARTBEAT_MAX_AGE)
    except ValueError:
        print(
            f"{contract.Env.HEARTBEAT_MAX_AGE}={env[contract.Env.HEARTBEAT_MAX_AGE]!r} is not a number",
            file=sys.stderr,
        )
        return 2
    seconds = heartbeat.age(path)
    if seconds is None:
        print(
            f"unhealthy: no heartbeat at {path} (the worker has not set up its device yet)", file=sys.stderr
        )
        return 1
    if seconds > max_age:
        print(f"unhealthy: heartbeat {path} is {seconds:.0f}s old (limit {max_age:.0f}s)", file=sys.stderr)
        return 1
    print(f"healthy: heartbeat {seconds:.1f}s old")
    return 0


if __name__ == "__main__":
    sys.exit(main())
