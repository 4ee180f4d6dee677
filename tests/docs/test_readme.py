"""The README never lies: its two commands exist and CI runs the test one."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_readme_starts_with_the_two_commands():
    text = (ROOT / "README.md").read_text()
    head = text[: text.index("## What it is")]
    assert "```\nmake demo\n```" in head
    assert "```\nmake test\n```" in head
    makefile = (ROOT / "Makefile").read_text()
    assert "\ndemo:" in makefile and "\ntest:" in makefile


def test_ci_runs_the_readme_test_command():
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_operator_folder_is_not_a_package():
    # operator/__init__.py would shadow Python's own `operator` module.
    assert not (ROOT / "operator" / "__init__.py").exists()
