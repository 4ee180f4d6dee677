"""The README never lies: its commands exist, its reference matches the CRD."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_readme_starts_with_the_two_commands():
    text = (ROOT / "README.md").read_text()
    head = text[: text.index("## Why")]
    assert "```\nmake demo\n```" in head
    assert "```\nmake test\n```" in head
    makefile = (ROOT / "Makefile").read_text()
    assert "\ndemo:" in makefile and "\ntest:" in makefile


def test_ci_runs_the_readme_test_command():
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_crd_reference_is_fresh():
    out = subprocess.run(
        [sys.executable, str(ROOT / "hack" / "crd_reference.py"), "--check"], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr


def test_operator_folder_is_not_a_package():
    # operator/__init__.py would shadow Python's own `operator` module.
    assert not (ROOT / "operator" / "__init__.py").exists()
