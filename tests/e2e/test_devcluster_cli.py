"""`python -m gpufleet_tools.devcluster up|status|down`: a second, background control plane in its own state directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from gpufleet_tools.devcluster.binaries import bin_dir

pytestmark = pytest.mark.skipif(
    os.environ.get("GPUFLEET_E2E_PROVIDER", "local") != "local" or "GPUFLEET_E2E_KUBECONFIG" in os.environ,
    reason="dev-cluster is the local control plane",
)


def devcluster(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gpufleet_tools.devcluster", *args],
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_up_status_down(tmp_path):
    state = tmp_path / "state"
    options = ("--state-dir", str(state))
    up = devcluster("up", *options, "--gpu-nodes", "1", "--gpus-per-node", "2")
    assert up.returncode == 0, up.stderr
    try:
        assert f"export KUBECONFIG={state / 'kubeconfig'}" in up.stdout
        pid = json.loads((state / "ready").read_text())["pid"]
        # A second `up` finds the running cluster instead of starting another.
        again = devcluster("up", *options)
        assert again.returncode == 0 and f"(pid {pid})" in again.stdout
        assert devcluster("status", *options).returncode == 0

        env = {**os.environ, "KUBECONFIG": str(state / "kubeconfig")}
        got = subprocess.run(
            [str(bin_dir() / "kubectl"), "get", "nodes", "-o", "json"],
            capture_output=True,
            text=True,
            env=env,
        )
        nodes = json.loads(got.stdout)["items"]
        assert [n["status"]["allocatable"]["nvidia.com/gpu"] for n in nodes] == ["2"]
    finally:
        down = devcluster("down", *options)
    assert down.returncode == 0 and "stopped" in down.stdout
    assert devcluster("status", *options).returncode == 1
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    # Its logs stay for a post-mortem.
    assert (state / "logs" / "kube-apiserver.log").stat().st_size > 0


def test_up_refuses_a_directory_that_is_not_its_own(tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    up = devcluster("up", "--state-dir", str(tmp_path))
    assert up.returncode == 1
    assert "not a dev-cluster state directory" in up.stderr
    assert (tmp_path / "precious.txt").read_text() == "keep me"
