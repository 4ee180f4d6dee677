"""The operator image (gpufleet-operator:dev) on its own: it runs as the non-root user on a read-only root
filesystem, and says what it is. tests/e2e/test_images.py runs it against the control plane."""

from __future__ import annotations

import re
import subprocess
import tomllib

from docker_engine import NON_ROOT, REPO, docker, inspect

VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def run(image: str, *argv: str) -> subprocess.CompletedProcess:
    # /tmp is the one path the operator writes (the chart mounts an emptyDir there).
    return docker("run", "--rm", "--read-only", "--tmpfs", "/tmp", image, *argv)


def test_help_and_the_handlers_run_as_non_root_on_a_read_only_root(operator_image):
    assert "run the operator" in run(operator_image, "python", "-m", "gpufleet", "--help").stdout
    assert "--liveness" in run(operator_image, "python", "-m", "gpufleet", "run", "--help").stdout
    # The handlers import kopf, the Kubernetes client, redis and prometheus_client: the lock is complete.
    run(operator_image, "python", "-c", "import gpufleet.handlers")
    assert run(operator_image, "id", "-u").stdout.strip() == NON_ROOT
    assert (
        run(operator_image, "sh", "-c", "touch /x 2>&1 || true")
        .stdout.strip()
        .endswith("Read-only file system")
    )


def test_labels_say_what_and_which_revision(operator_image):
    labels = inspect(operator_image)["Config"]["Labels"]
    assert labels["org.opencontainers.image.title"] == "gpufleet-operator"
    assert labels["org.opencontainers.image.version"] == VERSION
    assert re.fullmatch(r"[0-9a-f]{7,40}", labels["org.opencontainers.image.revision"]), labels
