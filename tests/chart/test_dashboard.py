"""The Grafana dashboard shows every metric the operator exports, and names no metric it does not."""

from __future__ import annotations

import json
import re

from helm_chart import CHART
from prometheus_client import REGISTRY

from gpufleet import metrics  # noqa: F401 - registers the operator's metrics

DASHBOARD = json.loads((CHART / "files" / "dashboard.json").read_text())
OURS = re.compile(r"\bgpufleet_[a-z_]+")


def panels():
    return [p for p in DASHBOARD["panels"] if p["type"] != "row"]


def exported() -> set[str]:
    return {family.name for family in REGISTRY.collect() if family.name.startswith("gpufleet_")}


def series(name: str) -> set[str]:
    """The series names a metric family exposes (a counter's _total, a histogram's _bucket/_sum/_count)."""
    return {name, f"{name}_total", f"{name}_bucket", f"{name}_sum", f"{name}_count"}


def test_every_operator_metric_has_a_panel():
    used = {m for p in panels() for t in p["targets"] for m in OURS.findall(t["expr"])}
    families = exported()
    assert len(families) >= 8
    assert [f for f in sorted(families) if not series(f) & used] == []
    known = set().union(*(series(f) for f in families))
    assert used - known == set(), "the dashboard names metrics the operator does not export"


def test_panels_are_well_formed():
    ids = [p["id"] for p in DASHBOARD["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in DASHBOARD["templating"]["list"]}
    assert {"datasource", "namespace", "gputaskqueue"} <= variables
    for panel in panels():
        assert panel["datasource"]["uid"] == "${datasource}"
        assert panel["title"] and panel["description"] and panel["targets"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24
        for target in panel["targets"]:
            # The operator's own series (probe time, API writes) have no fleet labels.
            operator_wide = any(
                m in target["expr"]
                for m in ("probe_seconds", "tick_seconds", "api_writes", "api_reads", "gpufleet_leader")
            )
            if OURS.search(target["expr"]) and not operator_wide:
                assert 'namespace=~"$namespace"' in target["expr"], target["expr"]


def test_worker_panels_select_the_fleets_worker_pods():
    # The operator names a fleet's Deployment <gputaskqueue>-workers (operator/gpufleet/resources.py).
    from gpufleet.resources import deployment_name

    assert deployment_name("x") == "x-workers"
    worker_exprs = [t["expr"] for p in panels() for t in p["targets"] if "pod=~" in t["expr"]]
    assert worker_exprs
    assert all('pod=~"(${gputaskqueue:regex})-workers-.*"' in e for e in worker_exprs)
