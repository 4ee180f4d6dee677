"""Fixtures of the operator's tests."""

from __future__ import annotations

import socket
import threading

import pytest


@pytest.fixture
def blackhole():
    """A broker URL whose server accepts connections and never answers, as a blackholed broker does; yields the
    URL and the list of connections it accepted."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    accepted: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                accepted.append(server.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    yield f"redis://127.0.0.1:{server.getsockname()[1]}/0", accepted
    server.close()
    for conn in accepted:
        conn.close()
