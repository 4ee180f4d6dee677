"""The heartbeat file that the pod's liveness probe reads (`python -m gpufleet_worker.health`).

The first beat comes from the process that has just set up its device; the main process then keeps the
file fresh. So a pod whose device never came up is never reported alive.
"""

from __future__ import annotations

import os
import time
from pathlib import Path


def clear(path: str) -> None:
    """Forget a beat left by an earlier run of the container (the directory may outlive it)."""
    Path(path).unlink(missing_ok=True)


def beat(path: str) -> None:
    file = Path(path)
    file.parent.mkdir(parents=True, exist_ok=True)
    file.touch()
    os.utime(file)


def refresh(path: str) -> bool:
    """Renew an existing beat; never create the first one. True if the file was there."""
    try:
        os.utime(path)
    except FileNotFoundError:
        return False
    return True


def age(path: str, now: float | None = None) -> float | None:
    try:
        mtime = os.stat(path).st_mtime
    except FileNotFoundError:
        return None
    return (time.time() if now is None else now) - mtime
