"""The docs never go stale: generated tables match their source, every metric is documented with its labels,
and every relative link points at a file that exists."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client.metrics import MetricWrapperBase

from gpufleet import metrics

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]
DOCS += [ROOT / "benchmarks" / "README.md", *sorted((ROOT / "examples").rglob("*.md"))]


def _between(text: str, name: str) -> str:
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    assert begin in text and end in text, f"markers {begin} ... {end} are missing"
    return text.split(begin, 1)[1].split(end, 1)[0]


def test_crd_reference_is_fresh():
    out = subprocess.run(
        [sys.executable, str(ROOT / "hack" / "crd_reference.py"), "--check"], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr


@pytest.mark.slow
def test_simulated_comparison_table_is_fresh():
    """docs/scaling.md's table is what the command printed beside it prints today (the simulator is seeded)."""
    table = _between((ROOT / "docs" / "scaling.md").read_text(), "simulate-table").strip()
    command = [sys.executable, "-m", "gpufleet", "simulate", "--trace", "all", "--max-replicas", "10",
               "--max-replicas", "40", "--policies", "gpufleet,keda,ray-serve", "--markdown"]  # fmt: skip
    out = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == table, (
        "docs/scaling.md: the simulated comparison is stale; rerun its command"
    )


def test_every_metric_is_documented_with_its_labels():
    table = _between((ROOT / "docs" / "operations.md").read_text(), "metrics")
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| `(\w+)` \| \w+ \|([^|]*)\|", table, re.M)}
    found = [v for v in vars(metrics).values() if isinstance(v, MetricWrapperBase)]
    assert found
    for metric in found:
        name = metric._name + ("_total" if metric._type == "counter" else "")
        assert name in rows, f"docs/operations.md: {name} is not in the metrics table"
        documented = set(re.findall(r"`(\w+)`", rows[name]))
        assert documented == set(metric._labelnames), (
            f"{name}: labels {metric._labelnames}, documented {documented}"
        )
    assert len(rows) == len(found), f"documented but not served: {set(rows) - {m._name for m in found}}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(doc):
    text = doc.read_text()
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if re.match(r"[a-z]+:", target):
            continue
        assert (doc.parent / target).exists(), (
            f"{doc.relative_to(ROOT)}: a link to {target}, which does not exist"
        )
