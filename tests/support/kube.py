"""kubectl against a test cluster, with JSON reads; and whether a CRD is established."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any


def run(binary: str, *args: object, env: dict[str, str], stdin: str | None = None, check: bool = True,
        timeout: float = 120) -> subprocess.CompletedProcess:  # fmt: skip
    """Run a cluster tool (kubectl, helm) with a test cluster's environment, `stdin` fed to it; with `check`, a
    non-zero exit fails the test with the tool's stderr."""
    argv = [binary, *map(str, args)]
    out = subprocess.run(argv, env=env, input=stdin, capture_output=True, text=True, timeout=timeout)
    if check and out.returncode != 0:
        shown = " ".join([Path(binary).name, *argv[1:]])
        raise AssertionError(f"{shown} exited {out.returncode}:\n{out.stderr}")
    return out


class Kubectl:
    """A kubectl binary with the environment (KUBECONFIG, PATH) of one test cluster, in one namespace or none."""

    def __init__(self, binary: str, env: dict[str, str], namespace: str | None = None) -> None:
        self.binary, self.env, self.namespace = binary, env, namespace

    def run(
        self, *args: str, stdin: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess:
        ns = ["--namespace", self.namespace] if self.namespace else []
        return run(self.binary, *ns, *args, env=self.env, stdin=stdin, check=check, timeout=timeout)

    def apply(self, manifest: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.run("apply", "-f", "-", stdin=manifest, check=check)

    def get(self, kind: str, name: str | None = None) -> Any:
        out = self.run("get", kind, *([name] if name else []), "-o", "json", check=False)
        return json.loads(out.stdout) if out.returncode == 0 else None

    def replicas(self, deployment: str) -> int | None:
        dep = self.get("deployment", deployment)
        return None if dep is None else dep["spec"]["replicas"]

    def status(self, gtq: str) -> dict:
        obj = self.get("gtq", gtq)
        return (obj or {}).get("status") or {}

    def condition(self, gtq: str, type_: str) -> dict:
        return next((c for c in self.status(gtq).get("conditions", []) if c["type"] == type_), {})

    def events(self, name: str) -> list[dict]:
        items = (self.get("events") or {}).get("items", [])
        return [e for e in items if e["involvedObject"].get("name") == name]

    def pods(self, selector: str) -> list[dict]:
        return json.loads(self.run("get", "pods", "-l", selector, "-o", "json").stdout)["items"]


def crd_established(kubectl: Kubectl, name: str = "gputaskqueues.gpufleet.dev") -> bool:
    """Whether the API server serves the CRD. Not `kubectl wait --for=condition=Established`: it fails outright,
    instead of waiting, while a new CRD has no conditions yet (`conditions: null` before the first one)."""
    crd = kubectl.get("crd", name) or {}
    conditions = (crd.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)
