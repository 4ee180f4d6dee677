"""A container's command line and environment, resolved from its pod the way the kubelet does it.

Pure: Secrets and ConfigMaps come through `lookup`, so the rules are tested without a cluster.
The kubelet's rules (pkg/kubelet/kubelet_pods.go, third_party/forked/golang/expansion):
- `envFrom` first, in order, each key optionally prefixed; then `env`, in order, a later entry overriding;
- a plain `value` expands `$(NAME)` from the variables defined before it; `$$` is a literal `$`; a reference to
  an undefined variable is left as written; values from `valueFrom` are never expanded;
- command and args expand `$(NAME)` from the container's whole environment.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

# ("Secret" | "ConfigMap", name) -> its data as text, or None when it does not exist.
Lookup = Callable[[str, str], Mapping[str, str] | None]

_REFERENCE = re.compile(r"\$\$|\$\(([^)]*)\)")
_LABEL_FIELD = re.compile(r"^metadata\.(labels|annotations)\['(.*)'\]$")


class Unresolvable(Exception):
    """The container cannot start yet (the kubelet's CreateContainerConfigError): a missing Secret or key."""


def expand(text: str, env: Mapping[str, str]) -> str:
    def one(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return _REFERENCE.sub(one, text)


def field(pod: Mapping[str, Any], path: str) -> str:
    """The downward API's `fieldRef.fieldPath` values."""
    meta, spec, status = pod.get("metadata", {}), pod.get("spec", {}), pod.get("status") or {}
    simple = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName"),
        "status.hostIP": status.get("hostIP"),
        "status.podIP": status.get("podIP"),
    }
    if path in simple:
        return simple[path] or ""
    if match := _LABEL_FIELD.match(path):
        return (meta.get(match.group(1)) or {}).get(match.group(2), "")
    raise Unresolvable(f"fieldRef {path!r} is not supported by the process-pod runner")


def _key(lookup: Lookup, kind: str, ref: Mapping[str, Any]) -> str | None:
    data = lookup(kind, ref["name"])
    value = None if data is None else data.get(ref["key"])
    if value is None and not ref.get("optional", False):
        missing = (
            f"{kind} {ref['name']!r}" if data is None else f"key {ref['key']!r} in {kind} {ref['name']!r}"
        )
        raise Unresolvable(f"{missing} not found")
    return value


def environment(pod: Mapping[str, Any], container: Mapping[str, Any], lookup: Lookup) -> dict[str, str]:
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        kind, ref = (
            ("ConfigMap", source["configMapRef"])
            if "configMapRef" in source
            else ("Secret", source["secretRef"])
        )
        data = lookup(kind, ref["name"])
        if data is None:
            if ref.get("optional", False):
                continue
            raise Unresolvable(f"{kind} {ref['name']!r} not found")
        prefix = source.get("prefix", "")
        # The kubelet skips keys that cannot be variable names (and records an Event).
        env |= {prefix + k: v for k, v in data.items() if "=" not in prefix + k}
    for var in container.get("env") or []:
        source = var.get("valueFrom")
        if source is None:
            value: str | None = expand(var.get("value", ""), env)
        elif "fieldRef" in source:
            value = field(pod, source["fieldRef"]["fieldPath"])
        elif "secretKeyRef" in source:
            value = _key(lookup, "Secret", source["secretKeyRef"])
        elif "configMapKeyRef" in source:
            value = _key(lookup, "ConfigMap", source["configMapKeyRef"])
        else:
            raise Unresolvable(
                f"env {var['name']}: {sorted(source)} is not supported by the process-pod runner"
            )
        if value is not None:
            env[var["name"]] = value
    return env


def command_line(container: Mapping[str, Any], env: Mapping[str, str]) -> list[str]:
    """The argv the container runs. The image is not run, so its ENTRYPOINT is unknown; with no `command`, the
    `args` are run as they are, which is what gpufleet's images do (ENTRYPOINT tini, which runs its arguments)."""
    argv = [*(container.get("command") or []), *(container.get("args") or [])]
    if not argv:
        raise Unresolvable(f"container {container.get('name')!r} has neither command nor args to run")
    return [expand(arg, env) for arg in argv]
