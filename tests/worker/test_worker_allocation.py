"""Which GPUs a worker pod was given (device plugin, DRA driver, CDI, the DRA example driver) and which one each
worker process uses: the pure mapping, without CUDA."""

from __future__ import annotations

import importlib.util
import os

import pytest

from gpufleet_worker import device
from gpufleet_worker.allocation import Allocation, allocated, cuda_visible_devices, placement
from gpufleet_worker.settings import from_env

A = "GPU-6f1c2a3b-0c9d-4e57-8a1b-2c3d4e5f6a7b"
B = "GPU-0a1b2c3d-4e5f-6a7b-8c9d-0e1f2a3b4c5d"
MIG = "MIG-5f2d8c1a-9b3e-5d7f-a1c2-3b4d5e6f7a8b"
MIG_OLD = "MIG-GPU-6f1c2a3b-0c9d-4e57-8a1b-2c3d4e5f6a7b/1/0"


@pytest.mark.parametrize(
    "env, nodes, devices, source",
    [
        # The device plugin, or NVIDIA's DRA driver through its runtime hook: UUIDs (or indexes).
        ({"NVIDIA_VISIBLE_DEVICES": f"{A},{B}"}, [], (A, B), "NVIDIA_VISIBLE_DEVICES"),
        ({"NVIDIA_VISIBLE_DEVICES": " 2, 3 "}, [], ("2", "3"), "NVIDIA_VISIBLE_DEVICES"),
        ({"NVIDIA_VISIBLE_DEVICES": MIG}, [], (MIG,), "NVIDIA_VISIBLE_DEVICES"),
        # CDI injects the device nodes and says `void` to the legacy hook: the nodes tell, in number order.
        ({"NVIDIA_VISIBLE_DEVICES": "void"}, ["nvidia3", "nvidiactl", "nvidia-uvm", "nvidia1", "null"],
         ("/dev/nvidia1", "/dev/nvidia3"), "device nodes (CDI)"),
        ({}, ["nvidia0", "nvidiactl"], ("/dev/nvidia0",), "device nodes (CDI)"),
        # The DRA example driver: one variable per device, beside its settings.
        ({"GPU_DEVICE_1": "gpu-1", "GPU_DEVICE_0": "gpu-0", "GPU_DEVICE_0_SHARING_STRATEGY": "TimeSlicing",
          "GPU_DEVICE_0_TIMESLICE_INTERVAL": "Default", "DRA_RESOURCE_DRIVER_NAME": "gpu.example.com"}, [],
         ("gpu-0", "gpu-1"), "GPU_DEVICE_* (DRA example driver)"),
        ({"GPU_DEVICE_0_PARTITION_1": "gpu-0-partition-1"}, [], ("gpu-0-partition-1",),
         "GPU_DEVICE_* (DRA example driver)"),
    ],
)  # fmt: skip
def test_the_given_devices_are_read_from_whoever_gave_them(env, nodes, devices, source):
    assert allocated(env, nodes) == Allocation(devices, source)


@pytest.mark.parametrize(
    "env", [{}, {"NVIDIA_VISIBLE_DEVICES": "all"}, {"NVIDIA_VISIBLE_DEVICES": "none"}, {"PATH": "/usr/bin"}]
)
def test_nothing_given_means_whatever_cuda_sees(env):
    assert allocated(env, ["null", "nvidiactl", "nvidia-uvm"]) is None


def test_the_device_plugin_list_wins_over_device_nodes():
    assert allocated({"NVIDIA_VISIBLE_DEVICES": A}, ["nvidia0", "nvidia1"]).devices == (A,)


@pytest.mark.parametrize(
    "env, expected",
    [
        ({"NVIDIA_VISIBLE_DEVICES": f"{A},{B}"}, f"{A},{B}"),  # pinned by UUID, in the given order
        ({"NVIDIA_VISIBLE_DEVICES": f"{MIG_OLD}"}, MIG_OLD),
        ({"NVIDIA_VISIBLE_DEVICES": "2,3"}, None),  # host indexes: the container renumbers them from 0
        ({"NVIDIA_VISIBLE_DEVICES": f"{A},2"}, None),
        ({"NVIDIA_VISIBLE_DEVICES": A, "CUDA_VISIBLE_DEVICES": "0"}, None),  # the user's own choice wins
        ({"GPU_DEVICE_0": "gpu-0"}, None),  # mock devices: nothing for CUDA
        ({}, None),
    ],
)
def test_cuda_is_pinned_to_the_given_gpus_only_by_uuid(env, expected):
    assert cuda_visible_devices(env, allocated(env, [])) == expected


@pytest.mark.parametrize(
    "process, count, given, expected",
    [
        # One CUDA context per process, spread over the pod's devices.
        (0, 2, (A, B), (0, A)),
        (1, 2, (A, B), (1, B)),
        (2, 2, (A, B), (0, A)),
        (3, 2, (A, B), (1, B)),
        (5, 1, (MIG,), (0, MIG)),
        # CUDA sees another number than was named (a runtime that shows more, or fewer): ordinals only.
        (1, 4, (A, B), (1, None)),
        (0, 1, None, (0, None)),
        (3, 2, None, (1, None)),
    ],
)
def test_each_process_is_placed_on_one_device(process, count, given, expected):
    alloc = Allocation(given, "NVIDIA_VISIBLE_DEVICES") if given else None
    assert placement(process, count, alloc) == expected


def test_no_device_no_placement():
    with pytest.raises(ValueError):
        placement(0, 0, None)


@pytest.mark.skipif(importlib.util.find_spec("cupy") is not None, reason="CuPy is installed here")
def test_the_device_layer_pins_cuda_to_the_given_gpus_before_cuda_starts(monkeypatch):
    # Without CuPy the layer falls back to NumPy; the pin must already be in place by then, for CUDA reads it once.
    monkeypatch.setattr(device, "_current", None)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # recorded, so that what the layer sets is undone after
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    monkeypatch.setenv("NVIDIA_VISIBLE_DEVICES", f"{A},{B}")
    assert device.init(from_env({"GPUFLEET_GPUS": "2"})).name == "cpu"
    assert os.environ["CUDA_VISIBLE_DEVICES"] == f"{A},{B}"
