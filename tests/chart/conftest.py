"""Fixtures of the chart tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from helm_chart import CHART, Helm

from gpufleet_tools.devcluster.binaries import bin_dir


@pytest.fixture(scope="session")
def helm() -> Helm:
    return Helm(bin_dir() / "helm")


@pytest.fixture(scope="session")
def notes_chart(tmp_path_factory) -> Path:
    """A copy of the chart whose NOTES.txt is also rendered into a ConfigMap: `helm template` skips NOTES."""
    copy = tmp_path_factory.mktemp("chart") / "gpufleet"
    shutil.copytree(CHART, copy)
    shutil.copy(copy / "templates" / "NOTES.txt", copy / "files" / "NOTES.txt")
    (copy / "templates" / "notes-as-configmap.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: notes}\n"
        'data:\n  notes: {{ tpl (.Files.Get "files/NOTES.txt") . | toJson }}\n'
    )
    return copy
