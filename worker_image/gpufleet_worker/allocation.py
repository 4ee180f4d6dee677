"""Which GPUs this container was given, and which one each worker process uses: pure functions of the
environment (and of the device nodes present), read before CUDA starts.

Who says what was given:
  - NVIDIA_VISIBLE_DEVICES: the NVIDIA device plugin and NVIDIA's DRA driver (through CDI or its runtime hook),
    a list of indexes, GPU-/MIG- UUIDs, or `all`, `none`, `void`;
  - CDI device injection alone: only the allocated /dev/nvidia<N> nodes exist in the container;
  - the DRA example driver (mock GPUs, no CUDA): one GPU_DEVICE_<id>=gpu-<n> variable per device, beside
    GPU_DEVICE_<id>_<SETTING> ones.
CUDA numbers the devices it can see 0..n-1 in the order given. Process i of a pod uses ordinal i mod n: one
CUDA context per process, spread over the pod's devices.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

NOT_A_LIST = {"", "all", "none", "void"}
_UUID = re.compile(r"^(GPU|MIG)-[0-9A-Za-z-]+(/\d+/\d+)?$")
_DEVICE_NODE = re.compile(r"^nvidia(\d+)$")
_EXAMPLE_DRIVER = re.compile(r"^GPU_DEVICE_([A-Z0-9_]+)$")


@dataclass(frozen=True)
class Allocation:
    """The devices a container was given, as its runtime or driver named them, and who named them."""

    devices: tuple[str, ...]
    source: str

    @property
    def by_uuid(self) -> bool:
        """Named by UUID: CUDA_VISIBLE_DEVICES can then name exactly these, whatever the container sees."""
        return bool(self.devices) and all(_UUID.match(d) for d in self.devices)


def allocated(env: Mapping[str, str], device_nodes: Iterable[str] = ()) -> Allocation | None:
    """The devices given to this container, from the first source that names them; None when none does (a
    node without a GPU runtime, a CPU fleet, or `NVIDIA_VISIBLE_DEVICES=all`: every GPU CUDA sees is ours)."""
    nvidia = env.get("NVIDIA_VISIBLE_DEVICES", "").strip()
    if nvidia.lower() not in NOT_A_LIST:
        return Allocation(tuple(d.strip() for d in nvidia.split(",") if d.strip()), "NVIDIA_VISIBLE_DEVICES")
    nodes = sorted(int(m.group(1)) for n in device_nodes if (m := _DEVICE_NODE.match(n)))
    if nodes:
        return Allocation(tuple(f"/dev/nvidia{i}" for i in nodes), "device nodes (CDI)")
    example = sorted(
        (key, value) for key, value in env.items() if _EXAMPLE_DRIVER.match(key) and value.startswith("gpu-")
    )
    if example:
        return Allocation(tuple(value for _, value in example), "GPU_DEVICE_* (DRA example driver)")
    return None


def cuda_visible_devices(env: Mapping[str, str], allocation: Allocation | None) -> str | None:
    """The CUDA_VISIBLE_DEVICES to set before CUDA starts, or None to leave it as it is. Only UUIDs are pinned:
    indexes are the host's, and a runtime that hides the other GPUs renumbers the given ones from 0. Pinning by
    UUID keeps a process to its pod's GPUs even where the runtime shows it more (privileged pods, a runtime
    without device isolation), and is a no-op where it does not. A value the user set wins."""
    if "CUDA_VISIBLE_DEVICES" in env or allocation is None or not allocation.by_uuid:
        return None
    return ",".join(allocation.devices)


def placement(process_index: int, cuda_count: int, allocation: Allocation | None) -> tuple[int, str | None]:
    """(the CUDA ordinal process `process_index` uses, the name that device was given by, if known)."""
    if cuda_count <= 0:
        raise ValueError("no CUDA device to place a process on")
    ordinal = process_index % cuda_count
    given = allocation.devices if allocation else ()
    # CUDA sees the given devices in their order when it sees as many; otherwise it sees what the runtime shows.
    return ordinal, given[ordinal] if len(given) == cuda_count else None
