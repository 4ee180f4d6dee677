"""The process-pod runner resolves a container's env and command line the way the kubelet does."""

from __future__ import annotations

import pytest

from gpufleet_tools.devcluster.podenv import Unresolvable, command_line, environment, expand

POD = {
    "metadata": {
        "name": "w-1",
        "namespace": "team",
        "uid": "u-1",
        "labels": {"app": "x"},
        "annotations": {"a/b": "c"},
    },
    "spec": {"nodeName": "gpu-0", "serviceAccountName": "default"},
    "status": {"podIP": "10.244.0.7"},
}
OBJECTS = {
    ("Secret", "broker"): {"url": "redis://secret:6379/0", "password": "p@ss"},
    ("ConfigMap", "settings"): {"QUEUES": "a,b", "POOL": "solo", "bad=key": "x"},
}


def lookup(kind, name):
    return OBJECTS.get((kind, name))


@pytest.mark.parametrize(
    ("text", "env", "expected"),
    [
        ("$(A)", {"A": "1"}, "1"),
        ("x-$(A)-$(B)", {"A": "1", "B": "2"}, "x-1-2"),
        ("$(MISSING)", {}, "$(MISSING)"),
        ("$$(A)", {"A": "1"}, "$(A)"),
        ("$$$(A)", {"A": "1"}, "$1"),
        ("cost $5", {}, "cost $5"),
        ("$(A", {"A": "1"}, "$(A"),
        ("end$", {}, "end$"),
        ("$()", {}, "$()"),
        ("$(A)$(A)", {"A": "z"}, "zz"),
    ],
)
def test_expand_follows_the_kubelet(text, env, expected):
    assert expand(text, env) == expected


def test_env_value_expands_only_from_earlier_variables():
    container = {
        "env": [
            {"name": "LATER_REF", "value": "$(B)"},
            {"name": "B", "value": "b"},
            {"name": "C", "value": "$(B)-$(POD)"},
            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        ]
    }
    env = environment(POD, container, lookup)
    assert env == {"LATER_REF": "$(B)", "B": "b", "C": "b-$(POD)", "POD": "w-1"}


def test_value_from_sources_and_envfrom_order():
    container = {
        "envFrom": [
            {"configMapRef": {"name": "settings"}, "prefix": "GF_"},
            {"secretRef": {"name": "broker"}},
        ],
        "env": [
            {"name": "GF_POOL", "value": "prefork"},
            {"name": "URL", "valueFrom": {"secretKeyRef": {"name": "broker", "key": "url"}}},
            {"name": "Q", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "QUEUES"}}},
            {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "LABEL", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
            {"name": "ANN", "valueFrom": {"fieldRef": {"fieldPath": "metadata.annotations['a/b']"}}},
            {"name": "NOT_EXPANDED", "valueFrom": {"secretKeyRef": {"name": "broker", "key": "password"}}},
        ],
    }
    env = environment(POD, container, lookup)
    assert env == {
        "GF_QUEUES": "a,b",
        "GF_POOL": "prefork",
        "url": "redis://secret:6379/0",
        "password": "p@ss",
        "URL": "redis://secret:6379/0",
        "Q": "a,b",
        "NS": "team",
        "IP": "10.244.0.7",
        "LABEL": "x",
        "ANN": "c",
        "NOT_EXPANDED": "p@ss",
    }


@pytest.mark.parametrize(
    "var",
    [
        {"name": "X", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "url"}}},
        {"name": "X", "valueFrom": {"secretKeyRef": {"name": "broker", "key": "nope"}}},
        {"name": "X", "valueFrom": {"configMapKeyRef": {"name": "nope", "key": "k"}}},
        {"name": "X", "valueFrom": {"fieldRef": {"fieldPath": "spec.nope"}}},
        {"name": "X", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
    ],
)
def test_missing_or_unsupported_sources_stop_the_container(var):
    with pytest.raises(Unresolvable):
        environment(POD, {"env": [var]}, lookup)


def test_optional_sources_may_be_missing():
    container = {
        "envFrom": [{"secretRef": {"name": "nope", "optional": True}}],
        "env": [
            {"name": "X", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k", "optional": True}}},
            {"name": "Y", "valueFrom": {"secretKeyRef": {"name": "broker", "key": "nope", "optional": True}}},
        ],
    }
    assert environment(POD, container, lookup) == {}


def test_command_line_expands_from_the_whole_environment():
    container = {"command": ["celery"], "args": ["--hostname", "$(POD)@gpufleet", "$$(POD)", "$(UNSET)"]}
    assert command_line(container, {"POD": "w-1"}) == [
        "celery",
        "--hostname",
        "w-1@gpufleet",
        "$(POD)",
        "$(UNSET)",
    ]


def test_args_alone_run_as_the_images_entrypoint_would():
    # gpufleet's images: ENTRYPOINT tini, which runs its arguments; the operator sets args only.
    assert command_line({"name": "worker", "args": ["celery", "-A", "$(APP)"]}, {"APP": "a:b"}) == [
        "celery",
        "-A",
        "a:b",
    ]


def test_a_container_with_nothing_to_run_cannot_run():
    with pytest.raises(Unresolvable, match="neither command nor args"):
        command_line({"name": "worker"}, {})
