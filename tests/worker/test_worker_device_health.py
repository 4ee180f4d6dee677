"""The device layer's NumPy path, gpu_task's out-of-memory handling, and the liveness check."""

from __future__ import annotations

import importlib.util
import os
import time

import numpy as np
import pytest

from gpufleet_worker import device, gpu_task, health, heartbeat
from gpufleet_worker.errors import DeviceError, GpuOutOfMemory
from gpufleet_worker.settings import from_env

NO_CUPY = importlib.util.find_spec("cupy") is None


@pytest.fixture(autouse=True)
def fresh_device(monkeypatch):
    monkeypatch.setattr(device, "_current", None)


def test_a_cpu_only_fleet_uses_numpy_and_moves_nothing():
    dev = device.init(from_env({"GPUFLEET_GPUS": "0"}))
    assert dev.xp is np and not dev.is_gpu and dev.name == "cpu"
    a = np.arange(3)
    assert dev.to_device(a) is a
    assert dev.to_host({"x": [a, (a,)]})["x"][0] is a
    assert device.current() is dev


@pytest.mark.skipif(not NO_CUPY, reason="CuPy is installed here")
def test_without_cupy_a_gpu_fleet_falls_back_to_numpy_unless_a_gpu_is_required():
    assert device.init(from_env({"GPUFLEET_GPUS": "1"})).xp is np
    with pytest.raises(DeviceError, match="GPUFLEET_REQUIRE_GPU=1 but CuPy is not installed"):
        device.init(from_env({"GPUFLEET_GPUS": "1", "GPUFLEET_REQUIRE_GPU": "1"}))


@pytest.mark.skipif(not NO_CUPY, reason="CuPy is installed here")
def test_the_gpu_probe_runs_apart_and_says_why_it_found_none():
    count, why = device.probe_gpu_count()
    assert count == 0 and "No module named 'cupy'" in why


class FakeOOM(Exception):
    pass


class FakeGpu:
    """Stands in for a CUDA device whose allocations fail the first `failures` times."""

    xp = np
    name = "cuda:0 (fake)"

    def __init__(self, failures: int):
        self.failures = failures
        self.frees = 0

    def to_device(self, obj):
        return obj

    def to_host(self, obj):
        return obj

    def is_out_of_memory(self, exc):
        return isinstance(exc, FakeOOM)

    def free_memory(self):
        self.frees += 1


def _double(a):
    dev = device.current()
    if dev.failures:
        dev.failures -= 1
        raise FakeOOM("out of memory allocating 1 TiB")
    return a * 2


@gpu_task(name="test.allocate")
def allocate(xp, a):
    return _double(a)


@gpu_task(name="test.allocate_with_retries", oom_retries=2, oom_retry_delay=0)
def allocate_with_retries(xp, a):
    return _double(a)


def test_out_of_memory_frees_the_pools_and_fails_the_task_clearly(monkeypatch):
    gpu = FakeGpu(failures=1)
    monkeypatch.setattr(device, "_current", gpu)
    result = allocate.apply(args=(np.ones(2),))
    assert isinstance(result.result, GpuOutOfMemory)
    assert "test.allocate ran out of GPU memory on cuda:0 (fake) (pools freed)" in str(result.result)
    assert gpu.frees == 1
    np.testing.assert_array_equal(allocate.apply(args=(np.ones(2),)).get(), [2, 2])


def test_out_of_memory_is_retried_when_asked(monkeypatch):
    gpu = FakeGpu(failures=2)
    monkeypatch.setattr(device, "_current", gpu)
    np.testing.assert_array_equal(allocate_with_retries.apply(args=(np.ones(2),)).get(), [2, 2])
    assert gpu.frees == 2


def test_other_errors_pass_through_untouched(monkeypatch):
    monkeypatch.setattr(device, "_current", FakeGpu(failures=0))
    result = allocate.apply(args=("not an array", "extra"))
    assert isinstance(result.result, TypeError)


def test_health(tmp_path, capsys):
    path = tmp_path / "gpufleet" / "heartbeat"
    env = {"GPUFLEET_HEARTBEAT_FILE": str(path), "GPUFLEET_HEARTBEAT_MAX_AGE": "30"}
    assert health.main(env) == 1
    assert "no heartbeat at" in capsys.readouterr().err
    assert not heartbeat.refresh(str(path)), "a refresh must never write the first beat"
    heartbeat.beat(str(path))
    assert health.main(env) == 0
    old = time.time() - 120
    os.utime(path, (old, old))
    assert health.main(env) == 1
    assert "is 120s old (limit 30s)" in capsys.readouterr().err
    assert heartbeat.refresh(str(path)) and health.main(env) == 0
    assert health.main({**env, "GPUFLEET_HEARTBEAT_MAX_AGE": "soon"}) == 2
