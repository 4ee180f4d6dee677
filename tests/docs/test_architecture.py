"""docs/architecture.md's picture of the module layers is the one the imports make, and no import points up."""

from __future__ import annotations

import importlib.util
from pathlib import Path

HACK = Path(__file__).resolve().parents[2] / "hack" / "module_layers.py"


def _layers():
    spec = importlib.util.spec_from_file_location("module_layers", HACK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_no_module_imports_one_above_it_and_every_module_has_a_layer():
    assert _layers().problems() == []


def test_the_committed_picture_is_the_one_the_imports_make():
    layers = _layers()
    assert layers.committed() == layers.picture(), "stale: run python hack/module_layers.py --write"


def test_the_check_catches_an_import_that_points_up(tmp_path):
    layers = _layers()
    for path in layers.PACKAGE.glob("*.py"):
        (tmp_path / path.name).write_text(path.read_text())
    (tmp_path / "kube.py").write_text(
        (tmp_path / "kube.py").read_text() + "\nfrom gpufleet.status import body\n"
    )
    (tmp_path / "apply.py").write_text((tmp_path / "apply.py").read_text() + "\nfrom gpufleet import plan\n")
    layers.PACKAGE = tmp_path
    assert sorted(layers.problems()) == [
        "apply imports plan: the modules of the tick layer stay apart",
        "kube (edges) imports status (pure core), a layer above it",
    ]
