"""The operator's runtime stays lean: what `python -m gpufleet` imports, and what its image's lock holds."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Not cryptography: redis-py imports it when it is installed (as in this dev venv) to learn that it is; the
# operator image has none (the lock test below).
HEAVY = ("numpy", "matplotlib", "rich", "PIL", "celery", "kombu", "gpufleet_tools")


def imported(code: str) -> set[str]:
    """Top-level packages a fresh interpreter imports to run `code` (from -X importtime's report)."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return {
        m.group(1).split(".")[0] for m in re.finditer(r"^import time:.*\|\s+(\S+)\s*$", done.stderr, re.M)
    }


@pytest.mark.parametrize(
    "code",
    [
        "import gpufleet.handlers",  # all that `python -m gpufleet run` loads before kopf starts
        "import sys; sys.argv = ['gpufleet', '--help']\ntry:\n import runpy; runpy.run_module('gpufleet', run_name='__main__')\nexcept SystemExit: pass",
    ],
    ids=["operator", "help"],
)
def test_the_operator_imports_no_tool_and_no_heavy_library(code):
    modules = imported(code)
    assert "kopf" in modules or "argparse" in modules  # the report was read
    assert not modules & set(HEAVY), sorted(modules & set(HEAVY))


def test_a_tool_command_imports_its_tool():
    assert "gpufleet_tools" in imported("from gpufleet.cli import parser; parser('simulate')")


def test_the_operator_lock_holds_no_tooling():
    pins = {
        re.split(r"[=<>~ ]", line, maxsplit=1)[0].lower().replace("_", "-")
        for line in (ROOT / "operator" / "requirements.txt").read_text().splitlines()
        if line and not line.startswith("#")
    }
    assert "kopf" in pins
    assert not pins & {"numpy", "matplotlib", "rich", "cryptography", "pillow", "fonttools", "celery"}
