"""The CRD file: structural, documented, bounded, with the printer columns users look at."""

from __future__ import annotations

from gpufleet.crd import load_crd, schema


def _walk(node, path="spec"):
    yield path, node
    for name, sub in node.get("properties", {}).items():
        yield from _walk(sub, f"{path}.{name}")
    if "items" in node:
        yield from _walk(node["items"], f"{path}[]")


def test_every_spec_field_is_described_and_constrained():
    loose = []
    for path, node in _walk(schema()["properties"]["spec"]):
        if "description" not in node and not path.endswith("[]"):
            loose.append(f"{path}: no description")
        typ = node.get("type")
        constrained = any(
            k in node
            for k in (
                "default",
                "enum",
                "minimum",
                "maximum",
                "maxLength",
                "maxItems",
                "maxProperties",
                "pattern",
            )
        )
        if typ in ("string", "integer", "number", "array") and not constrained:
            loose.append(f"{path}: no default, bound or enum")
    assert not loose, "\n".join(loose)


def test_structural_basics():
    crd = load_crd()
    assert crd["spec"]["group"] == "gpufleet.dev"
    assert crd["spec"]["names"]["shortNames"] == ["gtq"]
    (version,) = crd["spec"]["versions"]
    assert version["name"] == "v1alpha1" and version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"] if not c.get("priority")]
    assert columns == ["Queued", "Running", "Workers", "Replicas", "Desired", "GPUs", "Ready", "Age"]
    status = schema()["properties"]["status"]["properties"]
    for field in (
        "queued",
        "reserved",
        "replicas",
        "desiredReplicas",
        "lastScaleTime",
        "reason",
        "observedGeneration",
        "conditions",
        "workers",
        "failingPods",
    ):
        assert field in status


def test_cel_rules_cover_cross_field_constraints():
    spec = schema()["properties"]["spec"]["properties"]
    rules = [r["rule"] for r in spec["scaling"]["x-kubernetes-validations"]]
    assert any("self.minReplicas <= self.maxReplicas" in r for r in rules)
    broker_rules = " ".join(r["rule"] for r in spec["broker"]["x-kubernetes-validations"])
    assert "urlSecretRef" in broker_rules
    worker_rules = " ".join(r["rule"] for r in spec["worker"]["x-kubernetes-validations"])
    assert "visibilityTimeoutSeconds > self.taskTimeLimitSeconds" in worker_rules
