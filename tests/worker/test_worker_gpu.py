"""The CuPy path, on a real CUDA device (skipped where there is none)."""

from __future__ import annotations

import numpy as np
import pytest
from celery import Celery
from workerproc import Worker, worker_env

from gpufleet_worker import codec, device, gpu_task, tasks
from gpufleet_worker.app import configure
from gpufleet_worker.errors import GpuOutOfMemory
from gpufleet_worker.settings import from_env

pytestmark = pytest.mark.gpu

rng = np.random.default_rng(3)


@pytest.fixture
def gpu(monkeypatch):
    monkeypatch.setattr(device, "_current", None)
    monkeypatch.setattr(codec, "_allocate", np.empty)
    dev = device.init(from_env({"GPUFLEET_GPUS": "1", "GPUFLEET_REQUIRE_GPU": "1"}))
    yield dev
    dev.free_memory()


def _is_pinned(array: np.ndarray) -> bool:
    import cupy

    attrs = cupy.cuda.runtime.pointerGetAttributes(array.ctypes.data)
    return attrs.type == cupy.cuda.runtime.memoryTypeHost


def test_the_device_is_cupy_and_transfers_go_through_pinned_memory(gpu):
    import cupy

    assert gpu.is_gpu and gpu.xp is cupy and gpu.name.startswith("cuda:0")
    big = rng.standard_normal((1024, 512)).astype(">f4")  # byte-swapped: CuPy only has native dtypes
    on_device = gpu.to_device(big)
    assert isinstance(on_device, cupy.ndarray) and on_device.dtype == np.float32
    back = gpu.to_host(on_device)
    np.testing.assert_array_equal(back, big)
    assert _is_pinned(back)
    decoded = codec.loads(codec.dumps(big))
    assert _is_pinned(decoded), "large arrays are decoded straight into pinned memory on a GPU worker"
    assert not _is_pinned(codec.loads(codec.dumps(np.ones(3))))


IMAGES = rng.integers(0, 256, (2, 17, 13, 3), dtype=np.uint8)


@pytest.mark.parametrize(
    "task, args, kwargs",
    [
        (tasks.matmul, (rng.standard_normal((64, 32)), rng.standard_normal((32, 16))), {}),
        (tasks.batched_matmul, (rng.standard_normal((4, 8, 3)), rng.standard_normal((4, 3, 2))), {}),
        (tasks.fft, (rng.standard_normal((8, 8)),), {}),
        (tasks.ifft, (rng.standard_normal((8, 8)),), {"axes": [0]}),
        (tasks.reduce, (rng.standard_normal((8, 8)), "std"), {"axis": 0}),
        (tasks.stats, (rng.standard_normal((30, 4)),), {"axis": 0, "quantiles": [0.25, 0.75]}),
        (tasks.cosine_topk, (rng.standard_normal((5, 8)), rng.standard_normal((300, 8))), {"k": 4}),
        (tasks.normalize_images, (IMAGES, [0.5, 0.4, 0.3], [0.2, 0.2, 0.2]), {}),
        (tasks.resize_images, (IMAGES, 9, 31), {}),
        (tasks.convolve_images, (IMAGES, rng.standard_normal((3, 5))), {}),
    ],
    ids=lambda v: getattr(v, "name", None),
)
def test_library_tasks_on_the_gpu_match_their_numpy_path(gpu, task, args, kwargs):
    got = task.apply(args=args, kwargs=kwargs).get()
    # The same function on NumPy, which the CPU tests check against independent references.
    expected = task.run.__wrapped__(np, *args, **kwargs)
    if isinstance(expected, dict):
        assert got.keys() == expected.keys()
        for key in expected:
            np.testing.assert_allclose(got[key], expected[key], rtol=1e-5, atol=1e-5)
    else:
        assert isinstance(got, np.ndarray) and got.dtype == expected.dtype
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_cosine_topk_on_the_gpu(gpu):
    corpus = rng.standard_normal((2000, 32)).astype(np.float32)
    queries = corpus[:5] + 0.001
    got = tasks.cosine_topk.apply(args=(queries, corpus), kwargs={"k": 1}).get()
    np.testing.assert_array_equal(got["indices"][:, 0], np.arange(5))


@gpu_task(name="test.gpu_hog")
def hog(xp, nbytes):
    return xp.ones(nbytes, dtype=xp.uint8).sum()


def test_out_of_memory_fails_the_task_and_the_device_lives_on(monkeypatch):
    monkeypatch.setattr(device, "_current", None)
    device.init(from_env({"GPUFLEET_GPUS": "1", "GPUFLEET_GPU_MEMORY_LIMIT": str(64 * 1024**2)}))
    result = hog.apply(args=(1024**3,))
    assert isinstance(result.result, GpuOutOfMemory)
    assert "ran out of GPU memory" in str(result.result)
    assert hog.apply(args=(1024,)).get() == 1024


def test_a_gpu_worker_runs_tasks_on_cupy(redis_url, tmp_path):
    env = worker_env(redis_url, tmp_path, GPUFLEET_GPUS="1", GPUFLEET_REQUIRE_GPU="1")
    with Worker(
        env, tmp_path / "worker.log", app="worker_user_app:app", pool="prefork", concurrency=2
    ) as worker:
        producer = Celery("producer")
        configure(producer, env)
        got = producer.send_task("user.scale", args=(np.arange(4.0), 2.0)).get(timeout=120)
        a = rng.standard_normal((256, 256)).astype(np.float32)
        out = producer.send_task("gpufleet.matmul", args=(a, a)).get(timeout=120)
    assert got["xp"] == "cupy" and got["on_device"] is True
    np.testing.assert_allclose(out, a @ a, rtol=1e-4, atol=1e-4)
    assert "gpufleet device: cuda:0" in worker.log()
