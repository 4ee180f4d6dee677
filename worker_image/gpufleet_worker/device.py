"""The compute device of one worker process: CuPy on a CUDA device when there is one, NumPy otherwise.

`init()` runs in `worker_process_init` (in the pool's child, or in the main process for the solo pool), so
no CUDA context exists before a fork. Prefork process i of a pod with n GPUs uses device i mod n, among the
devices the pod was given (allocation.py: a device plugin's, a DRA driver's, CDI's).
"""

from __future__ import annotations

import ctypes
import importlib.util
import logging
import math
import os
import subprocess
import sys
from dataclasses import dataclass, field
from types import ModuleType

import numpy as np

from . import allocation, codec
from .errors import DeviceError
from .settings import Settings, from_env

logger = logging.getLogger(__name__)

# Arrays from this size up are decoded into pinned host memory: their copy to the GPU then runs at full DMA
# speed without a staging copy. Smaller ones are not worth a pinned allocation.
PINNED_MIN_BYTES = 1 << 20

_OOM_MARKERS = ("out of memory", "ALLOC_FAILED", "cudaErrorMemoryAllocation")

NO_CUPY = "CuPy is not installed (No module named 'cupy'): GPU fleets need the worker image's cuda variant"
NO_DRIVER = (
    "no NVIDIA driver: libcuda.so.1 cannot be loaded. A container gets it from its node: the NVIDIA device "
    "plugin mounts it into pods that request a GPU (docker: --gpus, with the NVIDIA container toolkit)"
)


@dataclass
class Device:
    xp: ModuleType
    name: str
    _cupy: ModuleType | None = field(default=None, repr=False)

    @property
    def is_gpu(self) -> bool:
        return self._cupy is not None

    def to_device(self, obj):
        """Host arrays, also inside lists, tuples and dicts, become arrays of this device."""
        if isinstance(obj, np.ndarray):
            if not self.is_gpu:
                return obj
            if not obj.dtype.isnative:
                obj = obj.astype(obj.dtype.newbyteorder("="))  # CuPy has no byte-swapped dtypes
            return self._cupy.asarray(obj)
        if isinstance(obj, (list, tuple)):
            return type(obj)(self.to_device(item) for item in obj)
        if isinstance(obj, dict):
            return {key: self.to_device(value) for key, value in obj.items()}
        return obj

    def to_host(self, obj):
        """Device arrays and scalars, also inside lists, tuples and dicts, become NumPy ones."""
        if self.is_gpu and isinstance(obj, self._cupy.ndarray):
            obj = self._cupy.ascontiguousarray(obj)
            out = _host_empty(obj.shape, obj.dtype)
            obj.get(out=out)
            return out
        if isinstance(obj, (list, tuple)):
            return type(obj)(self.to_host(item) for item in obj)
        if isinstance(obj, dict):
            return {key: self.to_host(value) for key, value in obj.items()}
        return obj

    def free_memory(self) -> None:
        if self.is_gpu:
            self._cupy.get_default_memory_pool().free_all_blocks()
            self._cupy.get_default_pinned_memory_pool().free_all_blocks()

    def is_out_of_memory(self, exc: BaseException) -> bool:
        """A failed GPU allocation (host MemoryErrors are left to surface as they are)."""
        if not self.is_gpu:
            return False
        if isinstance(exc, MemoryError):  # cupy.cuda.memory.OutOfMemoryError among them
            return True
        # cuBLAS, cuFFT and the runtime report failed allocations with their own error types.
        return type(exc).__module__.startswith(("cupy", "cupy_backends")) and any(
            marker in str(exc) for marker in _OOM_MARKERS
        )


_current: Device | None = None


def _host_empty(shape, dtype) -> np.ndarray:
    nbytes = math.prod(shape) * np.dtype(dtype).itemsize
    if nbytes < PINNED_MIN_BYTES:
        return np.empty(shape, dtype)
    import cupyx

    return cupyx.empty_pinned(shape, dtype)


def _memory_limit(raw: str) -> dict:
    value = float(raw)
    return {"fraction": value} if value <= 1 else {"size": int(value)}


def _numpy(reason: str) -> Device:
    logger.info("gpufleet device: NumPy on the CPU (%s)", reason)
    return Device(xp=np, name="cpu")


def _driver_missing() -> str | None:
    """NO_DRIVER when the driver library cannot be loaded. CUDA reports a missing driver as an old one
    (cudaErrorInsufficientDriver), which sends people upgrading a driver that is not there. Only called where
    CUDA is initialised anyway, or the worker is about to stop: loading libcuda is no business of a parent
    that forks."""
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return NO_DRIVER
    return None


def _device_nodes() -> list[str]:
    try:
        return os.listdir("/dev")
    except OSError:
        return []


def _cupy_device(settings: Settings, process_index: int) -> Device:
    given = allocation.allocated(os.environ, _device_nodes())
    pinned = allocation.cuda_visible_devices(os.environ, given)
    if pinned is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = pinned  # read once, when CUDA starts in this process: not yet
    try:
        import cupy
    except ImportError as exc:
        raise DeviceError(f"CuPy is not installed ({exc})") from None
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        raise DeviceError(_driver_missing() or f"no CUDA device is usable: {exc}") from None
    if count == 0:
        raise DeviceError("no CUDA device is visible")
    index, device_name = allocation.placement(process_index, count, given)
    cupy.cuda.Device(index).use()
    if settings.gpu_memory_limit:
        cupy.get_default_memory_pool().set_limit(**_memory_limit(settings.gpu_memory_limit))
    props = cupy.cuda.runtime.getDeviceProperties(index)
    product = props["name"].decode(errors="replace")
    name = f"cuda:{index} ({product}, {device_name})" if device_name else f"cuda:{index} ({product})"
    codec.set_host_allocator(_host_empty)
    logger.info(
        "gpufleet device: %s, CuPy %s, memory limit %s; given: %s",
        name, cupy.__version__, settings.gpu_memory_limit,
        f"{', '.join(given.devices)} ({given.source})" if given else "every GPU CUDA sees",
    )  # fmt: skip
    return Device(xp=cupy, name=name, _cupy=cupy)


def init(settings: Settings, process_index: int = 0) -> Device:
    """Pick and set up this process's device; raise DeviceError if a GPU is required and unusable."""
    global _current
    if settings.gpus == 0 and not settings.require_gpu:
        _current = _numpy("GPUFLEET_GPUS=0")
        return _current
    try:
        _current = _cupy_device(settings, process_index)
    except DeviceError as exc:
        if settings.require_gpu:
            raise DeviceError(f"GPUFLEET_REQUIRE_GPU=1 but {exc}") from None
        _current = _numpy(str(exc))
    return _current


def current() -> Device:
    """This process's device; set up from the environment on first use outside a worker (eager calls)."""
    if _current is None:
        return init(from_env(os.environ))
    return _current


def probe_gpu_count(timeout: float = 120.0) -> tuple[int, str]:
    """Count CUDA devices in a throw-away interpreter, so that the caller's process stays without CUDA."""
    if importlib.util.find_spec("cupy") is None:
        return 0, NO_CUPY
    code = "import cupy; print(cupy.cuda.runtime.getDeviceCount())"
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return 0, f"the CUDA probe did not finish within {timeout:.0f}s"
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return 0, _driver_missing() or f"the CUDA probe failed: {last}"
    count = int(done.stdout.strip() or 0)
    return count, f"{count} CUDA device(s) visible"
