"""values.schema.json refuses what the chart cannot honour, with the path of the bad key in the message."""

from __future__ import annotations

import json
import re

import pytest
import yaml
from helm_chart import CHART

PREFIX = "values don't meet the specifications of the schema"


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        # Unknown keys, at the top and deeper down: a typo must not be silently ignored.
        (("replicaCount=2",), "at '': additional properties 'replicaCount' not allowed"),
        (("rbac.namespace=team-a",), "at '/rbac': additional properties 'namespace' not allowed"),
        (
            ("metrics.serviceMonitor.enable=true",),
            "at '/metrics/serviceMonitor': additional properties 'enable'",
        ),
        (("redis.auth.passwd=x",), "at '/redis/auth': additional properties 'passwd' not allowed"),
        # Wrong types.
        (("crds.install=yes",), "at '/crds/install': got string, want boolean"),
        (("livenessPort=http",), "at '/livenessPort': got string, want integer"),
        (("rbac.namespaces=team-a",), "at '/rbac/namespaces': got string, want array"),
        (("queues[0].name=a",), "at '/queues/0': missing property 'spec'"),
        # Values out of their domain.
        (("metrics.port=70000",), "at '/metrics/port': maximum: got 70,000, want 65,535"),
        (
            ("image.pullPolicy=Sometimes",),
            "at '/image/pullPolicy': value must be one of 'Always', 'IfNotPresent', 'Never'",
        ),
        (("rbac.namespaces={Team_A}",), "at '/rbac/namespaces/0': 'Team_A' does not match pattern"),
        (
            ("metrics.serviceMonitor.interval=often",),
            "at '/metrics/serviceMonitor/interval': 'often' does not match",
        ),
        (("resources.limits.memory=lots",), "at '/resources/limits/memory'"),
        (("highAvailability.replicas=1",), "at '/highAvailability/replicas': minimum: got 1, want 2"),
        (("highAvailability.leaseDurationSeconds=0",), "at '/highAvailability/leaseDurationSeconds'"),
    ],
)
def test_bad_values_are_refused_with_their_path(helm, sets, message):
    error = helm.refuse(sets=sets)
    assert PREFIX in error
    assert message in error, error


def test_every_object_of_the_schema_refuses_unknown_keys():
    """Every object with declared properties is closed; open maps say what their values are."""

    def walk(node, path):
        if node.get("type") == "object":
            if "properties" in node:
                assert node.get("additionalProperties") is False, f"{path} accepts unknown keys"
            for key, child in node.get("properties", {}).items():
                walk(child, f"{path}.{key}")
            if isinstance(node.get("additionalProperties"), dict):
                walk(node["additionalProperties"], f"{path}.*")
        if node.get("type") == "array":
            walk(node.get("items", {}), f"{path}[]")
        assert "description" in node or path.endswith(("[]", ".*")), f"{path} has no description"

    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["additionalProperties"] is False
    for key, child in schema["properties"].items():
        walk(child, key)


def test_every_schema_key_is_in_values_yaml():
    """The defaults show every key the schema allows (global aside: Helm adds it for subcharts)."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def missing(schema, node, path):
        for key, child in schema.get("properties", {}).items():
            if key not in node:
                yield f"{path}{key}"
            elif isinstance(node[key], dict):
                yield from missing(child, node[key], f"{path}{key}.")

    schema = json.loads((CHART / "values.schema.json").read_text())
    assert list(missing(schema, values, "")) == ["global"]


KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z][\w.]*):(?P<rest>.*)$")


def test_every_value_is_documented_with_a_helm_docs_comment():
    """Each leaf of values.yaml, or a map above it, has a `# --` comment (helm-docs renders them)."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    stack: list[tuple[int, str, bool]] = []  # (indent, key, documented) of the maps around the line
    undocumented = []
    for i, line in enumerate(lines):
        match = KEY.match(line)
        if not match:
            continue
        indent = len(match["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        comment = []
        j = i - 1
        while j >= 0 and lines[j].strip().startswith("#"):
            comment.insert(0, lines[j].strip())
            j -= 1
        documented = bool(comment) and comment[0].startswith("# --")
        path = ".".join([k for _, k, _ in stack] + [match["key"]])
        leaf = match["rest"].strip() != ""
        if leaf and not documented and not any(d for _, _, d in stack):
            undocumented.append(path)
        stack.append((indent, match["key"], documented))
    assert undocumented == []
