"""The typed spec: defaults come from the CRD file, and what the schema cannot refuse is refused here."""

from __future__ import annotations

import pytest

from gpufleet.crd import schema
from gpufleet.spec import SpecError, parse_spec

MINIMAL = {
    "broker": {"url": "redis://redis:6379/0"},
    "queues": ["gpu"],
    "worker": {"image": "example/worker:1"},
}


def with_(path: str, value):
    spec = {k: dict(v) if isinstance(v, dict) else list(v) for k, v in MINIMAL.items()}
    *parents, leaf = path.split(".")
    node = spec
    for p in parents:
        node = node.setdefault(p, {})
    node[leaf] = value
    return spec


def test_minimal_spec_gets_the_crd_defaults():
    s = parse_spec(MINIMAL)
    defaults = schema()["properties"]["spec"]["properties"]["scaling"]["properties"]
    assert s.scaling.max_replicas == defaults["maxReplicas"]["default"]
    assert s.scaling.scale_down_stabilization_seconds == defaults["scaleDownStabilizationSeconds"]["default"]
    # No step limit unless one is set: the scaling rule bounds its own steps.
    assert "default" not in defaults["maxStepUp"] and "default" not in defaults["maxStepDown"]
    assert (s.scaling.max_step_up, s.scaling.max_step_down) == (None, None)
    assert s.broker.priority_steps == (0, 3, 6, 9)
    assert s.broker.separator == "\x06\x16"
    assert s.worker.gpu_resource == "nvidia.com/gpu"
    assert s.worker.celery_app == "gpufleet_worker.app:app"
    assert s.worker.visibility_timeout_seconds > s.worker.task_time_limit_seconds


def test_explicit_values_win_over_defaults():
    s = parse_spec(with_("scaling", {"minReplicas": 2, "maxReplicas": 4, "paused": True, "maxStepUp": 3}))
    assert (s.scaling.min_replicas, s.scaling.max_replicas, s.scaling.paused) == (2, 4, True)
    assert s.scaling.max_step_up == 3
    assert s.scaling.target_tasks_per_replica == 1


@pytest.mark.parametrize(
    ("spec", "path", "words"),
    [
        (with_("broker", {"url": "redis://:hunter2@redis:6379"}), "spec.broker.url", "credentials"),
        (with_("broker", {"url": "http://redis:6379"}), "spec.broker.url", "scheme"),
        (with_("broker", {"url": "redis://redis:notaport"}), "spec.broker.url", "not a valid URL"),
        (with_("broker", {}), "spec.broker", "exactly one of url and urlSecretRef"),
        (
            with_("broker", {"url": "redis://r", "urlSecretRef": {"name": "s", "key": "k"}}),
            "spec.broker",
            "exactly one",
        ),
        (
            with_("scaling", {"minReplicas": 5, "maxReplicas": 2}),
            "spec.scaling.minReplicas",
            "less than or equal",
        ),
        (
            with_("worker", {"image": "w", "taskTimeLimitSeconds": 100, "visibilityTimeoutSeconds": 100}),
            "spec.worker.visibilityTimeoutSeconds",
            "greater than",
        ),
        (with_("queues", ["a", "a"]), "spec.queues", "twice"),
        (with_("queues", []), "spec.queues", "at least one"),
        (
            with_("worker", {"image": "w", "env": [{"name": "A", "value": "1", "valueFrom": {}}]}),
            "spec.worker.env[0]",
            "not both",
        ),
        ({"broker": {"url": "redis://r"}, "queues": ["q"]}, "spec.worker", "required"),
    ],
)
def test_invalid_specs_name_the_field(spec, path, words):
    with pytest.raises(SpecError) as err:
        parse_spec(spec)
    assert err.value.path == path
    assert words in str(err.value)
    assert "hunter2" not in str(err.value)
