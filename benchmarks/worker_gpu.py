"""On a GPU: matmul TFLOP/s through a gpufleet worker against in-process CuPy, and host<->device GB/s.

    python benchmarks/worker_gpu.py

Prints a line and exits 0 where there is no CUDA device. Through the fleet a task pays for the codec,
Redis (kombu base64-encodes bodies) and two transfers; the ratio says what share of the GPU's speed a
caller gets for a task of that size.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "worker")]

TRANSFER_BYTES = 256 * 1024**2
MATMUL_SIZES = (1024, 2048, 4096)  # 4096: 2 x 64 MB in, 64 MB out; Redis caps one value at 512 MB


def cuda():
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() > 0:
            return cupy
    except Exception as exc:  # no CuPy, no driver, no device: all mean "not here"
        print(f"skipped: no usable CUDA device ({type(exc).__name__}: {exc})")
        return None
    print("skipped: no CUDA device visible")
    return None


def best_of(fn, sync, repeat=5) -> float:
    fn()
    sync()
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - start)
    return best


def transfers(cupy) -> None:
    import cupyx

    sync = cupy.cuda.runtime.deviceSynchronize
    n = TRANSFER_BYTES // 4
    pageable = np.random.default_rng(0).standard_normal(n).astype(np.float32)
    pinned = cupyx.empty_pinned(n, np.float32)
    pinned[...] = pageable
    device = cupy.empty(n, np.float32)
    rows = [
        ("host->device pageable", best_of(lambda: device.set(pageable), sync)),
        ("host->device pinned", best_of(lambda: device.set(pinned), sync)),
        ("device->host pageable", best_of(lambda: device.get(out=pageable), sync)),
        ("device->host pinned", best_of(lambda: device.get(out=pinned), sync)),
    ]
    print(f"{'transfer of 256 MB':<24} {'GB/s':>8}")
    for name, seconds in rows:
        print(f"{name:<24} {TRANSFER_BYTES / seconds / 1e9:8.2f}")
    print(
        f"pinned/pageable: host->device {rows[0][1] / rows[1][1]:.2f}x, device->host {rows[2][1] / rows[3][1]:.2f}x"
    )


def matmuls(cupy) -> None:
    from celery import Celery
    from workerproc import Worker, worker_env

    from gpufleet_worker.app import configure
    from redis_server import RedisServer

    sync = cupy.cuda.runtime.deviceSynchronize
    rng = np.random.default_rng(0)
    with RedisServer() as redis_server, tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        env = worker_env(redis_server.url, tmp, GPUFLEET_GPUS="1", GPUFLEET_REQUIRE_GPU="1",
                         GPUFLEET_MAX_PAYLOAD_BYTES=str(1 << 30),
                         PYTHONPATH=os.pathsep.join([str(ROOT / "worker_image")]))  # fmt: skip
        producer = Celery("gpu-bench")
        configure(producer, env)
        with Worker(env, tmp / "worker.log", pool="prefork"):
            print(
                f"{'float32 matmul n':<18} {'in-process TFLOP/s':>19} {'fleet TFLOP/s':>14} {'fleet ms':>9} {'ratio':>7}"
            )
            for n in MATMUL_SIZES:
                a = rng.standard_normal((n, n)).astype(np.float32)
                b = rng.standard_normal((n, n)).astype(np.float32)
                da, db = cupy.asarray(a), cupy.asarray(b)
                local = best_of(lambda: da @ db, sync)  # noqa: B023
                fleet = best_of(lambda: producer.send_task("gpufleet.matmul", args=(a, b)).get(timeout=600),  # noqa: B023
                                lambda: None, repeat=3)  # fmt: skip
                flops = 2 * n**3
                print(f"{n:<18} {flops / local / 1e12:19.2f} {flops / fleet / 1e12:14.3f} {fleet * 1000:9.1f} "
                      f"{local / fleet:7.3f}")  # fmt: skip


def main() -> None:
    cupy = cuda()
    if cupy is None:
        return
    print(f"device: {cupy.cuda.runtime.getDeviceProperties(0)['name'].decode()}, CuPy {cupy.__version__}")
    transfers(cupy)
    print()
    matmuls(cupy)


if __name__ == "__main__":
    main()
