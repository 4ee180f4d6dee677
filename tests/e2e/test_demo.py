"""The README's main command, as a user runs it: `gpufleet demo` on a fresh local cluster of its own."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def test_demo_runs_a_burst_to_completion_and_back_to_zero(tmp_path):
    plot = tmp_path / "timeline.png"
    out = subprocess.run(
        [sys.executable, "-m", "gpufleet", "demo", "--tasks", "24", "--no-live", "--plot", str(plot)],
        capture_output=True, text=True, timeout=480,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    assert "tasks done:                   24/24" in out.stdout
    assert "back to zero replicas after" in out.stdout
    assert "ScaledUp   scale up 0 ->" in out.stdout
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
