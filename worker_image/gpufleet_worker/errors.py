"""Errors a task or a producer can see. Importable on both sides, so results rebuild them by name."""


class PayloadError(ValueError):
    """A message or result that the array codec cannot (or must not) encode or decode."""


class DeviceError(RuntimeError):
    """The worker's compute device cannot be used as configured."""


class GpuOutOfMemory(MemoryError):
    """A task asked for more GPU memory than the worker's device (or its pool limit) had free."""


class SettingsError(ValueError):
    """A GPUFLEET_* environment variable holds a value the worker cannot use."""
