"""A throw-away redis-server: the real program on a free loopback port, no persistence (tests and the demo).

The tests reach it through `tests/redis_server.py` and the `redis_server`/`redis_url` fixtures; `gpufleet demo`
runs its broker with it.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One redis-server process that can be stopped and started again on the same port.

    Keeping the port across restarts lets failure tests cut the broker away from running clients and then
    bring it back where they expect it.
    """

    def __init__(self, port: int | None = None, startup_timeout: float = 30.0):
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.startup_timeout = startup_timeout
        self._dir = Path(tempfile.mkdtemp(prefix="gpufleet-redis-"))
        self._proc: subprocess.Popen | None = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @contextlib.contextmanager
    def stalled(self):
        """The server stopped (SIGSTOP) for the block's duration: connections stay open and every command hangs,
        as behind a partition, until it goes on (SIGCONT)."""
        assert self._proc is not None and self.running, "redis-server is not running"
        self._proc.send_signal(signal.SIGSTOP)
        try:
            yield
        finally:
            self._proc.send_signal(signal.SIGCONT)

    def start(self) -> None:
        if self.running:
            return
        # --save '' and --appendonly no: a test broker must not spend the shared CPU on persistence.
        cmd = [
            REDIS_SERVER,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self._dir),
            "--logfile", str(self._dir / "redis.log"),
        ]  # fmt: skip
        self._proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + self.startup_timeout
        while not _ping(self.port):
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode(errors="replace")
                raise RuntimeError(f"redis-server exited with {self._proc.returncode}: {err}{self.log()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not answer on port {self.port}: {self.log()}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self._proc is None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._proc.stderr.close()
        self._proc = None

    def log(self) -> str:
        path = self._dir / "redis.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class WriteCounter:
    """Counts the writes a redis-py client makes on its connections: each write is one round trip.

    For the tests and the benchmark that prove a probe costs one round trip, on a real connection."""

    def __init__(self, client) -> None:
        self.writes = 0
        pool = client.connection_pool
        make = pool.make_connection

        def counted():
            conn = make()
            send = conn.send_packed_command

            def send_counted(*args, **kwargs):
                self.writes += 1
                return send(*args, **kwargs)

            conn.send_packed_command = send_counted
            return conn

        pool.make_connection = counted
