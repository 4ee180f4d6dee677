"""The GpuTaskQueue CRD: where its one source file is, and the defaults its schema declares."""

from __future__ import annotations

import copy
import functools
import os
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

GROUP = "gpufleet.dev"
VERSION = "v1alpha1"
KIND = "GpuTaskQueue"
PLURAL = "gputaskqueues"
CRD_FILE = "gputaskqueues.crd.yaml"


def crd_path() -> Path:
    """The CRD file: $GPUFLEET_CRD, the copy packed into the wheel, or the chart's file in a source checkout."""
    if env := os.environ.get("GPUFLEET_CRD"):
        return Path(env)
    packed = resources.files("gpufleet") / "crd" / CRD_FILE
    if packed.is_file():
        return Path(str(packed))
    return Path(__file__).resolve().parents[2] / "charts" / "gpufleet" / "files" / CRD_FILE


@functools.cache
def load_crd() -> dict[str, Any]:
    with open(crd_path(), encoding="utf-8") as f:
        return yaml.safe_load(f)


def schema() -> dict[str, Any]:
    """The openAPIV3Schema of the served version."""
    (version,) = [v for v in load_crd()["spec"]["versions"] if v["name"] == VERSION]
    return version["schema"]["openAPIV3Schema"]


def apply_defaults(node: Mapping[str, Any], value: Any) -> Any:
    """Fill in the schema's defaults as the API server does, so an object read from anywhere looks the same.

    The API server defaults every object it serves; the operator does it again so that a spec written before a
    field existed, or built by hand in a test, is read with the same defaults from the same single source.
    """
    if not isinstance(value, dict):
        return value
    out = copy.deepcopy(value)
    for name, sub in node.get("properties", {}).items():
        if name not in out and "default" in sub:
            out[name] = copy.deepcopy(sub["default"])
        if name in out:
            if sub.get("type") == "object":
                out[name] = apply_defaults(sub, out[name])
            elif sub.get("type") == "array" and isinstance(out[name], list) and "items" in sub:
                out[name] = [apply_defaults(sub["items"], item) for item in out[name]]
    return out


def defaulted_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    return apply_defaults(schema()["properties"]["spec"], dict(spec))
