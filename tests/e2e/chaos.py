"""Helpers of the fault tests (test_faults.py): a TCP proxy that can blackhole Redis, a Redis with persistence,
the accounting of chaos_app's tasks, a burst producer, and the operator's probe histogram."""

from __future__ import annotations

import base64
import collections
import json
import signal
import socket
import subprocess
import threading
import time
import urllib.request
import uuid

import redis
from celery import Celery

from chaos_app import DONE, RUNS
from gpufleet_tools.devcluster.redisserver import _ping
from gpufleet_worker.app import configure
from redis_server import REDIS_SERVER, RedisServer


class BlackholeProxy:
    """A TCP proxy on loopback in front of one port. `blackhole()` stops it forwarding, as a network partition
    that drops packets does: nobody gets a reset, new connections are accepted and then hear nothing, and the
    bytes in flight are held (as TCP would retransmit them) until `heal()`, when they go on."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._open = threading.Event()
        self._open.set()
        self._closed = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, name="blackhole-accept", daemon=True).start()

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def blackhole(self) -> None:
        self._open.clear()

    def heal(self) -> None:
        self._open.set()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._connect, args=(client,), daemon=True).start()

    def _connect(self, client: socket.socket) -> None:
        self._open.wait()  # a connection made in the blackhole is accepted, and hears nothing until it heals
        try:
            upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        with self._lock:
            self._sockets += [client, upstream]
        for src, dst in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                self._open.wait()
                if self._closed:
                    break
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            for s in (src, dst):
                s.close()

    def close(self) -> None:
        self._closed = True
        self._open.set()
        self._listener.close()
        with self._lock:
            for s in self._sockets:
                s.close()


class PersistentRedis(RedisServer):
    """The tests' redis-server with its append-only file on (`appendonly yes`, fsync every second, as a
    production broker is configured), which `crash()` kills with SIGKILL and `start()` brings back on the same
    port and data directory."""

    def start(self) -> None:
        if self.running:
            return
        cmd = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
               "--appendonly", "yes", "--appendfsync", "everysec", "--dir", str(self._dir),
               "--logfile", str(self._dir / "redis.log")]  # fmt: skip
        self._proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + self.startup_timeout
        # Up once it answers PING *and* has loaded its file (until then it answers -LOADING to everything else).
        while not (_ping(self.port) and self._loaded()):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server (appendonly) did not come up on {self.port}: {self.log()}")
            time.sleep(0.05)

    def _loaded(self) -> bool:
        try:
            return redis.Redis(port=self.port, socket_timeout=1).info("persistence")["loading"] == 0
        except redis.RedisError:
            return False

    def crash(self) -> None:
        self._proc.send_signal(signal.SIGKILL)
        self._proc.wait(10)
        self._proc.stderr.close()
        self._proc = None


class ChaosTasks:
    """chaos.work tasks sent to one queue, and their accounting from the traces chaos_app leaves in Redis."""

    def __init__(self, redis_url: str, queue: str = "gpu") -> None:
        self.redis_url, self.queue = redis_url, queue
        self.redis = redis.Redis.from_url(redis_url)
        self.app = Celery("chaos-producer")
        configure(self.app, {"GPUFLEET_BROKER_URL": redis_url, "GPUFLEET_QUEUES": queue,
                             "GPUFLEET_RESULT_BACKEND": ""})  # fmt: skip
        self.sent: list[str] = []

    def send(self, n: int, seconds: float, prefix: str = "t") -> None:
        for _ in range(n):
            marker = f"{prefix}{len(self.sent)}"
            self.app.send_task("chaos.work", args=[marker, seconds], queue=self.queue, serializer="json")
            self.sent.append(marker)

    def burst(self, n: int, prefix: str = "b", batch: int = 5000) -> float:
        """`n` trivial tasks pushed in pipelines of `batch` LPUSHes: Celery's own message (protocol 2, JSON),
        taken from one that send_task made, with a fresh id each. Returns the seconds the push took."""
        scratch = f"{self.queue}-template-{uuid.uuid4().hex[:6]}"
        self.app.send_task("chaos.work", args=["template", 0], queue=scratch, serializer="json")
        template = json.loads(self.redis.rpop(scratch))
        self.redis.delete(f"_kombu.binding.{scratch}")
        embed = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
        started = time.monotonic()
        pipe = self.redis.pipeline(transaction=False)
        for i in range(n):
            marker, task_id = f"{prefix}{len(self.sent)}", str(uuid.uuid4())
            body = base64.b64encode(json.dumps([[marker, 0], {}, embed]).encode()).decode()
            headers = {
                **template["headers"],
                "id": task_id,
                "root_id": task_id,
                "argsrepr": repr([marker, 0]),
            }
            properties = {**template["properties"], "correlation_id": task_id, "delivery_tag": str(uuid.uuid4()),
                          "delivery_info": {"exchange": "", "routing_key": self.queue}}  # fmt: skip
            pipe.lpush(self.queue, json.dumps({**template, "body": body, "headers": headers,
                                               "properties": properties}))  # fmt: skip
            self.sent.append(marker)
            if (i + 1) % batch == 0:
                pipe.execute()
        pipe.execute()
        return time.monotonic() - started

    def done(self) -> set[str]:
        return {m.decode() for m in self.redis.smembers(DONE)}

    def done_count(self) -> int:
        return self.redis.scard(DONE)

    def all_done(self) -> bool:
        return self.done_count() >= len(self.sent) and self.done() >= set(self.sent)

    def lost(self) -> list[str]:
        return sorted(set(self.sent) - self.done())

    def duplicates(self) -> dict[str, int]:
        counts = collections.Counter(m.decode() for m in self.redis.hvals(RUNS))
        return {m: n for m, n in counts.items() if n > 1}

    def ledger(self) -> tuple[int, int, int]:
        """(queued, reserved, done) read in one MULTI: waiting in the queue, delivered and not acknowledged yet
        (kombu's unacked hash), finished."""
        pipe = self.redis.pipeline(transaction=True)
        queued, reserved, done = pipe.llen(self.queue).hlen("unacked").scard(DONE).execute()
        return queued, reserved, done

    def accounted(self) -> tuple[set[str], set[str], set[str]]:
        """The markers of the tasks queued, reserved and done, read in one MULTI."""
        pipe = self.redis.pipeline(transaction=True)
        queued, reserved, done = pipe.lrange(self.queue, 0, -1).hvals("unacked").smembers(DONE).execute()
        return ({_marker(json.loads(m)) for m in queued}, {_marker(json.loads(v)[0]) for v in reserved},
                {m.decode() for m in done})  # fmt: skip

    def close(self) -> None:
        self.app.close()
        self.redis.close()


def _marker(message: dict) -> str:
    """The marker of a chaos.work message as kombu stores it (a JSON body, base64-encoded)."""
    return json.loads(base64.b64decode(message["body"]))[0][0]


def probe_seconds(metrics_port: int) -> tuple[int, float, dict[float, int]]:
    """The operator's gpufleet_probe_seconds histogram: (count, sum, cumulative count per upper bound)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    count, total, buckets = 0, 0.0, {}
    for line in text.splitlines():
        if line.startswith("gpufleet_probe_seconds_count"):
            count += int(float(line.split()[-1]))
        elif line.startswith("gpufleet_probe_seconds_sum"):
            total += float(line.split()[-1])
        elif line.startswith("gpufleet_probe_seconds_bucket"):
            bound = line.split('le="')[1].split('"')[0]
            le = float("inf") if bound == "+Inf" else float(bound)
            buckets[le] = buckets.get(le, 0) + int(float(line.split()[-1]))
    return count, total, buckets


def probe_figures(before: tuple, after: tuple) -> str:
    """The probes between two readings of the histogram: how many, their mean, and the bucket their slowest
    fell in."""
    count, total = after[0] - before[0], after[1] - before[1]
    if not count:
        return "no probe"
    slowest = min(le for le, n in after[2].items() if n - before[2].get(le, 0) == count)
    return f"{count} probes, mean {1000 * total / count:.1f} ms, all <= {1000 * slowest:g} ms"
