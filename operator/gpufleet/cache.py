"""What the watches have seen of our Deployments and worker pods, shared between kopf's handler threads (which
write it) and the tick's thread (which reads it): one lock, and readers get immutable copies, never a live dict."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import replace
from types import MappingProxyType
from typing import Any

from gpufleet.model import FLEET_LABEL, Deployment, Pod

Key = tuple[str, str]
_NO_PODS: Mapping[str, Pod] = MappingProxyType({})
GONE_SECONDS = 120.0  # how long a deleted pod is remembered: far longer than its entry stays live (3 x 5 s)


class Cache:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._deployments: dict[Key, Deployment] = {}  # (namespace, Deployment name) -> what it is
        self._pods: dict[Key, dict[str, Pod]] = {}  # (namespace, fleet) -> pod name -> Pod
        self._gone: dict[Key, dict[str, float]] = {}  # (namespace, fleet) -> pod name -> when it was deleted

    def deployment_event(self, event_type: str | None, obj: Mapping[str, Any]) -> None:
        meta = obj["metadata"]
        key = (meta["namespace"], meta["name"])
        with self._lock:
            if event_type == "DELETED":
                self._deployments.pop(key, None)
            else:
                self._deployments[key] = Deployment.from_object(obj)

    def pod_event(self, event_type: str | None, obj: Mapping[str, Any]) -> None:
        meta = obj["metadata"]
        fleet = (meta.get("labels") or {}).get(FLEET_LABEL)
        if not fleet:
            return
        with self._lock:
            pods = self._pods.setdefault((meta["namespace"], fleet), {})
            if event_type == "DELETED":
                pods.pop(meta["name"], None)
                # Only pods seen deleted count as gone: one missing from a cache still filling up is not.
                self._gone.setdefault((meta["namespace"], fleet), {})[meta["name"]] = time.monotonic()
            else:
                pods[meta["name"]] = Pod.from_object(obj)

    def pod_written(self, namespace: str, fleet: str, pod: str, **changes: object) -> None:
        """What we just wrote on a pod, known before its watch event arrives: the next tick does not write it
        again."""
        with self._lock:
            pods = self._pods.get((namespace, fleet), {})
            if pod in pods:
                pods[pod] = replace(pods[pod], **changes)

    def fleet(
        self, namespace: str, fleet: str, deployment: str
    ) -> tuple[Deployment | None, Mapping[str, Pod], frozenset[str]]:
        """A fleet's Deployment, pods and pods gone lately (as `deployment`, `pods` and `gone`) under one lock:
        the tick reads them for every fleet at every poll."""
        with self._lock:
            pods = self._pods.get((namespace, fleet))
            gone = self._gone.get((namespace, fleet))
            return (
                self._deployments.get((namespace, deployment)),
                MappingProxyType(dict(pods)) if pods else _NO_PODS,
                self._recent(gone) if gone else frozenset(),
            )

    def deployment(self, namespace: str, name: str) -> Deployment | None:
        with self._lock:
            return self._deployments.get((namespace, name))

    @staticmethod
    def _recent(gone: dict[str, float]) -> frozenset[str]:
        """The pods deleted within the last GONE_SECONDS."""
        horizon = time.monotonic() - GONE_SECONDS
        for name in [n for n, at in gone.items() if at < horizon]:
            del gone[name]
        return frozenset(gone)

    def forget(self, namespace: str, fleet: str) -> None:
        with self._lock:
            self._pods.pop((namespace, fleet), None)
            self._gone.pop((namespace, fleet), None)
