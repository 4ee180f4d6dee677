"""Arrays producer to result through a real worker and Redis, on each path; then the codec's own GB/s.

    python benchmarks/worker_codec.py [--sizes-mb 0.001,1,64] [--max-mb 256] [--no-roundtrip] [--no-codec]

Round trips: a task that returns its argument (bench.echo), one float32 array of each size, through one solo
worker, timed from the producer's send to its result in hand (median of several):
- today's: the result path before results followed the request's format (every result in gpufleet-msgpack,
  Celery's Redis backend), from a producer with the codec;
- binary: gpufleet_worker.client.use_arrays(producer) against the worker as it is now;
- JSON: a plain Celery producer (Celery's defaults), the array sent as nested lists (`tolist()`), the result
  read as lists, against the same worker. Not counted: making the lists from the array beforehand. At 16 MB
  and more, one sample.
Today's and binary take turns, each going first as often, so that a change of load on a shared machine hits
them alike; JSON runs after them, on its own (with the three taking turns, the path after the JSON one read
1.2-1.3x slower at 1 KB). Beside the wall time, each worker process's CPU time per call: on a shared machine the
wall time of a 64 MB round trip moved by a third between runs, the CPU time much less.
Redis' pubsub output buffer limit is lifted, so a result of 64 MB reaches its waiting producer at once.

Codec: encode and decode GB/s beside `tobytes` and `copy`, in process. Ratios near 1 mean the codec adds
little beyond the copy it must make.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import redis
from celery import Celery

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "worker")]

from workerproc import Worker, worker_env  # noqa: E402

from gpufleet_worker import codec  # noqa: E402
from gpufleet_worker.client import use_arrays  # noqa: E402
from redis_server import RedisServer  # noqa: E402

TIMEOUT = 900


def best_of(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def label(nbytes: int) -> str:
    return f"{nbytes >> 20} MB" if nbytes >= 1 << 20 else f"{nbytes >> 10} KB"


def interleaved(calls: dict, repeat: int, warm: bool = True) -> dict[str, float]:
    """Median seconds of each call, the calls taking turns (so that a load change hits them alike)."""
    if warm:
        for call in calls.values():
            call()
    samples = {name: [] for name in calls}
    names = list(calls)
    for i in range(repeat):
        # Each goes first as often as the other: the call after a big one pays for some of its clean-up.
        for name in names[i % len(names) :] + names[: i % len(names)]:
            call = calls[name]
            start = time.perf_counter()
            call()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(s) for name, s in samples.items()}


@contextlib.contextmanager
def worker_cpu(worker: Worker, samples: list[float]):
    """Appends the worker process's CPU seconds (user and system, Linux /proc) spent during the block."""

    def seconds() -> float:
        fields = Path(f"/proc/{worker.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    start = seconds()
    yield
    samples.append(seconds() - start)


def roundtrip(producer: Celery, queue: str, value):
    result = producer.send_task("bench.echo", args=(value,), queue=queue)
    out = result.get(timeout=TIMEOUT)
    # Redis keeps results for an hour: without this, dozens of 64 MB results pile up in its memory.
    result.forget()
    return out


def roundtrips(sizes: list[int]) -> None:
    with RedisServer() as redis_server, tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        url = redis_server.url
        redis.Redis.from_url(url).config_set("client-output-buffer-limit", "pubsub 0 0 0")
        env = worker_env(url, tmp, GPUFLEET_STATE_INTERVAL="5",
                         PYTHONPATH=os.pathsep.join([str(ROOT / "benchmarks"), str(ROOT / "worker_image")]))  # fmt: skip
        today_env = {
            **env,
            "GPUFLEET_QUEUES": "today",
            "BENCH_TODAY_CODEC": "1",
            "GPUFLEET_POD_NAME": "today-0",
        }
        binary = use_arrays(Celery("bench-binary", broker=url, backend=url))
        plain = Celery("bench-plain", broker=url, backend=url)
        rows = []
        with (
            Worker(env, tmp / "now.log", app="worker_bench_app:app") as now_worker,
            Worker(today_env, tmp / "today.log", app="worker_bench_app:app") as today_worker,
        ):
            for nbytes in sizes:
                array = np.random.default_rng(0).standard_normal(nbytes // 4).astype(np.float32)
                lists = array.tolist()
                repeat = 200 if nbytes < 1 << 20 else 20 if nbytes < 16 << 20 else 6

                cpu = {"today": [], "binary": [], "json": []}

                def today(a=array, cpu=cpu):
                    with worker_cpu(today_worker, cpu["today"]):
                        assert roundtrip(binary, "today", a).nbytes == a.nbytes

                def now_binary(a=array, cpu=cpu):
                    with worker_cpu(now_worker, cpu["binary"]):
                        assert roundtrip(binary, "gpu", a).nbytes == a.nbytes

                def now_json(values=lists, cpu=cpu):
                    with worker_cpu(now_worker, cpu["json"]):
                        assert len(roundtrip(plain, "gpu", values)) == len(values)

                t = interleaved({"today": today, "binary": now_binary}, repeat)
                # JSON of a big array takes a minute or more each way: one sample, no warm-up.
                big = nbytes >= 16 << 20
                t |= interleaved({"json": now_json}, 1 if big else repeat, warm=not big)
                # /proc counts in clock ticks (10 ms): a mean over all calls, where a median would read 0.
                c = {path: sum(samples) / max(1, len(samples)) for path, samples in cpu.items()}
                rows.append((label(nbytes), t["today"], t["binary"], t["json"], c["today"], c["binary"]))
    print("producer to result, bench.echo of one float32 array, one solo worker, redis-server on loopback; "
          "median seconds")  # fmt: skip
    print(f"{'size':>8} {'today (s)':>10} {'binary (s)':>11} {'JSON (s)':>10} {'binary/today':>13} "
          f"{'JSON/today':>11} {'JSON/binary':>12} {'worker CPU today (s)':>21} {'binary (s)':>11}")  # fmt: skip
    for name, t_today, t_binary, t_json, c_today, c_binary in rows:
        print(f"{name:>8} {t_today:10.4f} {t_binary:11.4f} {t_json:10.4f} {t_binary / t_today:12.2f}x "
              f"{t_json / t_today:10.2f}x {t_json / t_binary:11.1f}x {c_today:21.4f} {c_binary:11.4f}")  # fmt: skip
    print(
        "worker CPU: the worker process's CPU time per call (mean), steadier than wall time on a shared machine"
    )
    print()


def codec_speed(max_mb: int) -> None:
    sizes = [1 << 10]
    while sizes[-1] < max_mb << 20:
        sizes.append(sizes[-1] * 4)
    limit = 2 * sizes[-1] + (1 << 20)
    print(f"{'size':>8} {'encode GB/s':>12} {'decode GB/s':>12} {'tobytes GB/s':>13} {'copy GB/s':>10} "
          f"{'enc/tobytes':>12} {'dec/copy':>9}")  # fmt: skip
    for nbytes in sizes:
        array = np.random.default_rng(0).standard_normal(nbytes // 4).astype(np.float32)
        repeat = max(3, min(200, (64 << 20) // nbytes))
        data = codec.dumps({"a": array}, max_bytes=limit)
        encode = best_of(lambda: codec.dumps({"a": array}, max_bytes=limit), repeat)  # noqa: B023
        decode = best_of(lambda: codec.loads(data, max_bytes=limit), repeat)  # noqa: B023
        tobytes = best_of(array.tobytes, repeat)
        copy = best_of(array.copy, repeat)
        encode_gbs, decode_gbs, tobytes_gbs, copy_gbs = (
            nbytes / t / 1e9 for t in (encode, decode, tobytes, copy)
        )
        print(f"{label(nbytes):>8} {encode_gbs:12.2f} {decode_gbs:12.2f} {tobytes_gbs:13.2f} {copy_gbs:10.2f} "
              f"{tobytes / encode:12.2f} {copy / decode:9.2f}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes-mb", default="0.0009765625,1,64", help="round-trip array sizes, MiB")
    parser.add_argument("--max-mb", type=int, default=256, help="largest array of the codec's own table")
    parser.add_argument("--no-roundtrip", action="store_true")
    parser.add_argument("--no-codec", action="store_true")
    args = parser.parse_args()
    if not args.no_roundtrip:
        roundtrips([int(float(mb) * (1 << 20)) for mb in args.sizes_mb.split(",")])
    if not args.no_codec:
        codec_speed(args.max_mb)


if __name__ == "__main__":
    main()
