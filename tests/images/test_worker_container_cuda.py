"""The CUDA worker image (gpufleet-worker:dev-cuda) where there is no GPU (issue 16): CuPy and its CUDA wheels
load, a fleet that requires a GPU is refused with one clear line, and one that does not serves its tasks on
NumPy. Non-root with a read-only root filesystem, like the CPU variant."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from worker_containers import celery_args, producer, worker_env, worker_options

from docker_engine import NON_ROOT, REPO, WORKER_RUNTIME, docker, read_only_options

TIMEOUT = 120
PROBE = Path(__file__).with_name("cuda_probe.py")
# What CuPy's [ctk] extra brings and the task library uses: the runtime's libraries, NVRTC and its builtins.
CUDA_LIBRARIES = {
    "libcublas.so.12", "libcublasLt.so.12", "libcufft.so.11", "libcurand.so.10", "libcusolver.so.11",
    "libcusparse.so.12", "libnvJitLink.so.12", "libnvrtc.so.12", "libnvrtc-builtins.so.12.9",
}  # fmt: skip
NO_DRIVER = "no NVIDIA driver: libcuda.so.1 cannot be loaded. A container gets it from its node"


def cupy_pin() -> str:
    lock = (REPO / "worker_image" / "requirements-cuda.txt").read_text()
    return re.search(r"^cupy-cuda12x==(\S+)$", lock, re.M).group(1)


def test_cupy_and_its_cuda_libraries_load_without_a_gpu(worker_cuda_image):
    done = docker(
        "run", "--rm", *read_only_options(WORKER_RUNTIME), "--volume", f"{PROBE}:/probe.py:ro",
        worker_cuda_image, "python", "/probe.py", timeout=TIMEOUT,
    )  # fmt: skip
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["cupy"] == cupy_pin()
    assert report["compiled"].get("cubin_bytes", 0) > 0, report["compiled"]
    assert CUDA_LIBRARIES <= set(report["libraries"]), report["libraries"]


def test_a_required_gpu_that_is_missing_stops_the_worker_with_one_clear_line(
    redis_url, worker_cuda_image, containers
):
    env = worker_env(redis_url, "cuda-required", GPUFLEET_GPUS="1", GPUFLEET_REQUIRE_GPU="1")
    worker = containers(worker_cuda_image, *celery_args(env), options=worker_options(env))
    assert worker.wait_exit(TIMEOUT) != 0
    log = worker.logs()
    lines = [line for line in log.splitlines() if "cannot start" in line]
    assert len(lines) == 1 and f"GPUFLEET_REQUIRE_GPU=1 but {NO_DRIVER}" in lines[0], log
    assert "Traceback" not in log and "insufficient" not in log, log


def test_without_gpus_set_it_serves_tasks_with_numpy_as_the_non_root_user(
    redis_url, worker_cuda_image, containers
):
    env = worker_env(redis_url, "cuda-numpy")
    assert "GPUFLEET_GPUS" not in env
    worker = containers(worker_cuda_image, *celery_args(env), options=worker_options(env))
    log = worker.wait_log(" ready.", TIMEOUT)
    assert f"gpufleet device: NumPy on the CPU ({NO_DRIVER}" in log
    a = np.arange(12.0).reshape(3, 4)
    out = producer(env).send_task("gpufleet.matmul", args=(a, a.T)).get(timeout=TIMEOUT)
    np.testing.assert_allclose(out, a @ a.T)
    assert worker.exec("id", "-u").stdout.strip() == NON_ROOT
    denied = worker.exec("touch", "/home/gpufleet/x", check=False)
    assert denied.returncode != 0 and "Read-only file system" in denied.stderr
    assert worker.exec("python", "-m", "gpufleet_worker.health").returncode == 0


@pytest.mark.gpu
def test_the_cuda_image_computes_on_a_gpu(redis_url, worker_cuda_image, containers):
    """Where Docker has NVIDIA's runtime (`--gpus`): the image's CUDA stack on a real device."""
    env = worker_env(redis_url, "cuda-gpu", GPUFLEET_GPUS="1", GPUFLEET_REQUIRE_GPU="1")
    try:
        worker = containers(
            worker_cuda_image, *celery_args(env), options=("--gpus", "1", *worker_options(env))
        )
    except AssertionError as exc:
        if "could not select device driver" in str(exc):
            pytest.skip("this Docker engine has no NVIDIA runtime (`docker run --gpus`)")
        raise
    log = worker.wait_log(" ready.", TIMEOUT)
    assert re.search(r"gpufleet device: cuda:0 \(.+\), CuPy", log), log
    rng = np.random.default_rng(5)
    a = rng.standard_normal((64, 48)).astype(np.float32)
    app = producer(env)
    np.testing.assert_allclose(
        app.send_task("gpufleet.matmul", args=(a, a.T)).get(timeout=TIMEOUT), a @ a.T, rtol=1e-4
    )
    np.testing.assert_allclose(
        app.send_task("gpufleet.fft", args=(a,)).get(timeout=TIMEOUT), np.fft.fftn(a), rtol=1e-3, atol=1e-3
    )
