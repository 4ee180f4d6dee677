"""A throw-away Redis Sentinel group on loopback: a master, its replicas and three sentinels, real processes.

The master and its replicas require `password`, the sentinels `sentinel_password` (as a production group that
has both would). Sentinels are `redis-server --sentinel` (Debian's redis-server package; the `redis-sentinel`
program of the redis-sentinel package is the same binary under another name). Timings are short so that a
failover takes seconds: a master is down after 1 s without an answer.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import redis
import redis.sentinel

from redis_server import REDIS_SERVER
from support import free_port

MASTER_NAME = "gpufleet"
DOWN_AFTER_MS = 1000


class _Process:
    def __init__(self, name: str, conf: str, directory: Path, sentinel: bool = False) -> None:
        self.name, self.directory = name, directory
        self.conf = directory / f"{name}.conf"
        self.log = directory / f"{name}.log"
        # A sentinel rewrites its own file: it must be writable.
        self.conf.write_text(f"{conf}logfile {self.log}\n")
        args = [REDIS_SERVER, str(self.conf), *(["--sentinel"] if sentinel else [])]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.running:
            self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> None:
        if self.running:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


class SentinelGroup:
    def __init__(self, replicas: int = 1, sentinels: int = 3, password: str = "master-pw",
                 sentinel_password: str = "sentinel-pw") -> None:  # fmt: skip
        self.password, self.sentinel_password = password, sentinel_password
        self.dir = Path(tempfile.mkdtemp(prefix="gpufleet-sentinel-"))
        self.redis_ports = [free_port() for _ in range(1 + replicas)]
        self.sentinel_ports = [free_port() for _ in range(sentinels)]
        self.servers: dict[int, _Process] = {}
        self.sentinels: dict[int, _Process] = {}

    # -- addresses --------------------------------------------------------------------------------------------
    @property
    def hosts(self) -> list[str]:
        """The sentinels as spec.broker.sentinel.sentinels lists them."""
        return [f"127.0.0.1:{p}" for p in self.sentinel_ports]

    @property
    def url(self) -> str:
        """kombu's broker URL (credentials left to GPUFLEET_BROKER_PASSWORD)."""
        return ";".join(f"sentinel://{h}" for h in self.hosts)

    def worker_env(self) -> dict[str, str]:
        """What the operator gives a worker pod (resources.sentinel_env), with the Secrets' values filled in."""
        return {
            "GPUFLEET_BROKER_URL": self.url,
            "GPUFLEET_BROKER_SENTINEL_MASTER": MASTER_NAME,
            "GPUFLEET_BROKER_PASSWORD": self.password,
            "GPUFLEET_BROKER_SENTINEL_PASSWORD": self.sentinel_password,
        }

    def sentinel(self) -> redis.sentinel.Sentinel:
        return redis.sentinel.Sentinel(
            [("127.0.0.1", p) for p in self.sentinel_ports],
            sentinel_kwargs={"password": self.sentinel_password, "socket_timeout": 1},
            password=self.password,
            socket_timeout=1,
        )

    def master_port(self) -> int | None:
        """The master's port as a majority of the running sentinels name it now (None: no agreement)."""
        seen = []
        for port, proc in self.sentinels.items():
            if not proc.running:
                continue
            try:
                client = redis.Redis(port=port, password=self.sentinel_password, socket_timeout=1)
                host_port = client.sentinel_get_master_addr_by_name(MASTER_NAME)
                client.close()
            except redis.RedisError:
                continue
            if host_port:
                seen.append(int(host_port[1]))
        best = max(set(seen), key=seen.count, default=None)
        return best if best is not None and seen.count(best) * 2 > len(self.sentinels) else None

    def client(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, password=self.password, socket_timeout=2)

    # -- life -------------------------------------------------------------------------------------------------
    def start(self, timeout: float = 120.0) -> SentinelGroup:
        master, *replicas = self.redis_ports
        for port in self.redis_ports:
            conf = [
                f"port {port}", "bind 127.0.0.1", 'save ""', "appendonly no", f"dir {self.dir}",
                f"requirepass {self.password}", f"masterauth {self.password}",
                "repl-diskless-sync-delay 0",  # a replica (or a demoted master) syncs at once, not 5 s later
            ]  # fmt: skip
            if port != master:
                conf.append(f"replicaof 127.0.0.1 {master}")
            self.servers[port] = _Process(f"redis-{port}", "\n".join(conf) + "\n", self.dir)
        for port in self.sentinel_ports:
            conf = [
                f"port {port}", "bind 127.0.0.1", f"dir {self.dir}",
                f"requirepass {self.sentinel_password}", f"sentinel sentinel-pass {self.sentinel_password}",
                f"sentinel monitor {MASTER_NAME} 127.0.0.1 {master} {len(self.sentinel_ports) // 2 + 1}",
                f"sentinel auth-pass {MASTER_NAME} {self.password}",
                f"sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}",
                f"sentinel failover-timeout {MASTER_NAME} 10000",
                # Known from the start, not learnt from INFO (every 10 s) and hellos (every 2 s): a quick start.
                f"sentinel myid {self._id(port)}",
                *[f"sentinel known-replica {MASTER_NAME} 127.0.0.1 {r}" for r in replicas],
                *[f"sentinel known-sentinel {MASTER_NAME} 127.0.0.1 {o} {self._id(o)}"
                  for o in self.sentinel_ports if o != port],
            ]  # fmt: skip
            self.sentinels[port] = _Process(
                f"sentinel-{port}", "\n".join(conf) + "\n", self.dir, sentinel=True
            )
        self.wait(
            f"replicas in sync with the master on {master}", lambda: self._synced(master, replicas), timeout
        )
        self.wait(
            "every sentinel knowing the master, its replicas and the other sentinels", self._settled, timeout
        )
        return self

    def _synced(self, master: int, replicas: list[int]) -> bool:
        try:
            info = self.client(master).info("replication")
        except redis.RedisError:
            return False
        online = [v for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)]
        return len([r for r in online if r.get("state") == "online"]) == len(replicas)

    def _settled(self) -> bool:
        for port in self.sentinels:
            try:
                client = redis.Redis(port=port, password=self.sentinel_password, socket_timeout=1)
                (state,) = [m for m in client.sentinel_masters().values() if m["name"] == MASTER_NAME]
                client.close()
            except (redis.RedisError, ValueError):
                return False
            if (
                state["num-slaves"] < len(self.redis_ports) - 1
                or state["num-other-sentinels"] < len(self.sentinels) - 1
            ):
                return False
        return self.master_port() == self.redis_ports[0]

    @staticmethod
    def _id(port: int) -> str:
        return f"{port:040x}"

    @staticmethod
    def wait(what: str, check, timeout: float = 30.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if got := check():
                return got
            time.sleep(0.05)
        raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")

    def kill_master(self) -> int:
        """SIGKILL the current master (it stays down); returns its port."""
        port = self.master_port()
        assert port is not None, "no master to kill"
        self.servers[port].kill()
        return port

    def failover(self) -> int:
        """SENTINEL FAILOVER: the master hands over to a replica while still running; returns the old port."""
        port = self.master_port()
        client = redis.Redis(port=self.sentinel_ports[0], password=self.sentinel_password, socket_timeout=2)

        def asked() -> bool:
            # A sentinel refuses (NOGOODSLAVE) until its last INFO of the replica shows it linked and fresh:
            # shortly after the group starts, on a loaded machine, it may not have one yet.
            try:
                client.execute_command("SENTINEL", "FAILOVER", MASTER_NAME)
            except redis.ResponseError as exc:
                if "NOGOODSLAVE" in str(exc):
                    return False
                raise
            return True

        try:
            self.wait("a sentinel accepting the failover", asked, timeout=60)
        finally:
            client.close()
        return port

    def logs(self) -> str:
        return "\n".join(f"--- {p.name} ---\n{p.log.read_text(errors='replace')[-2000:]}"
                         for p in [*self.servers.values(), *self.sentinels.values()] if p.log.exists())  # fmt: skip

    def close(self) -> None:
        for proc in [*self.sentinels.values(), *self.servers.values()]:
            proc.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> SentinelGroup:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc) -> None:
        self.close()
