"""manifests/ is the chart rendered by hack/render-manifests.sh, never edited by hand, never stale."""

from __future__ import annotations

import os
import subprocess

import pytest
import yaml
from helm_chart import CHART

ROOT = CHART.parents[1]
MANIFESTS = ROOT / "manifests"
NAMESPACE = "gpufleet-system"


@pytest.fixture(scope="module")
def fresh(helm, tmp_path_factory):
    out = tmp_path_factory.mktemp("manifests")
    subprocess.run(
        [str(ROOT / "hack" / "render-manifests.sh"), str(out)],
        check=True,
        env={**os.environ, "HELM": str(helm.binary)},
        capture_output=True,
    )
    return out


def test_manifests_are_not_stale(fresh):
    committed = sorted(p.name for p in MANIFESTS.iterdir())
    assert committed == sorted(p.name for p in fresh.iterdir())
    for name in committed:
        assert (MANIFESTS / name).read_text() == (fresh / name).read_text(), (
            f"manifests/{name} is stale: run hack/render-manifests.sh and commit the result"
        )


def test_manifests_hold_the_namespace_first_and_everything_of_the_chart_but_its_test():
    objects = [o for o in yaml.safe_load_all((MANIFESTS / "gpufleet.yaml").read_text()) if o]
    assert objects[0] == {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": NAMESPACE,
            "labels": {
                "app.kubernetes.io/part-of": "gpufleet",
                "pod-security.kubernetes.io/enforce": "restricted",
            },
        },
    }
    kinds = sorted(o["kind"] for o in objects)
    assert kinds == sorted(
        ["Namespace", "ServiceAccount", "ConfigMap", "CustomResourceDefinition", "Service", "Deployment"]
        + ["ClusterRole", "ClusterRoleBinding"] * 2
    )
    for obj in objects[1:]:
        if obj["kind"] not in ("CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"):
            assert obj["metadata"]["namespace"] == NAMESPACE
        assert "helm.sh/hook" not in obj["metadata"].get("annotations", {})
    crd = next(o for o in objects if o["kind"] == "CustomResourceDefinition")
    assert crd == yaml.safe_load((CHART / "files" / "gputaskqueues.crd.yaml").read_text())


def test_kustomization_lists_every_manifest_and_is_invisible_to_apply_f():
    kustomization = yaml.safe_load((MANIFESTS / "Kustomization").read_text())
    assert kustomization["kind"] == "Kustomization"
    yamls = sorted(p.name for p in MANIFESTS.iterdir() if p.suffix in (".yaml", ".yml", ".json"))
    assert sorted(kustomization["resources"]) == yamls
