"""Where the control plane's programs are: built by hack/build-k8s.sh and cached outside the repository."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

PROGRAMS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl", "kwok", "helm")
# tools/gpufleet_tools/devcluster/binaries.py -> the repository root.
REPO = Path(__file__).resolve().parents[3]
BUILD_SCRIPT = REPO / "hack" / "build-k8s.sh"


class BinariesMissing(RuntimeError):
    pass


def bin_dir(*, build: bool = False) -> Path:
    """The directory holding PROGRAMS. GPUFLEET_K8S_BIN wins; otherwise ask hack/build-k8s.sh, which with
    `build` builds whatever is missing (20 minutes cold, nothing when cached)."""
    if env := os.environ.get("GPUFLEET_K8S_BIN"):
        path = Path(env)
    elif BUILD_SCRIPT.exists():
        argv = [str(BUILD_SCRIPT)] if build else [str(BUILD_SCRIPT), "--print"]
        done = subprocess.run(argv, capture_output=True, text=True)
        if done.returncode != 0:
            raise BinariesMissing(
                f"{BUILD_SCRIPT.name} failed (exit {done.returncode}):\n{done.stderr[-3000:]}"
            )
        path = Path(done.stdout.strip().splitlines()[-1])
    else:
        raise BinariesMissing("set GPUFLEET_K8S_BIN to a directory with " + ", ".join(PROGRAMS))
    missing = [p for p in PROGRAMS if not os.access(path / p, os.X_OK)]
    if missing:
        raise BinariesMissing(f"{path} lacks {', '.join(missing)}: run {BUILD_SCRIPT} first")
    return path
