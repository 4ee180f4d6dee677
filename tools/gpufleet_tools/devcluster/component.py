"""One long-running program of the control plane, with its own log file."""

from __future__ import annotations

import ctypes
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path

_PR_SET_PDEATHSIG = 1
# Looked up here, in the parent: between fork and exec the child should do as little as possible.
_prctl = ctypes.CDLL(None, use_errno=True).prctl


def die_with_parent() -> None:
    """preexec_fn: a test run killed hard must not leave programs it started running (and eating the cores).

    Linux sends the signal when the *thread* that forked the child ends, so call this only from a thread that
    outlives its child."""
    _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def tail(path: Path, lines: int) -> str:
    if not path.exists():
        return ""
    text = path.read_text(errors="replace").splitlines()
    return "\n".join(text[-lines:])


class Component:
    def __init__(self, name: str, argv: Sequence[str], log_path: Path):
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self._proc: subprocess.Popen | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Its own session: a Ctrl-C in the terminal reaches us, and we stop the components in order.
                start_new_session=True,
                preexec_fn=die_with_parent,
            )

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def exited(self) -> int | None:
        """The exit code if the program has ended, else None."""
        return self._proc.poll() if self._proc else None

    def stop(self, timeout: float = 10.0) -> None:
        if self._proc is None or self._proc.poll() is not None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()

    def tail(self, lines: int = 40) -> str:
        return tail(self.log_path, lines)
