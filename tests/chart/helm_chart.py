"""The chart as the tests see it: helm from hack/build-k8s.sh, and `helm template` parsed into objects."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "gpufleet"
VALUES = Path(__file__).resolve().parent / "values"
RELEASE, NAMESPACE = "rel", "fleet-system"
# helm built without its version ldflags assumes Kubernetes 1.20, older than the chart's kubeVersion.
KUBE_VERSION = "1.35.4"
QUEUE_API = "gpufleet.dev/v1alpha1/GpuTaskQueue"


@dataclass
class Rendered:
    objects: list[dict[str, Any]]

    def kinds(self) -> list[str]:
        return sorted(o["kind"] for o in self.objects)

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def one(self, kind: str, name: str | None = None, namespace: str | None = None) -> dict[str, Any]:
        found = [
            o
            for o in self.all(kind)
            if (name is None or o["metadata"]["name"] == name)
            and (namespace is None or o["metadata"].get("namespace") == namespace)
        ]
        assert len(found) == 1, (
            f"expected one {kind} {name or ''}, found {[o['metadata']['name'] for o in found]}"
        )
        return found[0]


class Helm:
    def __init__(self, binary: Path):
        self.binary = binary

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run([str(self.binary), *args], capture_output=True, text=True, timeout=120)
        if check and done.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed:\n{done.stderr}")
        return done

    def template_args(
        self,
        *values: str,
        sets: tuple[str, ...] = (),
        api_versions: tuple[str, ...] = (),
        chart: Path = CHART,
    ) -> list[str]:
        args = ["template", RELEASE, str(chart), "--namespace", NAMESPACE, "--kube-version", KUBE_VERSION]
        for name in values:
            args += ["-f", str(VALUES / name)]
        for item in sets:
            args += ["--set", item]
        for api in api_versions:
            args += ["--api-versions", api]
        return args

    def render(
        self,
        *values: str,
        sets: tuple[str, ...] = (),
        api_versions: tuple[str, ...] = (),
        chart: Path = CHART,
    ) -> Rendered:
        """`helm template` with values files from tests/chart/values, parsed (the helm test hook included)."""
        out = self.run(*self.template_args(*values, sets=sets, api_versions=api_versions, chart=chart)).stdout
        return Rendered([o for o in yaml.safe_load_all(out) if o])

    def refuse(self, *values: str, sets: tuple[str, ...] = (), api_versions: tuple[str, ...] = ()) -> str:
        """`helm template` that must fail; returns its error output."""
        done = self.run(*self.template_args(*values, sets=sets, api_versions=api_versions), check=False)
        assert done.returncode != 0, f"helm accepted values {values} {sets}"
        return done.stderr
